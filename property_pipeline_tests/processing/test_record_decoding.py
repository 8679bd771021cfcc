"""The compiled record decoder and the reference validator give the same answer for every record.

The processor validates a record from its bytes (`read_record`, msgspec); the reference validator checks
the decoded record in Python (`validate_record`). For any record, both accept it with the same id and
values, or both reject it with the same reason; a page read with the registered "plain" verdict gives
what the same page read without it gives.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from property_pipeline.processing import parse
from property_pipeline.processing import records as record_rules
from property_pipeline.processing.parse import read_page
from property_pipeline.processing.records import (
    PropertyRecord,
    RecordRejected,
    content_hash,
    read_record,
    validate_record,
)
from property_pipeline_tests.factories import make_page, make_record
from property_pipeline_tests.faults.test_hostile_input import FAULT_SETTINGS, records, valid_records


def _answer(validate: Any) -> tuple[str, Any]:
    try:
        record: PropertyRecord = validate()
    except RecordRejected as reason:
        return "rejected", str(reason)
    return "accepted", (record.property_id, record.values, bytes(record.raw), record.content_hash)


def _both(body: bytes) -> tuple[tuple[str, Any], tuple[str, Any]]:
    compiled = _answer(lambda: read_record(body))
    reference = _answer(lambda: validate_record(orjson.loads(body), body))
    return compiled, reference


@FAULT_SETTINGS
@given(record=records() | valid_records())
@example(record={"id": "x", "address": {"zip": "７８７０１"}})
@example(record={"id": "x", "address": {"state": "TX\n"}})
@example(record={"id": "x", "bedrooms": 3.0, "bathrooms": 2, "latitude": -0})
@example(record={"id": 2**63, "squareFeet": 2**63})
@example(record={"id": " 1"})
@example(record={"id": "x", "id2": "a\x00b"})
@example(record={"id": "x", "lastSaleDate": "2019-W01-1"})
@example(record={"id": "x", "address": None, "mailAddress": []})
def test_compiled_decoder_and_reference_validator_agree_on_every_record(record: Any) -> None:
    body = orjson.dumps(record)
    compiled, reference = _both(body)
    assert compiled == reference


def test_a_zip_code_is_five_ascii_digits() -> None:
    """`\\d` in a pattern takes any Unicode digit: fullwidth digits were accepted as a zip code."""
    for body in (
        orjson.dumps(make_record("x", address={"zip": "７８７０１"})),
        b'{"id":"x","address":{"zip":"7870\\u0661"}}',
    ):
        compiled, reference = _both(body)
        assert compiled == reference
        assert compiled[0] == "rejected" and "zip" in compiled[1]


def test_a_record_is_kept_as_received_not_re_encoded() -> None:
    raw = b'{ "id" : "spaced",  "estimatedValue" : 1.0E5, "note": "caf\\u00e9", "big": 123456789012345678901234567890 }'
    page = read_page(b'{"data": [' + raw + b"]}")
    (record,) = page.records()
    assert bytes(record.raw) == raw, "the bytes the API sent, spaces, escapes and exact digits included"
    assert record.values[15] == 100_000  # estimated_value, from 1.0E5


def test_the_content_hash_covers_the_bytes_and_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    body = orjson.dumps(make_record("x"))
    record = read_record(body)
    assert record.content_hash == content_hash(body) == read_record(body).content_hash
    assert content_hash(body.replace(b"Austin", b"Boston")) != record.content_hash
    monkeypatch.setattr(record_rules, "RULES_FINGERPRINT", record_rules.RULES_FINGERPRINT + 1)  # records.py changed
    assert content_hash(body) != record.content_hash, "the same bytes under new rules are a change"


def test_a_record_stored_from_the_same_bytes_is_taken_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    same, changed, new = make_record("same"), make_record("changed"), make_record(7)
    body = make_page([same, make_record("changed", bedrooms=9), new, same])
    page = read_page(body, plain=True)
    assert page.id_guesses() == ["same", "changed", "7", "same"]
    stored = {"same": content_hash(orjson.dumps(same)), "changed": content_hash(orjson.dumps(changed))}
    decoded: list[bytes] = []
    real_read_record = parse.read_record

    def counting(raw: memoryview, **options: object) -> object:
        decoded.append(bytes(raw))
        return real_read_record(raw, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(parse, "read_record", counting)
    taken = page.records(stored=stored)
    assert [(r.property_id, r.values is None) for r in taken] == [("same", True), ("changed", False), ("7", False)]
    assert [(item.record_index, item.reason) for item in page.rejected] == [
        (3, "duplicate id in the file (first at index 0)")
    ]
    assert len(decoded) == 2, "only the changed and the new record were decoded"
    assert taken[0].typed_values() == read_record(orjson.dumps(same)).values


@pytest.mark.parametrize("plain", [True, False])
def test_a_page_reads_the_same_with_or_without_the_registered_verdict(plain: bool) -> None:
    body = make_page(
        [
            make_record("a"),
            make_record("b", bedrooms="two"),
            make_record("a"),
            {"no": "id"},
            make_record(7, bedrooms=2.0),
        ]
    )
    page = read_page(body, plain=plain)
    reference = read_page(body)
    assert [(r.property_id, r.values, bytes(r.raw)) for r in page.records()] == [
        (r.property_id, r.values, bytes(r.raw)) for r in reference.records()
    ]
    assert page.rejected == reference.rejected
    assert [r.property_id for r in page.records(by_id=True)] == ["7", "a"]
    assert [(item.record_index, item.property_id) for item in page.rejected] == [(1, "b"), (2, "a"), (3, None)]


@FAULT_SETTINGS
@given(data=st.lists(records() | valid_records(), max_size=5))
def test_a_cut_page_and_a_page_decoded_whole_agree(data: list[Any]) -> None:
    """The same records through the processor's path (cut into bytes) and the reference's (decoded whole)."""
    body = make_page(data)
    cut = read_page(body)
    whole = [
        _answer(lambda item=item: validate_record(item, orjson.dumps(item))) for item in orjson.loads(body)["data"]
    ]
    accepted = [answer[1][0] for answer in whole if answer[0] == "accepted"]
    first_of_each = list(dict.fromkeys(accepted))
    assert [record.property_id for record in cut.records()] == first_of_each
    assert cut.properties_count == len(data)
