"""One bad record is quarantined alone, on both databases, in processing and in capture.

Valid JSON grammar that orjson refuses (a number beyond the double range, a lone UTF-16 surrogate
escape) and values PostgreSQL cannot store (a NUL in an id) used to fail a whole file, or stop a
capture for good. Each is one record's problem: it goes to quarantine with its reason and the
rest of the file loads; capture stores such a page byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from property_pipeline.api.client import PropertySearchClient
from property_pipeline.capture import Campaign, capture_campaign
from property_pipeline.db.schema import batch_file_status, properties, quarantined_records
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import write_payload
from property_pipeline_tests.factories import BASE_TIME, make_record
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.scripted_api import ScriptedApi

pytestmark = pytest.mark.faults


def _record_text(record: dict[str, Any], **raw_fields: str) -> bytes:
    """A record as JSON text, with some fields spliced in as raw JSON text (orjson cannot write them)."""
    text = orjson.dumps(record)[:-1]
    for name, raw in raw_fields.items():
        text += b',"' + name.encode() + b'":' + raw.encode()
    return text + b"}"


def _page_text(records: list[bytes], result_index: int = 0, result_count: int | None = None) -> bytes:
    count = len(records)
    total = result_index + count if result_count is None else result_count
    head = f'{{"statusCode":200,"resultCount":{total},"resultIndex":{result_index},"recordCount":{count},"data":['
    return head.encode() + b",".join(records) + b"]}"


HOSTILE_PAGE = _page_text(
    [
        orjson.dumps(make_record("ok-1")),
        _record_text(make_record("too-big-value"), estimatedValue="1e400"),
        _record_text(make_record("too-big-extra"), extras='{"score": -1e400}'),
        _record_text(make_record("lone-surrogate"), owner1LastName='"Na\\ud835me"'),
        orjson.dumps(make_record("nul\x00id")),
        orjson.dumps(make_record("ok-2")),
    ]
)


def _quarantine(engine: Engine) -> dict[str | None, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(quarantined_records.c.property_id, quarantined_records.c.reason)).all()
    return {row.property_id: row.reason for row in rows}


def test_numbers_beyond_double_range_lone_surrogates_and_nul_ids_are_quarantined_alone(
    engine: Engine, root: PayloadRoot
) -> None:
    stored = write_payload(root, "hostile", 1, HOSTILE_PAGE, BASE_TIME)
    register_unregistered(engine, root, "test")
    report = PayloadProcessor(engine, root).run()
    assert [outcome.status for outcome in report.outcomes] == ["COMPLETED"], report.outcomes
    assert (report.outcomes[0].success_count, report.outcomes[0].error_count) == (2, 4)
    with engine.connect() as conn:
        loaded = sorted(conn.execute(select(properties.c.property_id)).scalars())
        row = conn.execute(select(batch_file_status).where(batch_file_status.c.file_path == stored.relative_path)).one()
    assert loaded == ["ok-1", "ok-2"]
    assert (row.status, row.properties_count, row.success_count, row.error_count) == ("COMPLETED", 6, 2, 4)
    reasons = _quarantine(engine)
    assert "outside the range of a double" in reasons["too-big-value"]
    assert "outside the range of a double" in reasons["too-big-extra"]
    assert "surrogate" in reasons["lone-surrogate"]
    assert "NUL" in reasons["nul\\x00id"], reasons  # the id is stored escaped: a database cannot hold U+0000
    report_figure(f"bad_records_quarantined_{engine.dialect.name}", records=6, loaded=2, quarantined=4, failed_files=0)


def test_an_id_with_surrounding_whitespace_is_quarantined_not_merged_with_another(
    engine: Engine, root: PayloadRoot
) -> None:
    write_payload(root, "ids", 1, _page_text([orjson.dumps(make_record(1)), orjson.dumps(make_record(" 1"))]))
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    with engine.connect() as conn:
        loaded = list(conn.execute(select(properties.c.property_id, properties.c.apn)).all())
    assert loaded == [("1", "APN-1")], "the integer id 1 loads; ' 1' never overwrites it"
    assert "whitespace" in _quarantine(engine)[" 1"]


def test_capture_stores_a_page_with_a_bad_record_byte_for_byte_and_carries_on(
    engine: Engine, root: PayloadRoot
) -> None:
    second = _page_text([orjson.dumps(make_record("p2-1"))], result_index=6, result_count=7)
    first = _page_text(
        [
            orjson.dumps(make_record("p1-1")),
            _record_text(make_record("p1-big"), estimatedValue="1e400"),
            _record_text(make_record("p1-surrogate"), owner1LastName='"\\ud835"'),
            orjson.dumps(make_record("p1-2")),
            orjson.dumps(make_record("p1-3")),
            orjson.dumps(make_record("p1-4")),
        ],
        result_count=7,
    )
    with ScriptedApi([(200, {}, first), (200, {}, second)]) as api:
        client = PropertySearchClient(api.base_url, page_size=6, max_attempts=2, sleep=lambda _s: None)
        report = capture_campaign(engine, root, client, Campaign("hostile-capture", {"state": "TX"}))
    assert (report.pages, report.records, report.retries, report.complete) == (2, 7, 0, True)
    assert [stored.path.read_bytes() for stored in report.files] == [first, second], "stored byte for byte"
    assert json.loads(report.files[0].path.read_bytes())["data"][1]["estimatedValue"] == float("inf")
    processed = PayloadProcessor(engine, root).run()
    assert (processed.completed, processed.failed, processed.records_loaded, processed.records_quarantined) == (
        2,
        0,
        5,
        2,
    )
