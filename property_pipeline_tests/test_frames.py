"""`property_pipeline.frames`: a month's properties as a typed DataFrame, on a real SQLite file and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from property_pipeline import frames
from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.schema import batch_file_status
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import make_page, make_record, write_page

MARCH = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
APRIL = datetime(2026, 4, 5, 9, 30, 15, 123456, tzinfo=UTC)

# The dtype table of the README, written out: what a DataFrame user relies on.
EXPECTED_DTYPES = {
    "property_id": "string",
    "apn": "string",
    "address": "string",
    "street": "string",
    "city": "string",
    "state": "string",
    "zip": "string",
    "county": "string",
    "latitude": "Float64",
    "longitude": "Float64",
    "bedrooms": "Int32",
    "bathrooms": "Float64",
    "square_feet": "Int64",
    "lot_square_feet": "Int64",
    "year_built": "Int32",
    "property_type": "string",
    "estimated_value": "Int64",
    "estimated_equity": "Int64",
    "last_sale_date": "datetime64[us]",
    "last_sale_amount": "Int64",
    "owner1_first_name": "string",
    "owner1_last_name": "string",
    "owner_occupied": "boolean",
    "absentee_owner": "boolean",
    "mail_address": "string",
    "mail_street": "string",
    "mail_city": "string",
    "mail_state": "string",
    "mail_zip": "string",
    "mail_county": "string",
    "source_file_id": "Int64",
    "campaign_id": "string",
    "captured_at": "datetime64[us, UTC]",
    "first_seen_at": "datetime64[us, UTC]",
    "last_seen_at": "datetime64[us, UTC]",
}


def _load(engine: Engine, root: PayloadRoot) -> None:
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()


def _file_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(batch_file_status.c.file_path, batch_file_status.c.file_id)).all())


def _march_and_april(root: PayloadRoot) -> None:
    """March: two files sharing property "shared"; April: a newer value for "shared" and one more property."""
    write_page(
        root,
        [
            make_record("full"),
            make_record(
                12345,
                bedrooms=None,
                bathrooms=None,
                lastSaleDate=None,
                ownerOccupied=None,
                estimatedValue=None,
                mailAddress=None,
                address={"city": "Dallas", "state": "TX"},
            ),
            make_record("shared", estimatedValue=100_000),
        ],
        batch=1,
        captured_at=MARCH,
    )
    write_page(root, [make_record("shared", estimatedValue=200_000)], batch=2, captured_at=MARCH + timedelta(hours=1))
    write_page(
        root,
        [make_record("shared", estimatedValue=300_000), make_record("april-only", yearBuilt=1901)],
        campaign="camp-2",
        batch=1,
        captured_at=APRIL,
    )


def test_a_month_reads_as_one_typed_row_per_property_with_its_current_values_and_nulls(
    engine: Engine, root: PayloadRoot
) -> None:
    _march_and_april(root)
    _load(engine, root)
    ids = _file_ids(engine)
    april_file = next(file_id for path, file_id in ids.items() if path.startswith("2026-04/"))

    march = frames.read_properties(engine, "2026-03")

    assert {column: str(dtype) for column, dtype in march.dtypes.items()} == EXPECTED_DTYPES
    # "shared" came in two March files: one row, with the newest values (April's file, which also delivered it).
    assert list(march["property_id"]) == ["12345", "full", "shared"]
    rows = march.set_index("property_id")
    assert rows.loc["shared", "estimated_value"] == 300_000
    assert rows.loc["shared", "source_file_id"] == april_file
    assert rows.loc["shared", "campaign_id"] == "camp-2"
    assert rows.loc["shared", "captured_at"] == pd.Timestamp(APRIL)
    assert rows.loc["shared", "first_seen_at"] == pd.Timestamp(MARCH)
    full = rows.loc["full"]
    assert (full["city"], full["zip"], full["bedrooms"], full["bathrooms"]) == ("Austin", "78701", 3, 2.5)
    assert (full["square_feet"], full["year_built"], full["estimated_equity"]) == (1850, 1998, 120_000)
    assert full["last_sale_date"] == pd.Timestamp("2019-06-14")
    assert bool(full["owner_occupied"]) is True and bool(full["absentee_owner"]) is False
    assert full["owner1_first_name"] == "José" and full["mail_city"] == "Austin" and full["mail_county"] is pd.NA
    nulls = rows.loc["12345"]
    for column in ("bedrooms", "bathrooms", "owner_occupied", "estimated_value", "mail_city", "zip", "street"):
        assert nulls[column] is pd.NA, column
    assert nulls["last_sale_date"] is pd.NaT
    assert nulls["city"] == "Dallas" and nulls["state"] == "TX"
    assert march["bedrooms"].isna().sum() == 1 and march["estimated_value"].isna().sum() == 1
    assert "raw" not in march.columns


def test_a_range_of_months_is_the_union_and_a_campaign_narrows_it(engine: Engine, root: PayloadRoot) -> None:
    _march_and_april(root)
    _load(engine, root)

    both = frames.read_properties(engine, ["2026-04", "2026-03"])
    everything = frames.read_properties(engine)
    april = frames.read_properties(engine, "2026-04")
    camp_2 = frames.read_properties(engine, ["2026-03", "2026-04"], campaign="camp-2")
    camp_1_in_april = frames.read_properties(engine, "2026-04", campaign="camp-1")

    assert list(both["property_id"]) == ["12345", "april-only", "full", "shared"]
    pd.testing.assert_frame_equal(both, everything)
    assert list(april["property_id"]) == ["april-only", "shared"]
    assert list(camp_2["property_id"]) == ["april-only", "shared"]
    assert camp_1_in_april.empty and list(camp_1_in_april.columns) == list(EXPECTED_DTYPES)


def test_an_empty_month_gives_an_empty_frame_with_every_column_and_dtype(engine: Engine) -> None:
    empty = frames.read_properties(engine, "2026-07")
    assert empty.empty
    assert {column: str(dtype) for column, dtype in empty.dtypes.items()} == EXPECTED_DTYPES
    with_raw = frames.read_properties(engine, "2026-07", include_raw=True)
    assert list(with_raw.columns) == [*EXPECTED_DTYPES, "raw"] and str(with_raw["raw"].dtype) == "string"
    pd.testing.assert_frame_equal(empty, frames.empty_frame(frames.property_dtypes()))


def test_only_completed_files_deliver_rows(engine: Engine, root: PayloadRoot) -> None:
    write_page(root, [make_record("loaded")], batch=1, captured_at=MARCH)
    _load(engine, root)
    broken = root.month_dir("2026-03") / "camp-1_batch2_20260304T000000Z.json"
    broken.write_bytes(make_page([make_record("in-a-failed-file")])[:-20])  # truncated: the file FAILS
    write_page(root, [make_record("in-a-pending-file")], batch=3, captured_at=MARCH + timedelta(days=2))
    register_unregistered(engine, root, "test")
    ids = _file_ids(engine)
    PayloadProcessor(engine, root).run(file_ids=[ids["2026-03/" + broken.name]])
    with engine.connect() as conn:
        states = sorted(conn.execute(select(batch_file_status.c.status)).scalars())
    assert states == ["COMPLETED", "FAILED", "PENDING"]

    assert list(frames.read_properties(engine, "2026-03")["property_id"]) == ["loaded"]


def test_raw_is_the_record_as_received_when_asked(engine: Engine, root: PayloadRoot) -> None:
    record = make_record("with-raw", extras={"deep": [1, {"x": None}]})
    write_page(root, [record], captured_at=MARCH)
    _load(engine, root)

    frame = frames.read_properties(engine, "2026-03", include_raw=True)

    assert orjson.loads(frame.loc[0, "raw"]) == record


@pytest.mark.parametrize("storage", ["python", "pyarrow"])
def test_small_chunks_and_either_text_storage_give_the_same_frame(
    engine: Engine, root: PayloadRoot, storage: str
) -> None:
    for batch in range(1, 4):
        write_page(
            root,
            [make_record(f"p-{batch}-{i}", bedrooms=None if i % 3 == 0 else i) for i in range(7)],
            batch=batch,
            captured_at=MARCH + timedelta(minutes=batch),
        )
    _load(engine, root)
    with pd.option_context("mode.string_storage", storage):
        one_chunk = frames.read_properties(engine, "2026-03", include_raw=True)
        tiny_chunks = frames.read_properties(engine, "2026-03", include_raw=True, chunk_rows=2)
        with frames.stream_properties(engine, "2026-03", include_raw=True, chunk_rows=4) as stream:
            total = stream.total
            pieces = list(stream)

    assert one_chunk["city"].dtype.storage == storage
    assert len(one_chunk) == total == 21
    pd.testing.assert_frame_equal(one_chunk, tiny_chunks)
    assert [len(piece) for piece in pieces] == [4, 4, 4, 4, 4, 1]
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), one_chunk)
    assert one_chunk["bedrooms"].isna().sum() == 9


def test_a_long_read_on_sqlite_does_not_block_processing(tmp_path: Path, root: PayloadRoot) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'read.db'}")
    upgrade(engine)
    write_page(root, [make_record(f"a-{i}") for i in range(10)], batch=1, captured_at=MARCH)
    _load(engine, root)
    write_page(root, [make_record("later")], batch=2, captured_at=MARCH + timedelta(hours=1))
    register_unregistered(engine, root, "test")
    try:
        with frames.stream_properties(engine, "2026-03", chunk_rows=3) as stream:
            first = next(iter(stream))
            # A processor commits a file while the read is open: the read does not hold the write lock.
            report = PayloadProcessor(engine, root).run()
            rest = list(stream)
        assert report.completed == 1
        # The read sees its own snapshot: the rows counted when it began.
        assert stream.total == 10 and len(first) + sum(len(piece) for piece in rest) == 10
        assert len(frames.read_properties(engine, "2026-03")) == 11
    finally:
        engine.dispose()


def test_quarantined_records_read_with_their_file_and_reason(engine: Engine, root: PayloadRoot) -> None:
    bad = [make_record("ok"), make_record("bad-zip", address={"zip": "ABCDE"}), {"no": "id"}]
    (root.month_dir("2026-03")).mkdir(parents=True, exist_ok=True)
    (root.month_dir("2026-03") / "camp-9_batch1_20260303T080000Z.json").write_bytes(make_page(bad))
    _load(engine, root)

    quarantine = frames.read_quarantine(engine, "2026-03")

    assert {column: str(dtype) for column, dtype in quarantine.dtypes.items()} == {
        "quarantine_id": "Int64",
        "file_id": "Int64",
        "file_path": "string",
        "campaign_id": "string",
        "month": "string",
        "record_index": "Int32",
        "property_id": "string",
        "reason": "string",
        "raw": "string",
        "quarantined_at": "datetime64[us, UTC]",
    }
    assert list(quarantine["record_index"]) == [1, 2]
    assert list(quarantine["property_id"].fillna("-")) == ["bad-zip", "-"]
    assert "zip" in quarantine.loc[0, "reason"] and "id" in quarantine.loc[1, "reason"]
    assert set(quarantine["campaign_id"]) == {"camp-9"} and set(quarantine["month"]) == {"2026-03"}
    assert orjson.loads(quarantine.loc[1, "raw"]) == {"no": "id"}
    assert frames.read_quarantine(engine, "2026-04").empty


def test_months_are_validated() -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        frames.normalise_months("2026-3")
    assert frames.normalise_months(["2026-04", "2026-03", "2026-04"]) == ("2026-03", "2026-04")
    assert frames.normalise_months(None) is None
    assert np.dtype("datetime64[us]") == frames.property_dtypes()["last_sale_date"]
