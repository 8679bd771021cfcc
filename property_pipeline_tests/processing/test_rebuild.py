"""Rebuild a database from the payload folder and the archives; the digest proves the result."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.queries import month_statuses
from property_pipeline.db.schema import batch_file_status, file_status_events
from property_pipeline.digest import compute_digest
from property_pipeline.processing import replay
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.processing.rebuild import RebuildRefused, rebuild
from property_pipeline.registration import register_unregistered
from property_pipeline.retention import apply_retention, plan_retention
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import write_payload
from property_pipeline_tests.conftest import TABLES
from property_pipeline_tests.factories import make_record, write_page


def _month_pages(root: PayloadRoot, month: int, files: int = 3) -> None:
    for batch in range(1, files + 1):
        records = [make_record(f"m{month}-{batch}-{i}") for i in range(6)] + [make_record("everywhere", bedrooms=month)]
        records.append({"id": f"bad-{month}-{batch}", "latitude": "north"})  # quarantined
        write_page(root, records, batch=batch, captured_at=datetime(2026, month, 3, 8, batch, tzinfo=UTC))


def _source(engine: Engine, root: PayloadRoot) -> dict[str, object]:
    """Three months: August deleted by retention (archived), September with a discarded file and a duplicate,
    October on disk. What the test expects of the rebuilt database."""
    for month in (8, 9, 10):
        _month_pages(root, month)
    first_of_september = next((root.payloads / "2026-09").glob("camp-1_batch1_*.json")).read_bytes()
    write_payload(root, "camp-1", 9, first_of_september, datetime(2026, 9, 3, 9, tzinfo=UTC))  # a duplicate
    truncated = write_page(root, [make_record("lost")], batch=7, captured_at=datetime(2026, 9, 4, tzinfo=UTC))
    truncated.path.chmod(0o644)
    truncated.path.write_bytes(truncated.path.read_bytes()[:30])
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    with engine.connect() as conn:
        failed = conn.execute(select(batch_file_status.c.file_id).where(batch_file_status.c.status == "FAILED")).all()
    assert len(failed) == 1
    replay.discard(engine, root, "test", [failed[0].file_id], "the API will not serve it again")
    report = apply_retention(engine, root, plan_retention(engine, root, keep_months=2, today=date(2026, 10, 20)))
    assert report.ok and report.deleted == 3
    return {"discarded": failed[0].file_id}


def _status_rows(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(batch_file_status).order_by(batch_file_status.c.file_id))]


def _tree(folder: Path) -> dict[str, float]:
    return {str(path.relative_to(folder)): path.stat().st_mtime for path in sorted(folder.rglob("*"))}


@pytest.fixture
def target(engine: Engine, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The other kind of database than the source: rebuilds cross from SQLite to PostgreSQL and back."""
    if engine.dialect.name == "sqlite":
        rebuilt = create_db_engine(request.getfixturevalue("postgres_url"))
        with rebuilt.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    else:
        rebuilt = create_db_engine(f"sqlite:///{tmp_path / 'rebuilt.db'}")
        upgrade(rebuilt)
    yield rebuilt
    rebuilt.dispose()


def test_rebuild_from_live_files_and_archives_equals_the_source(
    engine: Engine, root: PayloadRoot, target: Engine
) -> None:
    expected = _source(engine, root)
    source_digest = compute_digest(engine)
    source_rows, source_tree = _status_rows(engine), _tree(root.logs_dir)
    assert not any((root.payloads / "2026-08").glob("*.json"))  # August lives in its archive only

    report = rebuild(engine, target, root)

    assert compute_digest(target) == source_digest
    assert report.from_archives == 3 and report.failed == [] and report.duplicates == 1
    assert report.carried_discarded == 1
    # The source is only read, and nothing was written under the data root (no markers, no restored files).
    assert _status_rows(engine) == source_rows and _tree(root.logs_dir) == source_tree
    # The target's status rows are its own, with the source's file ids, states and retention history.
    statuses = {m.month: m for m in month_statuses(target)}
    assert (statuses["2026-08"].completed, statuses["2026-08"].deleted) == (3, 3)
    assert (statuses["2026-09"].completed, statuses["2026-09"].discarded, statuses["2026-09"].duplicates) == (4, 1, 1)
    with target.connect() as conn:
        detail = conn.execute(
            select(file_status_events.c.detail).where(
                file_status_events.c.file_id == expected["discarded"], file_status_events.c.to_status == "DISCARDED"
            )
        ).scalar_one()
    assert detail == "discarded in the source database: discarded: the API will not serve it again"
    # Run again: nothing left to do, nothing changes.
    again = rebuild(engine, target, root)
    assert (again.registered, again.outcomes) == (0, [])
    assert compute_digest(target) == source_digest


def test_rebuild_of_a_range_of_months(engine: Engine, root: PayloadRoot, target: Engine) -> None:
    _source(engine, root)
    rebuild(engine, target, root, from_month="2026-09", to_month="2026-09")
    assert [m.month for m in month_statuses(target)] == ["2026-09"]
    september = compute_digest(target)
    # The rows September delivers, with September's values: "everywhere" came from September here.
    assert september.rows == 3 * 6 + 1 and september.quarantined == 3


def test_rebuild_refuses_its_source_and_a_foreign_database(
    engine: Engine, root: PayloadRoot, target: Engine, tmp_path: Path
) -> None:
    _source(engine, root)
    with pytest.raises(RebuildRefused, match="the target is the source"):
        rebuild(engine, create_db_engine(str(engine.url)), root)
    other_root = PayloadRoot(tmp_path / "other")
    other_root.ensure_folders()
    write_page(other_root, [make_record("x")], batch=1, captured_at=datetime(2026, 10, 1, tzinfo=UTC))
    register_unregistered(target, other_root, "test")
    with pytest.raises(RebuildRefused, match="not the source's"):
        rebuild(engine, target, root)


def test_a_missing_archive_fails_its_files_and_the_rest_loads(
    engine: Engine, root: PayloadRoot, target: Engine
) -> None:
    _source(engine, root)
    for archive in root.archive.glob("*.tar.gz"):
        archive.chmod(0o644)
        archive.unlink()
    report = rebuild(engine, target, root)
    assert len(report.failed) == 3 and all("archive" in (o.error or "") for o in report.failed)
    assert {m.month: m.failed for m in month_statuses(target)} == {"2026-08": 3, "2026-09": 0, "2026-10": 0}
    with target.connect() as conn:
        completed = conn.execute(
            select(func.count()).select_from(batch_file_status).where(batch_file_status.c.status == "COMPLETED")
        ).scalar_one()
    assert completed == 7  # September's four (a duplicate among them) and October's three


def test_a_reprocessed_source_rebuilds_to_the_same_digest(engine: Engine, root: PayloadRoot, target: Engine) -> None:
    write_page(root, [make_record("p", bedrooms=1)], batch=1, captured_at=datetime(2026, 11, 1, tzinfo=UTC))
    write_page(root, [make_record("p", bedrooms=2)], batch=2, captured_at=datetime(2026, 11, 1, tzinfo=UTC))
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    plan = replay.plan_reprocess(engine, month="2026-11")
    replay.mark_for_reprocessing(engine, root, "test", plan, "check")
    PayloadProcessor(engine, root).run()
    rebuild(engine, target, root)
    # Same capture second: the tie goes to the later registration, in both databases.
    assert compute_digest(target) == compute_digest(engine)
    with target.connect() as conn:
        assert conn.execute(select(func.max(batch_file_status.c.file_id))).scalar_one() == 2
