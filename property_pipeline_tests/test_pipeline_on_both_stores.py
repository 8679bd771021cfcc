"""Capture, registration, processing, verify, cleanup, restore, reprocess and rebuild, the same on both payload
store backends: the data root folder and S3-compatible object storage (moto's server on loopback)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from property_pipeline.api.client import PropertySearchClient
from property_pipeline.api.sandbox import SandboxConfig, SandboxServer
from property_pipeline.capture import Campaign, capture_campaign
from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.schema import batch_file_status, properties
from property_pipeline.digest import compute_digest
from property_pipeline.integrity import verify_files
from property_pipeline.processing.parallel import process_backlog
from property_pipeline.processing.rebuild import rebuild
from property_pipeline.processing.replay import mark_for_reprocessing, plan_reprocess
from property_pipeline.registration import register_unregistered
from property_pipeline.retention import apply_retention, plan_retention, restore_month
from property_pipeline.retention.archive import MANIFEST_NAME
from property_pipeline.store.backend import PayloadStore
from property_pipeline_tests.factories import make_page, make_record, write_page

KEY = "sk-test-both-stores"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(records=1001, seed=7, api_key=KEY)) as server:
        yield server


def rows(engine: Engine) -> list:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return list(conn.execute(select(batch_file_status).order_by(batch_file_status.c.file_id)).all())


def property_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(properties)).scalar_one())


def stored_bytes(store: PayloadStore, relative_path: str) -> bytes:
    with store.open_payload(relative_path, 1 << 24) as handle:
        return handle.read()


def test_capture_stores_every_page_once_and_processing_loads_each_record_once(
    engine: Engine, store: PayloadStore, sandbox: SandboxServer
) -> None:
    with PropertySearchClient(sandbox.base_url, KEY, sleep=lambda _s: None) as client:
        report = capture_campaign(engine, store, client, Campaign("spring-tx"))
    assert (report.pages, report.records, report.complete) == (3, 1001, True)
    registered = rows(engine)
    assert [(r.status, r.batch_number) for r in registered] == [("PENDING", 1), ("PENDING", 2), ("PENDING", 3)]
    for row, index in zip(registered, (0, 400, 800), strict=True):
        body = stored_bytes(store, row.file_path)
        assert body == sandbox.page_body({}, index, 400)
        assert hashlib.sha256(body).hexdigest() == row.checksum_sha256
    processed = process_backlog(engine, store)
    assert [o.status for o in processed.outcomes] == ["COMPLETED"] * 3
    assert sum(o.success_count + o.error_count for o in processed.outcomes) == 1001
    loaded = property_count(engine)
    assert loaded == sum(o.success_count for o in processed.outcomes) > 900
    again = process_backlog(engine, store)
    assert again.outcomes == [] and property_count(engine) == loaded
    assert verify_files(engine, store).ok


def test_registration_finds_payloads_dropped_in_late_under_older_names(engine: Engine, store: PayloadStore) -> None:
    newer = write_page(store, [make_record("p-2")], campaign="zeta", captured_at=datetime(2026, 11, 20, tzinfo=UTC))
    first = register_unregistered(engine, store, "test")
    assert [r.file_path for r in first.registered] == [newer.relative_path]
    older = write_page(store, [make_record("p-1")], campaign="alpha", captured_at=datetime(2026, 11, 2, tzinfo=UTC))
    august = write_page(store, [make_record("p-0")], campaign="alpha", captured_at=datetime(2026, 8, 2, tzinfo=UTC))
    second = register_unregistered(engine, store, "test")
    assert sorted(r.file_path for r in second.registered) == sorted([older.relative_path, august.relative_path])
    assert register_unregistered(engine, store, "test").registered == []
    assert {r.file_path: r.checksum_sha256 for r in rows(engine)} == {
        s.relative_path: s.sha256 for s in (newer, older, august)
    }


def test_a_payload_replaced_or_deleted_behind_the_pipelines_back_fails_processing_and_verify(
    engine: Engine, store: PayloadStore
) -> None:
    replaced = write_page(store, [make_record("p-1")], batch=1)
    deleted = write_page(store, [make_record("p-2")], batch=2)
    kept = write_page(store, [make_record("p-3")], batch=3)
    register_unregistered(engine, store, "test")
    overwrite_behind_the_back(store, replaced.relative_path, make_page([make_record("p-1", price=1)]))
    store.delete_payload(deleted.relative_path)

    problems = {p.file_path: p.problem for p in verify_files(engine, store).problems}
    assert problems[replaced.relative_path].startswith("checksum mismatch")
    assert problems[deleted.relative_path].startswith("missing")
    assert kept.relative_path not in problems

    outcomes = {o.file_path: o for o in process_backlog(engine, store).outcomes}
    assert outcomes[kept.relative_path].status == "COMPLETED"
    assert outcomes[replaced.relative_path].status == "FAILED"
    assert "checksum mismatch" in (outcomes[replaced.relative_path].error or "")
    assert outcomes[deleted.relative_path].status == "FAILED"
    assert "missing" in (outcomes[deleted.relative_path].error or "")
    assert property_count(engine) == 1


def overwrite_behind_the_back(store: PayloadStore, relative_path: str, body: bytes) -> None:
    """What another system could do to a payload: new bytes under its name, bypassing the pipeline."""
    root = store.folder
    if root is not None:
        path = root.resolve(relative_path)
        path.chmod(0o644)
        path.write_bytes(body)
        return
    client = store.client  # type: ignore[attr-defined]
    client.put_object(Bucket=store.bucket, Key=store.key(relative_path), Body=body)  # type: ignore[attr-defined]


def test_cleanup_archives_verifies_then_deletes_and_restore_puts_back_identical_bytes(
    engine: Engine, store: PayloadStore
) -> None:
    old = [
        write_page(store, [make_record(f"old-{i}")], batch=i, captured_at=datetime(2026, 8, 3, i, tzinfo=UTC))
        for i in range(1, 4)
    ]
    recent = write_page(store, [make_record("new-1")], batch=9, captured_at=datetime(2026, 11, 3, tzinfo=UTC))
    register_unregistered(engine, store, "test")
    process_backlog(engine, store)
    before = compute_digest(engine)

    plan = plan_retention(engine, store, keep_months=2, today=date(2026, 11, 20))
    assert [(m.month, len(m.files)) for m in plan.months] == [("2026-08", 3)]
    report = apply_retention(engine, store, plan)
    assert report.ok, report.to_dict()
    [month] = report.months
    assert sorted(month.deleted) == sorted(s.relative_path for s in old) and month.archive_name is not None
    assert [found.relative_path for found in store.list_payloads("2026-08")] == []
    assert stored_bytes(store, recent.relative_path)  # the kept month is untouched
    with store.reading_archive(month.archive_name) as path, tarfile.open(path, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert MANIFEST_NAME in members
    assert {name: hashlib.sha256(body).hexdigest() for name, body in members.items() if name != MANIFEST_NAME} == {
        s.relative_path: s.sha256 for s in old
    }
    assert verify_files(engine, store).ok  # deleted on purpose is no problem

    restored = restore_month(engine, store, "2026-08")
    assert restored.ok and sorted(restored.restored) == sorted(s.relative_path for s in old)
    for stored in old:
        assert hashlib.sha256(stored_bytes(store, stored.relative_path)).hexdigest() == stored.sha256
    assert verify_files(engine, store).ok
    assert compute_digest(engine) == before


def test_an_archive_that_does_not_read_back_stops_every_deletion(engine: Engine, store: PayloadStore) -> None:
    old = write_page(store, [make_record("old-1")], captured_at=datetime(2026, 8, 3, tzinfo=UTC))
    register_unregistered(engine, store, "test")
    process_backlog(engine, store)
    plan = plan_retention(engine, store, keep_months=2, today=date(2026, 11, 20))
    writing = store.writing_archive

    def corrupting(name: str):  # type: ignore[no-untyped-def]
        """The archive as stored differs from what was written: a byte flipped on its way to the store."""

        class Flipping(io.BytesIO):
            pass

        from contextlib import contextmanager

        @contextmanager
        def flipped():  # type: ignore[no-untyped-def]
            buffer = Flipping()
            yield buffer
            data = bytearray(buffer.getvalue())
            data[len(data) // 2] ^= 0xFF
            with writing(name) as real:
                real.write(bytes(data))

        return flipped()

    store.writing_archive = corrupting  # type: ignore[method-assign]
    report = apply_retention(engine, store, plan)
    assert not report.ok
    assert "Nothing of this month was deleted" in report.months[0].failures[0].reason
    assert stored_bytes(store, old.relative_path)
    [row] = rows(engine)
    assert row.archive_name is None and row.deleted_at is None


def test_reprocess_and_rebuild_read_the_raw_store_and_give_the_same_digest(
    engine: Engine, store: PayloadStore, tmp_path: Path
) -> None:
    for batch in range(1, 4):
        write_page(store, [make_record(f"p-{batch}-{i}") for i in range(5)], batch=batch)
    write_page(store, [make_record("p-1-0", price=999)], batch=4, captured_at=datetime(2026, 8, 3, tzinfo=UTC))
    register_unregistered(engine, store, "test")
    process_backlog(engine, store)
    digest = compute_digest(engine)
    apply_retention(engine, store, plan_retention(engine, store, keep_months=2, today=date(2026, 11, 20)))

    marked = mark_for_reprocessing(engine, store, "test", plan_reprocess(engine, month="2026-11"), "test reload")
    assert len(marked) == 3
    assert [o.status for o in process_backlog(engine, store).outcomes] == ["COMPLETED"] * 3
    assert compute_digest(engine) == digest

    fresh_url = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    fresh = create_db_engine(fresh_url)
    upgrade(fresh)
    try:
        rebuild(engine, fresh, store)  # the August file comes straight from its archive
        assert compute_digest(fresh) == digest
    finally:
        fresh.dispose()
