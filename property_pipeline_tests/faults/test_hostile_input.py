"""Hostile and malformed input: the validator and the parser raise only their documented errors.

Property-based (hypothesis) over arbitrary JSON, deep nesting, huge strings, numbers out of range,
floats and booleans where integers belong, invalid UTF-8 and duplicate keys; then every record the
validator accepts must load into the real databases, so one bad record can never fail its file.
"""

from __future__ import annotations

import itertools
import json
from datetime import date, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from property_pipeline.db.schema import batch_file_status, quarantined_records
from property_pipeline.processing.parse import ParsedPayload, PayloadFormatError, parse_payload
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.processing.records import (
    COLUMNS,
    FIELDS,
    INT32,
    INT64,
    PropertyRecord,
    RecordRejected,
    validate_record,
)
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import write_payload
from property_pipeline_tests.factories import BASE_TIME, make_page, make_record
from property_pipeline_tests.faults.figures import report_figure

pytestmark = pytest.mark.faults

# No example database in the repository, and the same examples on every run (CI reproducibility).
FAULT_SETTINGS = settings(database=None, derandomize=True, deadline=None, print_blob=True)

# --- strategies ---------------------------------------------------------------------------------

edge_ints = st.sampled_from(
    [0, -1, 1, INT32[0], INT32[0] - 1, INT32[1], INT32[1] + 1, INT64[0], INT64[1], INT64[1] + 1, 2**64 - 1]
)
json_ints = st.integers(min_value=INT64[0], max_value=2**64 - 1) | edge_ints  # what orjson parses as int
json_floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.5, -0.0, 1e15, 1e16, 1e308, 3.0])
json_text = st.text(max_size=40) | st.sampled_from(
    ["", " ", "TX", "Texas", "78701", "7870", "2019-06-14", "2021-13-45"]
)
json_scalars = st.none() | st.booleans() | json_ints | json_floats | json_text
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
address_parts = ("address", "street", "city", "state", "zip", "county")
addresses = st.dictionaries(st.sampled_from(address_parts), json_values, max_size=6) | json_values
ids = (
    st.text(max_size=300)
    | json_ints
    | st.sampled_from([None, True, False, 1.5, 1e20, "", "   ", "a\x00b", "x" * 257, [], {}])
    | st.integers(min_value=0, max_value=10**6).map(lambda n: f"P-{n}")
)
FIELD_NAMES = sorted({path[0] for _column, path, _kind in FIELDS} - {"address", "mailAddress"})


@st.composite
def records(draw: st.DrawFn) -> Any:
    """A property record as the API could send it: contract fields with any JSON type, extra keys, any id."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)  # not even an object
    record: dict[str, Any] = {}
    if draw(st.integers(0, 9)) > 0:
        record["id"] = draw(ids)
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=8, unique=True)):
        record[name] = draw(json_values)
    for name in draw(st.lists(st.sampled_from(["address", "mailAddress"]), max_size=2, unique=True)):
        record[name] = draw(addresses)
    record.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
    return record


def _nested(depth: int) -> Any:
    value: Any = {"leaf": 1}
    for _ in range(depth):
        value = [value]
    return value


# Values the contract allows, at their edges: bounds, odd unicode, extreme dates, u64 and 1e308 in extras.
VALID_BY_KIND: dict[str, st.SearchStrategy[Any]] = {
    "text": st.text(max_size=60) | st.sampled_from(["", "Ω" * 10_000, "\u202e\u0301\U0001f3e0", "O'Brien; DROP"]),
    "int32": st.integers(*INT32) | st.sampled_from([*INT32, 3.0]),
    "int64": st.integers(*INT64) | st.sampled_from([*INT64, 1e15]),
    "number": st.floats(-1e15, 1e15) | st.integers(-(10**15), 10**15),
    "lat": st.floats(-90, 90),
    "lon": st.floats(-180, 180),
    "bool": st.booleans(),
    "date": st.dates().map(date.isoformat),
    "state": st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2),
    "zip": st.text(alphabet="0123456789", min_size=5, max_size=5),
}
valid_ids = (
    st.text(min_size=1, max_size=256).filter(lambda text: text.strip() != "" and "\x00" not in text)
    | st.integers(INT64[0], 2**64 - 1)
    | st.sampled_from(["x" * 256, "Ω" * 256, "P-1"])
)


@st.composite
def valid_records(draw: st.DrawFn) -> dict[str, Any]:
    """A record the contract allows, with every mapped field drawn at its edges, plus extras of any JSON."""
    record: dict[str, Any] = {"id": draw(valid_ids)}
    for _column, path, kind in FIELDS:
        if draw(st.booleans()):
            value = draw(VALID_BY_KIND[kind] | st.none())
            if len(path) == 1:
                record[path[0]] = value
            else:
                record.setdefault(path[0], {})[path[1]] = value
    record["extras"] = draw(json_values)
    record["deep"] = _nested(draw(st.sampled_from([0, 50, 250])))
    record["big"] = draw(st.sampled_from([2**64 - 1, INT64[0], 1e308, -0.0, 5e-324]))
    return record


def _json_round_trip(value: Any) -> Any:
    """What the parser hands the validator: the value after writing and reading it as JSON."""
    return orjson.loads(orjson.dumps(value))


# --- the record validator -------------------------------------------------------------------------

KIND_CHECKS = {
    "text": lambda v: isinstance(v, str),
    "int32": lambda v: type(v) is int and INT32[0] <= v <= INT32[1],
    "int64": lambda v: type(v) is int and INT64[0] <= v <= INT64[1],
    "number": lambda v: type(v) is float and -1e15 <= v <= 1e15,
    "lat": lambda v: type(v) is float and -90 <= v <= 90,
    "lon": lambda v: type(v) is float and -180 <= v <= 180,
    "bool": lambda v: type(v) is bool,
    "date": lambda v: type(v) is date,
    "state": lambda v: isinstance(v, str) and len(v) == 2 and v.isascii() and v.isupper(),
    "zip": lambda v: isinstance(v, str) and len(v) == 5 and v.isascii() and v.isdigit(),
}


@FAULT_SETTINGS
@given(record=records() | valid_records())
@example(record={"id": 1, "bedrooms": True})
@example(record={"id": 1, "yearBuilt": 1999.5, "squareFeet": 1e300})
@example(record={"id": 2**64 - 1, "estimatedValue": 2**64 - 1})
@example(record={"id": "x", "address": {"state": "tx", "zip": "７８７０１"}})
@example(record={"id": "x", "lastSaleDate": "２０１９-06-14"})
@example(record={"id": "x", "owner1LastName": "a" * 1_000_000})
@example(record={"id": "x", "k\x00": 1})
def test_validator_accepts_a_typed_record_or_rejects_it_with_a_reason(record: Any) -> None:
    record = _json_round_trip(record)
    try:
        accepted = validate_record(record)
    except RecordRejected as reason:
        assert str(reason), "a rejection always says why"
        return
    assert isinstance(accepted, PropertyRecord)
    assert accepted.property_id.strip() == accepted.property_id and 0 < len(accepted.property_id) <= 256
    assert "\x00" not in accepted.property_id and "\\u0000" not in accepted.raw_json
    assert orjson.loads(accepted.raw_json) == record, "the raw JSON is the record itself"
    assert len(accepted.values) == len(COLUMNS)
    for (column, _path, kind), value in zip(FIELDS, accepted.values, strict=True):
        assert value is None or KIND_CHECKS[kind](value), f"{column}={value!r} is not a valid {kind}"


@pytest.mark.parametrize("depth", [100, 253, 254, 255, 300, 600, 1000])
def test_deeply_nested_record_is_rejected_alone_never_raises(depth: int) -> None:
    """orjson reads 1024 levels but writes 254: a record between the two used to raise TypeError."""
    nested = "[" * depth + "]" * depth
    body = f'{{"recordCount": 2, "data": [{{"id": "deep", "x": {nested}}}, {{"id": "fine"}}]}}'.encode()
    parsed = parse_payload(body)
    assert parsed.properties_count == 2
    assert [record.property_id for record in parsed.records][-1] == "fine"
    if parsed.rejected:
        assert parsed.rejected[0].property_id == "deep" and "JSON" in parsed.rejected[0].reason


# --- the page parser ------------------------------------------------------------------------------


def _check_parsed(parsed: ParsedPayload, body_data: Any) -> None:
    assert isinstance(body_data, list)
    assert parsed.properties_count == len(body_data)
    indexes = [item.record_index for item in parsed.rejected]
    assert len(set(indexes)) == len(indexes) and all(0 <= index < len(body_data) for index in indexes)
    assert len({record.property_id for record in parsed.records}) == len(parsed.records), "ids unique in a file"


def _oracle_data(body: bytes) -> Any:
    """The page's records by an independent decoder that accepts all valid JSON grammar (the standard library's);
    numbers beyond the double range and lone surrogate escapes are valid JSON, and one record's problem."""
    return json.loads(body)["data"]


def _parse_or_format_error(body: bytes) -> ParsedPayload | None:
    try:
        return parse_payload(body)
    except PayloadFormatError as error:
        assert str(error)
        return None


@FAULT_SETTINGS
@given(body=st.binary(max_size=2000))
@example(body=b"")
@example(body=b"\xef\xbb\xbf{}")
@example(body=b'{"data": [{"id": "\xff\xfe"}]}')
@example(body=b'{"data": [{"id": "\\ud800"}]}')
@example(body=b'{"data": [{"id": 1' + b"9" * 5000 + b"}]}")
@example(body=b'{"data": [{"id": 1, "bedrooms": 1e400}]}')
@example(body=b'{"data": [{"id": 1, "bedrooms": NaN}]}')
@example(body=b'{"data": [], "data": {}}')
@example(body=b'{"recordCount": 1e3, "data": []}')
@example(body=b"[" * 5000)
def test_parser_on_arbitrary_bytes_returns_records_or_a_format_error(body: bytes) -> None:
    parsed = _parse_or_format_error(body)
    if parsed is not None:
        _check_parsed(parsed, _oracle_data(body))


@st.composite
def damaged_pages(draw: st.DrawFn) -> bytes:
    """A page of hostile records, then maybe truncated, given invalid UTF-8, or a duplicated key."""
    data = draw(st.lists(records(), max_size=6))
    body = make_page(data)
    damage = draw(st.sampled_from(["none", "truncate", "bad_utf8", "duplicate_id", "duplicate_data", "count"]))
    if damage == "truncate":
        return body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    if damage == "bad_utf8":
        at = draw(st.integers(0, len(body)))
        return (
            body[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
            + body[at:]
        )
    if damage == "duplicate_id":
        return body.replace(b'{"id":', b'{"id":"first","id":', 1)
    if damage == "duplicate_data":
        return body[:-1] + b',"data":[{"id":"second-data"}]}'
    if damage == "count":
        return body.replace(b'"recordCount":', b'"recordCount":7', 1)
    return body


@FAULT_SETTINGS
@given(body=damaged_pages())
def test_parser_on_damaged_pages_returns_records_or_a_format_error(body: bytes) -> None:
    parsed = _parse_or_format_error(body)
    if parsed is not None:
        _check_parsed(parsed, _oracle_data(body))


def test_huge_strings_and_numbers_out_of_range_are_quarantined_not_fatal() -> None:
    page = make_page(
        [
            make_record("huge-owner", owner1LastName="Ω" * 5_000_000),
            make_record("too-many-bedrooms", bedrooms=2**31),
            make_record("float-year", yearBuilt=1999.5),
            make_record("bool-value", estimatedValue=True),
            make_record("far-north", latitude=90.0001),
            make_record("u64", lastSaleAmount=2**64 - 1),
            make_record("ok"),
        ]
    )
    parsed = parse_payload(page)
    assert [record.property_id for record in parsed.records] == ["huge-owner", "ok"]
    assert {item.property_id for item in parsed.rejected} == {
        "too-many-bedrooms",
        "float-year",
        "bool-value",
        "far-north",
        "u64",
    }
    assert all(item.reason for item in parsed.rejected)


# --- accepted means loadable ----------------------------------------------------------------------

_batches = itertools.count(1)


@pytest.mark.slow
def test_every_record_the_validator_accepts_loads_into_the_database(engine: Engine, root: PayloadRoot) -> None:
    """A record that passes validation never makes the database refuse its file (invariant 5)."""
    seen = {"files": 0, "accepted": 0, "rejected": 0}

    @settings(FAULT_SETTINGS, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
    @given(page=st.lists(valid_records() | valid_records() | records(), min_size=1, max_size=8))
    def load_one_page(page: list[Any]) -> None:
        batch = next(_batches)
        body = make_page(page, result_index=batch)  # the index makes every page's bytes (and checksum) unique
        stored = write_payload(root, "hostile", batch, body, BASE_TIME + timedelta(seconds=batch))
        register_unregistered(engine, root, "test", stored.month)
        parsed = parse_payload(body)
        report = PayloadProcessor(engine, root).run()
        assert [outcome.status for outcome in report.outcomes] == ["COMPLETED"], report.outcomes
        outcome = report.outcomes[0]
        assert (outcome.success_count, outcome.error_count) == (len(parsed.records), len(parsed.rejected))
        with engine.connect() as conn:
            held = conn.execute(
                select(func.count())
                .select_from(quarantined_records)
                .where(quarantined_records.c.file_id == outcome.file_id)
            ).scalar_one()
        assert held == len(parsed.rejected)
        seen["files"] += 1
        seen["accepted"] += len(parsed.records)
        seen["rejected"] += len(parsed.rejected)

    load_one_page()
    with engine.connect() as conn:
        failed = conn.execute(
            select(func.count()).select_from(batch_file_status).where(batch_file_status.c.status != "COMPLETED")
        ).scalar_one()
    assert failed == 0
    report_figure(f"hostile_records_load_{engine.dialect.name}", **seen, failed_files=failed, violations=0)
