"""Reprocess, discard and the digest, on a real SQLite file and the real PostgreSQL server.

The reference for every reprocess is a fresh database loaded once from copies of the same payload
files under today's rules: after reprocessing, the digests must be equal.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.queries import month_statuses, row_count_mismatches
from property_pipeline.db.schema import (
    batch_file_status,
    file_properties,
    file_status_events,
    properties,
    quarantined_records,
)
from property_pipeline.digest import compute_digest
from property_pipeline.monitoring.alerts import current_alerts
from property_pipeline.processing import replay
from property_pipeline.processing.parallel import process_backlog
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.processing.requeue import retry_failed_files
from property_pipeline.registration import register_unregistered
from property_pipeline.retention import apply_retention, plan_retention, restore_month
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests import replay_rules
from property_pipeline_tests.conftest import TABLES
from property_pipeline_tests.factories import make_record, write_page

OCT = datetime(2026, 10, 5, 8, tzinfo=UTC)
NOV = datetime(2026, 11, 5, 8, tzinfo=UTC)
REASON = "new validation rule"


@pytest.fixture
def new_rule() -> Iterator[None]:
    replay_rules.install()
    yield
    replay_rules.uninstall()


def _scenario(root: PayloadRoot) -> None:
    """October delivers two properties that November delivers again; the new rule touches November only."""
    write_page(
        root,
        [make_record("only-oct"), make_record("falls-back", bedrooms=2), make_record("mapped", bedrooms=2)],
        batch=1,
        captured_at=OCT,
    )
    write_page(
        root,
        [
            make_record("only-nov-rejected", extras={"replayRule": "reject"}),
            make_record("falls-back", bedrooms=4, extras={"replayRule": "reject"}),
            make_record("mapped", bedrooms=4, extras={"replayRule": "upper"}),
            make_record("only-nov"),
        ],
        batch=1,
        captured_at=NOV,
    )
    write_page(root, [make_record(f"nov-{i}") for i in range(10)], batch=2, captured_at=NOV + timedelta(minutes=1))


def _load_all(engine: Engine, root: PayloadRoot) -> None:
    register_unregistered(engine, root, "test")
    report = PayloadProcessor(engine, root).run()
    assert report.failed == 0


def _fresh_copy(tmp_path: Path, root: PayloadRoot, name: str) -> tuple[Engine, PayloadRoot]:
    """A new SQLite database and a new data root holding copies of `root`'s payload files (nothing else)."""
    copy = PayloadRoot(tmp_path / name / "logs")
    copy.ensure_folders()
    shutil.copytree(root.payloads, copy.payloads, dirs_exist_ok=True)
    engine = create_db_engine(f"sqlite:///{tmp_path / name / 'pipeline.db'}")
    upgrade(engine)
    return engine, copy


def _reference_digest(tmp_path: Path, root: PayloadRoot, name: str = "reference"):  # type: ignore[no-untyped-def]
    engine, copy = _fresh_copy(tmp_path, root, name)
    try:
        _load_all(engine, copy)
        return compute_digest(engine)
    finally:
        engine.dispose()


def _reprocess(engine: Engine, root: PayloadRoot, **scope: object) -> list[int]:
    plan = replay.plan_reprocess(engine, **scope)  # type: ignore[arg-type]
    marked = replay.mark_for_reprocessing(engine, root, "test", plan, REASON)
    report = PayloadProcessor(engine, root).run(file_ids=marked)
    assert report.completed == len(marked) and report.failed == 0
    return marked


def _row(engine: Engine, property_id: str):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(properties).where(properties.c.property_id == property_id)).first()


def _links(engine: Engine, property_id: str) -> list[int]:
    with engine.connect() as conn:
        query = select(file_properties.c.file_id).where(file_properties.c.property_id == property_id)
        return sorted(conn.execute(query).scalars())


def _file_id(engine: Engine, month: str, batch: int) -> int:
    with engine.connect() as conn:
        query = select(batch_file_status.c.file_id).where(
            batch_file_status.c.month == month, batch_file_status.c.batch_number == batch
        )
        return int(conn.execute(query).scalar_one())


def _file_state(engine: Engine, file_id: int) -> tuple[object, ...]:
    with engine.connect() as conn:
        row = conn.execute(select(batch_file_status).where(batch_file_status.c.file_id == file_id)).one()
        links = conn.execute(
            select(func.count()).select_from(file_properties).where(file_properties.c.file_id == file_id)
        ).scalar_one()
        quarantined = conn.execute(
            select(quarantined_records.c.record_index, quarantined_records.c.reason).where(
                quarantined_records.c.file_id == file_id
            )
        ).all()
    return tuple(row), links, sorted(quarantined)


def test_reprocess_after_a_rule_change_reloads_the_month_as_a_fresh_load_would(
    engine: Engine, root: PayloadRoot, tmp_path: Path, new_rule: None
) -> None:
    replay_rules.uninstall()  # the files were loaded under the old rules
    _scenario(root)
    _load_all(engine, root)
    october = _file_id(engine, "2026-10", 1)
    november = _file_id(engine, "2026-11", 1)
    october_before = _file_state(engine, october)
    assert _row(engine, "falls-back").bedrooms == 4 and _row(engine, "only-nov-rejected") is not None

    replay_rules.install()  # the rule is fixed; November is reprocessed
    marked = _reprocess(engine, root, month="2026-11")

    assert marked == sorted([november, _file_id(engine, "2026-11", 2)])
    # Rejected now, delivered by no other file: the row is gone, its record quarantined with the new reason.
    assert _row(engine, "only-nov-rejected") is None and _links(engine, "only-nov-rejected") == []
    with engine.connect() as conn:
        reasons = conn.execute(
            select(quarantined_records.c.property_id, quarantined_records.c.reason).where(
                quarantined_records.c.file_id == november
            )
        ).all()
    assert sorted(reasons) == [
        ("falls-back", replay_rules.REJECTED_REASON),
        ("only-nov-rejected", replay_rules.REJECTED_REASON),
    ]
    # Rejected now but delivered by October too: the row takes October's values, its first sighting is October's.
    falls_back = _row(engine, "falls-back")
    assert (falls_back.bedrooms, falls_back.source_file_id, falls_back.captured_at) == (2, october, OCT)
    assert falls_back.first_seen_at == OCT and _links(engine, "falls-back") == [october]
    # Mapped differently now: the row that came from November is rewritten with the new parse.
    mapped = _row(engine, "mapped")
    assert (mapped.city, mapped.bedrooms, mapped.source_file_id) == ("AUSTIN", 4, november)
    # October is untouched: its status row, links and quarantine are as they were.
    assert _file_state(engine, october) == october_before
    # Counts stay exact, and the reprocess is recorded with its reason.
    assert row_count_mismatches(engine)[2] == []
    with engine.connect() as conn:
        events = conn.execute(
            select(file_status_events.c.detail).where(
                file_status_events.c.file_id == november, file_status_events.c.from_status == "COMPLETED"
            )
        ).all()
        attempts = conn.execute(
            select(batch_file_status.c.attempts).where(batch_file_status.c.file_id == november)
        ).scalar_one()
    assert [row.detail for row in events] == [f"reprocess: {REASON}"] and attempts == 2
    # The reprocessed database holds what a fresh load of the same files under the new rule holds.
    assert compute_digest(engine) == _reference_digest(tmp_path, root)


def test_reprocessing_twice_changes_nothing_more(engine: Engine, root: PayloadRoot, new_rule: None) -> None:
    _scenario(root)
    _load_all(engine, root)
    _reprocess(engine, root, month="2026-11")
    once = compute_digest(engine)
    _reprocess(engine, root, month="2026-11")
    _reprocess(engine, root, month="2026-10")
    assert compute_digest(engine) == once
    assert row_count_mismatches(engine)[2] == []


def test_reprocessing_an_older_file_never_overwrites_what_a_later_capture_delivered(
    engine: Engine, root: PayloadRoot, new_rule: None
) -> None:
    write_page(root, [make_record("p", bedrooms=2, extras={"replayRule": "upper"})], batch=1, captured_at=OCT)
    write_page(root, [make_record("p", bedrooms=4)], batch=1, captured_at=NOV)
    replay_rules.uninstall()
    _load_all(engine, root)
    replay_rules.install()
    october, november = _file_id(engine, "2026-10", 1), _file_id(engine, "2026-11", 1)

    _reprocess(engine, root, file_ids=[october])

    row = _row(engine, "p")
    assert (row.bedrooms, row.city, row.source_file_id, row.captured_at) == (4, "Austin", november, NOV)
    assert row.first_seen_at == OCT and _links(engine, "p") == [october, november]
    # Reprocessing the newer file, the row's own source, rewrites it (here with the same values).
    _reprocess(engine, root, campaign="camp-1", month="2026-11")
    assert _row(engine, "p").bedrooms == 4 and _row(engine, "p").source_file_id == november


def test_digest_is_the_same_whatever_the_order_and_number_of_processors(
    engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    _scenario(root)
    write_page(root, [make_record("falls-back", bedrooms=1)], batch=9, captured_at=OCT - timedelta(days=2))
    write_page(root, [{"id": "broken", "latitude": "north"}, make_record("mapped")], batch=3, captured_at=NOV)
    register_unregistered(engine, root, "test")
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(batch_file_status.c.file_id)).scalars())
    for file_id in reversed(ids):  # newest first: every older file arrives after a newer one
        PayloadProcessor(engine, root).run(file_ids=[file_id])
    backwards = compute_digest(engine)
    assert backwards.quarantined == 1 and backwards.rows == 15

    parallel_engine, parallel_root = _fresh_copy(tmp_path, root, "parallel")
    try:
        register_unregistered(parallel_engine, parallel_root, "test")
        process_backlog(parallel_engine, parallel_root, workers=2)
        in_parallel = compute_digest(parallel_engine)
    finally:
        parallel_engine.dispose()
    assert backwards == in_parallel == _reference_digest(tmp_path, root)
    # The earliest capture is the first sighting, even though it was loaded last.
    assert _row(engine, "falls-back").first_seen_at == OCT - timedelta(days=2)


def test_month_digests_partition_the_table(engine: Engine, root: PayloadRoot) -> None:
    _scenario(root)
    _load_all(engine, root)
    whole = compute_digest(engine)
    assert [m.month for m in whole.months] == ["2026-10", "2026-11"]
    assert sum(m.rows for m in whole.months) == whole.rows == 15
    november = compute_digest(engine, "2026-11")
    assert november.months == [whole.months[1]] and november.rows == whole.months[1].rows


def test_a_reload_that_fails_takes_the_files_data_out_and_a_retry_puts_it_back(
    engine: Engine, root: PayloadRoot
) -> None:
    _scenario(root)
    _load_all(engine, root)
    loaded = compute_digest(engine)
    november = _file_id(engine, "2026-11", 1)
    path = root.resolve("2026-11/" + Path(_path_of(engine, november)).name)
    original = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(original.replace(b"Austin", b"Boston", 1))  # the bytes no longer match the checksum

    plan = replay.plan_reprocess(engine, file_ids=[november])
    replay.mark_for_reprocessing(engine, root, "test", plan, REASON)
    report = PayloadProcessor(engine, root).run(file_ids=[november])

    assert report.failed == 1 and "checksum mismatch" in (report.errors[0].error or "")
    # A FAILED file holds no data: its links are gone, rows only it delivered are gone, the others fall back.
    assert _links(engine, "only-nov") == [] and _row(engine, "only-nov") is None
    assert _row(engine, "falls-back").bedrooms == 2 and _links(engine, "falls-back") == [_file_id(engine, "2026-10", 1)]
    assert row_count_mismatches(engine)[2] == []

    path.write_bytes(original)
    retry_failed_files(engine, root, "test", file_ids=[november])
    PayloadProcessor(engine, root).run()
    assert compute_digest(engine) == loaded


def _marker(root: PayloadRoot, relative_path: str) -> str | None:
    """What the file's markers say: PENDING (a `pending/` marker) or the status in its `processed/` marker."""
    if (root.pending / relative_path).exists():
        return "PENDING"
    processed = root.processed / relative_path
    return str(json.loads(processed.read_text())["status"]) if processed.exists() else None


def _path_of(engine: Engine, file_id: int) -> str:
    with engine.connect() as conn:
        query = select(batch_file_status.c.file_path).where(batch_file_status.c.file_id == file_id)
        return str(conn.execute(query).scalar_one())


def test_files_retention_deleted_need_a_restore_before_they_reprocess(engine: Engine, root: PayloadRoot) -> None:
    _scenario(root)
    _load_all(engine, root)
    loaded = compute_digest(engine)
    apply_retention(engine, root, plan_retention(engine, root, keep_months=1, today=datetime(2026, 11, 20).date()))
    plan = replay.plan_reprocess(engine, month="2026-10")
    assert plan.to_reprocess == [] and [path for _, path in plan.needs_restore] == [_path_of(engine, 1)]
    assert replay.mark_for_reprocessing(engine, root, "test", plan, REASON) == []

    assert restore_month(engine, root, "2026-10").ok
    assert _reprocess(engine, root, month="2026-10") == [1]
    assert compute_digest(engine) == loaded


def test_discard_settles_a_hopeless_file_and_retry_takes_it_back(engine: Engine, root: PayloadRoot) -> None:
    _scenario(root)
    truncated = write_page(root, [make_record("lost")], batch=3, captured_at=NOV + timedelta(minutes=5))
    truncated.path.chmod(0o644)
    truncated.path.write_bytes(truncated.path.read_bytes()[:40])
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    hopeless = _file_id(engine, "2026-11", 3)
    assert [a.kind for a in current_alerts(engine, pending_max_age_seconds=3600)] == ["failed"]
    with pytest.raises(ValueError, match="--reason"):
        replay.discard(engine, root, "test", [hopeless], "  ")

    assert replay.discard(engine, root, "test", [hopeless], "the API no longer serves this page") == [hopeless]
    assert replay.discard(engine, root, "test", [hopeless], "again") == []  # only FAILED files are discarded

    november = month_statuses(engine, "2026-11")[0]
    assert (november.failed, november.discarded, november.completed) == (0, 1, 2)
    assert current_alerts(engine, pending_max_age_seconds=3600) == []
    assert _marker(root, truncated.relative_path) == "DISCARDED"
    with engine.connect() as conn:
        detail = conn.execute(
            select(file_status_events.c.detail).where(
                file_status_events.c.file_id == hopeless, file_status_events.c.to_status == "DISCARDED"
            )
        ).scalar_one()
    assert detail == "discarded: the API no longer serves this page"
    # Settled: retention takes it with the rest of its month.
    plan = plan_retention(engine, root, keep_months=1, today=datetime(2026, 12, 20).date())
    assert truncated.relative_path in {f.file_path for m in plan.months for f in m.files}
    # A month retry never undoes a discard; naming the file does.
    assert retry_failed_files(engine, root, "test", month="2026-11") == []
    assert retry_failed_files(engine, root, "test", file_ids=[hopeless]) == [hopeless]
    assert _marker(root, truncated.relative_path) == "PENDING"
    report = PayloadProcessor(engine, root).run()
    assert report.failed == 1  # still truncated: FAILED again, and alerted again (a new attempt)
    assert [a.key for a in current_alerts(engine, pending_max_age_seconds=3600)] == [f"failed:{hopeless}:2"]


def test_a_reprocessed_month_is_not_an_old_backlog(engine: Engine, root: PayloadRoot) -> None:
    _scenario(root)
    _load_all(engine, root)
    with engine.begin() as conn:  # registered long ago
        conn.execute(batch_file_status.update().values(created_at=datetime(2026, 11, 6, tzinfo=UTC)))
    plan = replay.plan_reprocess(engine, month="2026-11")
    replay.mark_for_reprocessing(engine, root, "test", plan, REASON)
    assert current_alerts(engine, pending_max_age_seconds=3600) == []
    assert month_statuses(engine, "2026-11")[0].pending == 2


def test_reprocessing_unchanged_files_writes_no_row_versions(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL: a reload that changes nothing leaves every property (content and sighting) and link row as it
    was (same xmin)."""
    engine = create_db_engine(postgres_url)
    root = PayloadRoot(tmp_path / "logs")
    root.ensure_folders()
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        _scenario(root)
        _load_all(engine, root)

        def versions() -> tuple[list[tuple[str, str, str]], list[tuple[int, str, str]]]:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT r.property_id, r.xmin::text, s.xmin::text FROM property_records r "
                        "JOIN property_sightings s USING (property_id) ORDER BY 1"
                    )
                ).all()
                links = conn.execute(text("SELECT file_id, property_id, xmin::text FROM file_properties ORDER BY 1, 2"))
                return [tuple(r) for r in rows], [tuple(r) for r in links]  # type: ignore[misc]

        before = versions()
        _reprocess(engine, root, month="2026-11")
        _reprocess(engine, root, month="2026-10")
        assert versions() == before
    finally:
        engine.dispose()
