"""The rules 2 to 6 of docs/design.md, on a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import os
import stat
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text

from property_pipeline.db import status
from property_pipeline.db.queries import row_count_mismatches
from property_pipeline.db.schema import (
    as_utc,
    batch_file_status,
    file_properties,
    properties,
    quarantined_records,
    utcnow,
)
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import BASE_TIME, make_record, write_page, write_pages


def _count(engine: Engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def _file_row(engine: Engine, file_id: int):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(batch_file_status).where(batch_file_status.c.file_id == file_id)).one()


def _tamper(path) -> None:  # type: ignore[no-untyped-def]
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[data.index(b"Austin")] = ord("X")
    path.write_bytes(bytes(data))


def test_pending_files_load_once_with_counts_and_links(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=3, per_file=25)
    registered = register_unregistered(engine, root, "test")
    assert len(registered.registered) == 3
    report = PayloadProcessor(engine, root).run()
    assert (report.completed, report.failed, report.records_loaded) == (3, 0, 75)
    assert _count(engine, properties) == 75
    assert _count(engine, file_properties) == 75
    row = _file_row(engine, 1)
    assert (row.status, row.properties_count, row.success_count, row.error_count) == ("COMPLETED", 25, 25, 0)
    assert row.processing_time_ms >= 0 and row.processed_at is not None and row.locked_by is None
    # A second run finds nothing to do and changes nothing.
    again = PayloadProcessor(engine, root).run()
    assert again.outcomes == []
    assert _count(engine, properties) == 75
    assert row_count_mismatches(engine) == (75, 75, [])
    # Markers mirror the database; the processing/ copy is gone.
    assert len(list(root.processed.glob("*/*"))) == 3
    assert list(root.pending.glob("*/*")) == []
    assert list(root.processing.iterdir()) == []


def test_typed_columns_and_raw_record_are_stored(engine: Engine, root: PayloadRoot) -> None:
    write_page(root, [make_record(12345), make_record("A-1", bedrooms=None, mailAddress=None)])
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    with engine.connect() as conn:
        rows = {r.property_id: r for r in conn.execute(select(properties))}
    assert set(rows) == {"12345", "A-1"}
    integer_id = rows["12345"]
    assert (integer_id.city, integer_id.state, integer_id.zip, integer_id.bedrooms, integer_id.bathrooms) == (
        "Austin",
        "TX",
        "78701",
        3,
        2.5,
    )
    assert integer_id.last_sale_date.isoformat() == "2019-06-14"
    assert integer_id.owner_occupied is True and integer_id.absentee_owner is False
    assert integer_id.owner1_first_name == "José"
    assert integer_id.raw["extras"]["mortgages"][0]["lender"] == "Bank"
    assert integer_id.raw["id"] == 12345
    assert rows["A-1"].bedrooms is None and rows["A-1"].mail_city is None
    assert integer_id.captured_at == BASE_TIME + timedelta(minutes=1)


def test_payload_changed_after_capture_fails_with_checksum_error_and_loads_nothing(
    engine: Engine, root: PayloadRoot
) -> None:
    _first, second = write_pages(root, files=2, per_file=10)
    register_unregistered(engine, root, "test")
    _tamper(second.path)
    report = PayloadProcessor(engine, root).run()
    assert (report.completed, report.failed) == (1, 1)
    failed = _file_row(engine, 2)
    assert failed.status == "FAILED"
    assert "checksum mismatch" in failed.error_details and second.relative_path in failed.error_details
    with engine.connect() as conn:
        loaded_from = set(conn.execute(select(properties.c.source_file_id)).scalars())
        links = set(conn.execute(select(file_properties.c.file_id)).scalars())
    assert loaded_from == links == {1}


def test_truncated_and_non_json_files_fail_alone(engine: Engine, root: PayloadRoot) -> None:
    good = write_pages(root, files=1, per_file=10)[0]
    truncated = root.payloads / "2026-11" / "camp-1_batch2_20261102T090000Z.json"
    truncated.write_bytes(good.path.read_bytes()[:300])
    html = root.payloads / "2026-11" / "camp-1_batch3_20261102T090001Z.json"
    html.write_bytes(b"<html>502 Bad Gateway</html>")
    wrong_shape = root.payloads / "2026-11" / "camp-1_batch4_20261102T090002Z.json"
    wrong_shape.write_bytes(b'{"statusCode": 200, "results": []}')
    register_unregistered(engine, root, "test")
    report = PayloadProcessor(engine, root).run()
    assert (report.completed, report.failed) == (1, 3)
    errors = {o.file_path.split("_batch")[1][:1]: o.error for o in report.errors}
    assert "not valid JSON" in errors["2"] and "not valid JSON" in errors["3"]
    assert "no 'data' list" in errors["4"]
    assert _count(engine, properties) == 10


def test_bad_records_are_quarantined_and_counted_while_the_rest_loads(engine: Engine, root: PayloadRoot) -> None:
    records = [make_record(f"ok-{i}") for i in range(8)]
    records.insert(2, make_record("bad-beds", bedrooms="three"))
    no_id = make_record("x")
    del no_id["id"]
    records.insert(5, no_id)
    records.append(make_record("bad-date", lastSaleDate="2021-13-45"))
    records.append(make_record("ok-3"))  # duplicate id inside the file
    records.append(make_record("nul", owner1LastName="a\x00b"))
    write_page(root, records)
    register_unregistered(engine, root, "test")
    report = PayloadProcessor(engine, root).run()
    assert report.completed == 1
    row = _file_row(engine, 1)
    assert (row.properties_count, row.success_count, row.error_count) == (13, 8, 5)
    with engine.connect() as conn:
        reasons = {r.record_index: r.reason for r in conn.execute(select(quarantined_records))}
    assert "bedrooms must be an integer" in reasons[2]
    assert "no id" in reasons[5]
    assert "YYYY-MM-DD" in reasons[10]
    assert "duplicate id" in reasons[11]
    assert "NUL" in reasons[12]
    assert _count(engine, properties) == 8


def test_reprocessing_an_older_file_never_overwrites_newer_data(engine: Engine, root: PayloadRoot) -> None:
    newer = write_page(
        root, [make_record("P1", estimatedValue=500_000)], batch=2, captured_at=BASE_TIME + timedelta(days=2)
    )
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    older = write_page(
        root, [make_record("P1", estimatedValue=100_000), make_record("P2")], batch=1, captured_at=BASE_TIME
    )
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    with engine.connect() as conn:
        p1 = conn.execute(select(properties).where(properties.c.property_id == "P1")).one()
    assert p1.estimated_value == 500_000
    assert p1.raw["estimatedValue"] == 500_000
    assert p1.captured_at == newer.name.captured_at
    assert _file_row(engine, 2).success_count == 2  # the older file still delivered (and links) both
    assert row_count_mismatches(engine)[2] == []
    # And a newer capture does win.
    write_page(root, [make_record("P1", estimatedValue=777_000)], batch=3, captured_at=BASE_TIME + timedelta(days=3))
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    with engine.connect() as conn:
        assert (
            conn.execute(select(properties.c.estimated_value).where(properties.c.property_id == "P1")).scalar()
            == 777_000
        )
    assert older.path.exists()


def test_expired_claim_returns_to_pending_and_is_processed_again(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=1, per_file=5)
    register_unregistered(engine, root, "test")
    crashed = status.claim_next_pending(engine, "dead-worker", lease_seconds=60)
    assert crashed is not None
    # While the lease is valid, nobody else may take the file.
    assert PayloadProcessor(engine, root).run().outcomes == []
    with engine.begin() as conn:
        conn.execute(batch_file_status.update().values(locked_until=utcnow() - timedelta(seconds=1)))
    report = PayloadProcessor(engine, root).run()
    assert report.requeued == [crashed.file_id]
    assert report.completed == 1
    assert _file_row(engine, crashed.file_id).attempts == 2
    # The dead worker waking up later cannot complete or fail the file any more.
    assert not status.mark_failed(engine, crashed.file_id, "dead-worker", "late", processing_time_ms=1)
    assert _file_row(engine, crashed.file_id).status == "COMPLETED"


def test_failed_files_can_be_retried_and_the_retry_is_recorded(engine: Engine, root: PayloadRoot) -> None:
    stored = write_pages(root, files=1, per_file=5)[0]
    register_unregistered(engine, root, "test")
    original = stored.path.read_bytes()
    _tamper(stored.path)
    assert PayloadProcessor(engine, root).run().failed == 1
    os.chmod(stored.path, stat.S_IRUSR | stat.S_IWUSR)
    stored.path.write_bytes(original)
    assert status.retry_failed(engine, "test", month="2026-11") == [1]
    report = PayloadProcessor(engine, root).run()
    assert report.completed == 1
    with engine.connect() as conn:
        transitions = conn.execute(
            text("SELECT from_status, to_status FROM file_status_events WHERE file_id = 1 ORDER BY event_id")
        ).all()
    assert [tuple(t) for t in transitions] == [
        (None, "PENDING"),
        ("PENDING", "PROCESSING"),
        ("PROCESSING", "FAILED"),
        ("FAILED", "PENDING"),
        ("PENDING", "PROCESSING"),
        ("PROCESSING", "COMPLETED"),
    ]


def _events(conn, file_id: int) -> list[tuple[object, ...]]:  # type: ignore[no-untyped-def]
    statement = text(
        "SELECT from_status, to_status, actor, detail, at FROM file_status_events WHERE file_id = :id ORDER BY event_id"
    )
    return [tuple(row) for row in conn.execute(statement, {"id": file_id})]


def test_a_claim_and_a_completion_each_record_one_event_with_actor_detail_and_time(
    engine: Engine, root: PayloadRoot
) -> None:
    write_pages(root, files=1, per_file=3)
    register_unregistered(engine, root, "test")
    before = utcnow()
    claimed = status.claim_next_pending(engine, "worker-a", 60)
    assert claimed is not None
    with engine.begin() as conn:
        status.mark_completed(
            conn, claimed.file_id, "worker-a", properties_count=3, success_count=3, error_count=0, processing_time_ms=5
        )
    with engine.connect() as conn:
        registered, claim, completion = _events(conn, claimed.file_id)
    assert registered[:2] == (None, "PENDING")
    assert claim[:4] == ("PENDING", "PROCESSING", "worker-a", None)
    assert completion[:4] == ("PROCESSING", "COMPLETED", "worker-a", "3 loaded")
    claimed_at, completed_at = (as_utc(claim[4]), as_utc(completion[4]))
    assert claimed_at is not None and completed_at is not None
    assert before <= claimed_at <= completed_at <= utcnow()


def test_a_completion_without_the_claim_changes_nothing_and_records_no_event(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=1, per_file=3)
    register_unregistered(engine, root, "test")
    claimed = status.claim_next_pending(engine, "worker-a", 60)
    assert claimed is not None
    with engine.begin() as conn:
        before = _events(conn, claimed.file_id)
        with pytest.raises(status.LostClaim):
            status.mark_completed(
                conn,
                claimed.file_id,
                "worker-b",
                properties_count=3,
                success_count=3,
                error_count=0,
                processing_time_ms=5,
            )
        # In the same transaction: neither the status row nor the event log changed.
        assert _events(conn, claimed.file_id) == before
        assert conn.execute(select(batch_file_status.c.status, batch_file_status.c.locked_by)).one() == (
            "PROCESSING",
            "worker-a",
        )


def test_include_failed_reprocesses_failed_files_in_scope_only(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=2, per_file=3)
    register_unregistered(engine, root, "test")
    for _ in range(2):
        claimed = status.claim_next_pending(engine, "w", 60)
        assert claimed is not None
        status.mark_failed(engine, claimed.file_id, "w", "simulated", processing_time_ms=0)
    report = PayloadProcessor(engine, root).run(file_ids=[2], include_failed=True)
    assert report.retried == [2] and report.completed == 1
    assert _file_row(engine, 1).status == "FAILED"


def test_missing_file_fails_with_a_readable_error(engine: Engine, root: PayloadRoot) -> None:
    stored = write_pages(root, files=1, per_file=3)[0]
    register_unregistered(engine, root, "test")
    stored.path.unlink()
    report = PayloadProcessor(engine, root).run()
    assert report.failed == 1 and "missing" in report.errors[0].error
