"""Retention (docs/design.md, rule 1): archive, verify, then delete; restore; crash at any point.

Old data spans 2026-07..2026-11 with `today` = 2026-12-15 and two months kept (2026-11 and 2026-12),
so 2026-07..2026-10 are eligible; every status and an unregistered file are in the eligible months.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, select

from property_pipeline import retention
from property_pipeline.cli import main
from property_pipeline.db import status
from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.queries import month_statuses
from property_pipeline.db.schema import batch_file_status, file_status_events, properties
from property_pipeline.integrity import verify_files
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.retention import (
    ManifestEntry,
    apply_retention,
    oldest_kept_month,
    plan_retention,
    restore_month,
    verify_archive,
)
from property_pipeline.retention import apply as retention_apply
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import StoredPayload
from property_pipeline_tests.factories import make_record, write_page

TODAY = date(2026, 12, 15)
ELIGIBLE_MONTHS = ["2026-07", "2026-08", "2026-09", "2026-10"]


@dataclass
class OldData:
    """Files by what retention must do with them; `ids` maps file_path to file_id."""

    eligible: list[StoredPayload] = field(default_factory=list)  # COMPLETED, in an old month
    kept: list[StoredPayload] = field(default_factory=list)  # everything retention must leave alone
    ids: dict[str, int] = field(default_factory=dict)

    def by_month(self, month: str) -> list[StoredPayload]:
        return [s for s in self.eligible if s.month == month]


def _page(root: PayloadRoot, month: int, batch: int, campaign: str = "camp-1") -> StoredPayload:
    records = [make_record(f"{campaign}-{month}-{batch}-{i}") for i in range(5)]
    return write_page(
        root, records, campaign=campaign, batch=batch, captured_at=datetime(2026, month, batch, 8, tzinfo=UTC)
    )


def _old_data(engine: Engine, root: PayloadRoot) -> OldData:
    data = OldData()
    data.eligible = [_page(root, 7, b) for b in (1, 2, 3)] + [_page(root, 8, b) for b in (1, 2)]
    data.eligible += [_page(root, 9, 1), _page(root, 10, 1)]
    failed, pending, processing = _page(root, 8, 3), _page(root, 8, 4), _page(root, 9, 2)
    recent = [_page(root, 11, 1), _page(root, 11, 2)]
    registered = register_unregistered(engine, root, "test")
    data.ids = {r.file_path: r.file_id for r in registered.registered}
    _claim(engine, data.ids[processing.relative_path])
    _claim(engine, data.ids[failed.relative_path])
    status.mark_failed(engine, data.ids[failed.relative_path], "test", "boom", processing_time_ms=1)
    completed = [data.ids[s.relative_path] for s in data.eligible + recent]
    report = PayloadProcessor(engine, root).run(file_ids=completed)
    assert report.completed == len(completed)
    unregistered = _page(root, 10, 2, campaign="dropped-in")
    data.kept = [failed, pending, processing, unregistered, *recent]
    return data


def _claim(engine: Engine, file_id: int) -> None:
    claimed = status.claim_next_pending(engine, "test", 300, file_ids=[file_id])
    assert claimed is not None and claimed.file_id == file_id


def _rows(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return {row.file_path: dict(row._mapping) for row in conn.execute(select(batch_file_status))}


def _count(engine: Engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def _tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under a folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _snapshot(engine: Engine, root: PayloadRoot) -> tuple[object, ...]:
    return _rows(engine), _tree(root.logs_dir), _count(engine, file_status_events), _count(engine, properties)


def _archives(root: PayloadRoot) -> list[Path]:
    return sorted(root.archive.iterdir())


def _plan(engine: Engine, root: PayloadRoot) -> retention.RetentionPlan:
    return plan_retention(engine, root, keep_months=2, today=TODAY)


def _cleanup(engine: Engine, root: PayloadRoot, *, archive: bool = True) -> retention.RetentionReport:
    return apply_retention(engine, root, _plan(engine, root), archive=archive)


def _assert_untouched(engine: Engine, data: OldData, before: dict[str, dict[str, object]]) -> None:
    rows = _rows(engine)
    for stored in data.kept:
        assert hashlib.sha256(stored.path.read_bytes()).hexdigest() == stored.sha256, stored.relative_path
        if stored.relative_path in before:
            assert rows[stored.relative_path] == before[stored.relative_path]


def test_kept_window_counts_the_current_month() -> None:
    assert oldest_kept_month(date(2026, 12, 15), 2) == "2026-11"
    assert oldest_kept_month(date(2026, 1, 31), 2) == "2025-12"
    assert oldest_kept_month(date(2026, 3, 1), 1) == "2026-03"
    assert oldest_kept_month(date(2026, 3, 1), 15) == "2025-01"
    with pytest.raises(ValueError, match="at least 1"):
        oldest_kept_month(date(2026, 3, 1), 0)


def test_plan_lists_old_completed_files_and_says_why_the_others_stay(engine: Engine, root: PayloadRoot) -> None:
    data = _old_data(engine, root)
    plan = _plan(engine, root)
    assert plan.oldest_kept_month == "2026-11"
    assert [m.month for m in plan.months] == ELIGIBLE_MONTHS
    planned = {f.file_path for m in plan.months for f in m.files}
    assert planned == {s.relative_path for s in data.eligible}
    assert plan.bytes == sum(s.size_bytes for s in data.eligible)
    reasons = {s.file_path: s.reason for m in plan.months for s in m.skipped}
    failed, pending, processing, unregistered = (s.relative_path for s in data.kept[:4])
    assert reasons[failed].startswith("FAILED")
    assert reasons[pending].startswith("PENDING")
    assert reasons[processing].startswith("PROCESSING")
    assert reasons[unregistered].startswith("not registered")
    assert len(reasons) == 4
    # One month kept instead of two: 2026-11 becomes eligible too.
    assert plan_retention(engine, root, keep_months=1, today=TODAY).months[-1].month == "2026-11"


def test_dry_run_changes_nothing(engine: Engine, root: PayloadRoot) -> None:
    _old_data(engine, root)
    before = _snapshot(engine, root)
    _plan(engine, root)
    assert _snapshot(engine, root) == before
    assert _archives(root) == []


def test_cleanup_archives_then_removes_exactly_the_eligible_files(engine: Engine, root: PayloadRoot) -> None:
    data = _old_data(engine, root)
    before = _rows(engine)
    loaded = _count(engine, properties)
    report = _cleanup(engine, root)
    assert report.ok, report.months
    assert report.deleted == len(data.eligible)
    assert report.bytes_deleted == sum(s.size_bytes for s in data.eligible)
    assert all(not s.path.exists() for s in data.eligible)
    _assert_untouched(engine, data, before)
    assert _count(engine, properties) == loaded
    rows = _rows(engine)
    for stored in data.eligible:
        row = rows[stored.relative_path]
        assert row["status"] == "COMPLETED"
        assert row["archived_at"] is not None and row["deleted_at"] is not None
        assert row["archive_name"].startswith(f"property_payloads_{stored.month}_")
        assert not (root.processed / stored.relative_path).exists()
    # One read-only archive per month, holding the files byte for byte and a manifest.
    archives = _archives(root)
    assert [a.name.split("_")[2] for a in archives] == ELIGIBLE_MONTHS
    for archive in archives:
        assert stat.S_IMODE(archive.stat().st_mode) == 0o444
        month = archive.name.split("_")[2]
        expected = [
            ManifestEntry.registered(data.ids[s.relative_path], s.relative_path, s.size_bytes, s.sha256)
            for s in data.by_month(month)
        ]
        assert sorted(verify_archive(archive, expected), key=lambda e: e.file_id) == expected
        with tarfile.open(archive, "r:gz") as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert {f["path"] for f in manifest["files"]} == {e.path for e in expected}
    # Status shows what retention did; verify no longer expects the deleted files.
    counts = {m.month: (m.completed, m.archived, m.deleted) for m in month_statuses(engine)}
    assert counts["2026-07"] == (3, 3, 3) and counts["2026-08"] == (2, 2, 2) and counts["2026-11"] == (2, 0, 0)
    verification = verify_files(engine, root)
    assert verification.ok and verification.checked == len(rows) - len(data.eligible)


def test_verify_skips_deleted_files_but_still_reports_lost_ones(engine: Engine, root: PayloadRoot) -> None:
    data = _old_data(engine, root)
    assert _cleanup(engine, root).ok
    lost = data.kept[-1]
    os.unlink(lost.path)
    report = verify_files(engine, root)
    assert [(p.file_path, p.problem) for p in report.problems] == [(lost.relative_path, "missing from disk")]


def _flip_a_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_archive_prevents_any_deletion(
    engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _old_data(engine, root)
    before = _snapshot(engine, root)
    write_archive = retention_apply.write_archive

    def corrupting_write(*args, **kwargs) -> str:  # type: ignore[no-untyped-def]
        name = write_archive(*args, **kwargs)
        _flip_a_byte(root.archive / name)
        return name

    monkeypatch.setattr(retention_apply, "write_archive", corrupting_write)
    report = _cleanup(engine, root)
    assert not report.ok
    assert [m.month for m in report.months] == ELIGIBLE_MONTHS
    for month in report.months:
        assert month.deleted == [] and month.archive_name is None
        [failure] = month.failures
        assert "does not verify" in failure.reason or "cannot be read back" in failure.reason
        assert "Nothing of this month was deleted" in failure.reason
    assert _snapshot(engine, root) == before
    assert all(s.path.exists() for s in data.eligible)
    assert _archives(root) == []


def test_file_changed_since_capture_keeps_its_whole_month(engine: Engine, root: PayloadRoot) -> None:
    data = _old_data(engine, root)
    tampered = data.by_month("2026-07")[0]
    _flip_a_byte(tampered.path)
    report = _cleanup(engine, root)
    assert not report.ok
    july = report.months[0]
    assert july.month == "2026-07" and july.deleted == []
    assert tampered.relative_path in july.failures[0].reason and "no longer matches" in july.failures[0].reason
    assert all(s.path.exists() for s in data.by_month("2026-07"))
    assert all(not s.path.exists() for s in data.eligible if s.month != "2026-07")
    assert [a.name.split("_")[2] for a in _archives(root)] == ELIGIBLE_MONTHS[1:]


def test_restore_brings_back_identical_files_that_verify_and_do_not_load_twice(
    engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    data = _old_data(engine, root)
    july = data.by_month("2026-07")
    originals = {s.relative_path: s.path.read_bytes() for s in july}
    loaded = _count(engine, properties)
    assert _cleanup(engine, root).ok
    report = restore_month(engine, root, "2026-07")
    assert report.ok and sorted(report.restored) == sorted(originals)
    for stored in july:
        assert stored.path.read_bytes() == originals[stored.relative_path]
        assert stat.S_IMODE(stored.path.stat().st_mode) == 0o444
        assert (root.processed / stored.relative_path).exists()
        row = _rows(engine)[stored.relative_path]
        assert row["deleted_at"] is None and row["archived_at"] is not None and row["archive_name"]
    assert verify_files(engine, root, "2026-07").checked == 3 and verify_files(engine, root).ok
    # Back on disk, the files are neither registered nor loaded a second time...
    assert register_unregistered(engine, root, "test", "2026-07").registered == []
    assert PayloadProcessor(engine, root).run(month="2026-07").outcomes == []
    assert _count(engine, properties) == loaded
    # ...and they load as they did the first time into an empty database.
    fresh = create_db_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    upgrade(fresh)
    try:
        assert len(register_unregistered(fresh, root, "test", "2026-07").registered) == 3
        assert PayloadProcessor(fresh, root).run().records_loaded == 15
    finally:
        fresh.dispose()
    # Restoring again is harmless; the next cleanup deletes the month again from the same archive.
    again = restore_month(engine, root, "2026-07")
    assert again.ok and again.restored == [] and len(again.already_present) == 3
    archives = _archives(root)
    second = _cleanup(engine, root)
    assert second.ok and sorted(second.months[0].deleted) == sorted(originals)
    assert _archives(root) == archives


def test_restore_refuses_to_overwrite_a_different_file(engine: Engine, root: PayloadRoot) -> None:
    data = _old_data(engine, root)
    assert _cleanup(engine, root).ok
    squatter = data.by_month("2026-07")[0].path
    squatter.parent.mkdir(parents=True, exist_ok=True)
    squatter.write_bytes(b"something else")
    report = restore_month(engine, root, "2026-07")
    assert not report.ok and len(report.restored) == 2
    [failure] = report.failures
    assert failure.file_path == data.by_month("2026-07")[0].relative_path and "differs" in failure.reason
    assert squatter.read_bytes() == b"something else"
    assert _rows(engine)[failure.file_path]["deleted_at"] is not None


def test_restore_of_a_month_without_archive_says_so(engine: Engine, root: PayloadRoot) -> None:
    data = _old_data(engine, root)
    assert not restore_month(engine, root, "2026-07").ok  # nothing archived yet
    assert _cleanup(engine, root, archive=False).ok
    report = restore_month(engine, root, "2026-07")
    assert not report.ok and report.restored == []
    assert {f.file_path for f in report.failures} == {s.relative_path for s in data.by_month("2026-07")}
    assert all("without an archive" in f.reason for f in report.failures)


def test_cleanup_twice_is_harmless(engine: Engine, root: PayloadRoot) -> None:
    data = _old_data(engine, root)
    plan = _plan(engine, root)
    assert apply_retention(engine, root, plan).ok
    after_first = _snapshot(engine, root)
    assert _plan(engine, root).files == 0
    assert _cleanup(engine, root).months == []
    assert apply_retention(engine, root, plan).months == []  # the same, now stale, plan
    assert _snapshot(engine, root) == after_first
    assert len(_archives(root)) == len(ELIGIBLE_MONTHS)
    assert all(not s.path.exists() for s in data.eligible)


class SimulatedCrash(Exception):
    """The process dying in the middle of a cleanup."""


def _assert_nothing_lost(engine: Engine, root: PayloadRoot, data: OldData) -> None:
    """Every eligible file is on disk, or inside a verified archive the database names (archive off: deleted_at)."""
    rows = _rows(engine)
    for stored in data.eligible:
        row = rows[stored.relative_path]
        if stored.path.exists():
            assert hashlib.sha256(stored.path.read_bytes()).hexdigest() == stored.sha256
        elif row["archive_name"] is not None:
            entry = ManifestEntry.registered(row["file_id"], stored.relative_path, stored.size_bytes, stored.sha256)
            verify_archive(root.archive / row["archive_name"], [entry])
        else:
            assert row["deleted_at"] is not None, f"{stored.relative_path} vanished without a record"


@pytest.mark.faults
@pytest.mark.parametrize("archive", [True, False], ids=["archive", "no-archive"])
@pytest.mark.parametrize("crash", ["before-unlink", "after-unlink"])
def test_crash_in_the_middle_of_cleanup_loses_nothing_and_a_rerun_completes(
    engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch, archive: bool, crash: str
) -> None:
    data = _old_data(engine, root)
    before = _rows(engine)
    remove = retention_apply._remove_original
    calls: list[Path] = []

    def crashing_remove(path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            if crash == "after-unlink":
                remove(path)
            raise SimulatedCrash(f"killed while deleting {path.name}")
        remove(path)

    monkeypatch.setattr(retention_apply, "_remove_original", crashing_remove)
    with pytest.raises(SimulatedCrash):
        _cleanup(engine, root, archive=archive)
    _assert_nothing_lost(engine, root, data)
    assert sum(not s.path.exists() for s in data.eligible) == (3 if crash == "after-unlink" else 2)
    monkeypatch.undo()

    report = _cleanup(engine, root, archive=archive)
    assert report.ok, report.months
    _assert_nothing_lost(engine, root, data)
    assert all(not s.path.exists() for s in data.eligible)
    rows = _rows(engine)
    assert all(rows[s.relative_path]["deleted_at"] is not None for s in data.eligible)
    healed = [p for m in report.months for p in m.healed]
    assert healed == ([calls[2].parent.name + "/" + calls[2].name] if archive and crash == "after-unlink" else [])
    assert len(_archives(root)) == (len(ELIGIBLE_MONTHS) if archive else 0)
    _assert_untouched(engine, data, before)


def test_no_archive_deletes_only_completed_files_and_records_it(engine: Engine, root: PayloadRoot) -> None:
    data = _old_data(engine, root)
    before = _rows(engine)
    report = _cleanup(engine, root, archive=False)
    assert report.ok and report.deleted == len(data.eligible)
    assert all(m.archive_name is None for m in report.months)
    assert _archives(root) == []
    rows = _rows(engine)
    for stored in data.eligible:
        assert not stored.path.exists()
        row = rows[stored.relative_path]
        assert row["deleted_at"] is not None and row["archived_at"] is None and row["archive_name"] is None
    _assert_untouched(engine, data, before)


# ── command line ────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def run(db_url: str, root: PayloadRoot):  # type: ignore[no-untyped-def]
    base = {"PROPERTY_PIPELINE_DB_URL": db_url, "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir)}

    def invoke(*args: str, **env: str) -> Result:
        return CliRunner().invoke(main, list(args), env={**base, **env}, catch_exceptions=False)

    return invoke


def _recent_data(engine: Engine, root: PayloadRoot) -> tuple[StoredPayload, StoredPayload, StoredPayload]:
    """(old COMPLETED, old FAILED, current COMPLETED) relative to the real clock: the CLI has no `today`."""
    now = datetime.now(UTC)
    old = now - timedelta(days=120)
    done = write_page(root, [make_record("old-1")], batch=1, captured_at=old)
    failed = write_page(root, [make_record("old-2")], batch=2, captured_at=old + timedelta(seconds=1))
    current = write_page(root, [make_record("new-1")], batch=3, captured_at=now)
    ids = {r.file_path: r.file_id for r in register_unregistered(engine, root, "test").registered}
    _claim(engine, ids[failed.relative_path])
    status.mark_failed(engine, ids[failed.relative_path], "test", "boom", processing_time_ms=1)
    PayloadProcessor(engine, root).run()
    return done, failed, current


def test_cli_dry_run_prints_the_plan_with_skip_reasons_and_changes_nothing(
    run, engine: Engine, root: PayloadRoot
) -> None:  # type: ignore[no-untyped-def]
    done, failed, _current = _recent_data(engine, root)
    before = _snapshot(engine, root)
    result = run("cleanup", "--dry-run")
    assert result.exit_code == 0, result.output
    assert done.month in result.stdout and "1 files" in result.stdout
    assert f"skipped {failed.relative_path} (file 2): FAILED" in result.stdout
    assert "dry run: nothing was changed" in result.stdout
    as_json = json.loads(run("cleanup", "--dry-run", "--json").stdout)
    assert as_json["result"] is None and as_json["plan"]["files"] == 1
    assert as_json["plan"]["months"][0]["skipped"][0]["reason"].startswith("FAILED")
    assert _snapshot(engine, root) == before


def test_cli_cleanup_then_restore(run, engine: Engine, root: PayloadRoot) -> None:  # type: ignore[no-untyped-def]
    done, failed, current = _recent_data(engine, root)
    result = run("cleanup")
    assert result.exit_code == 0, result.output
    assert f"1 archived into property_payloads_{done.month}_" in result.stdout
    assert not done.path.exists() and failed.path.exists() and current.path.exists()
    months = {m["month"]: m for m in json.loads(run("status", "--json").stdout)["months"]}
    assert (months[done.month]["archived"], months[done.month]["deleted"]) == (1, 1)
    assert run("verify").exit_code == 0
    restored = run("restore", "--month", done.month, "--json")
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["restored"] == [done.relative_path]
    assert done.path.read_bytes() and run("verify", "--month", done.month).exit_code == 0


def test_cli_exit_codes(run, engine: Engine, root: PayloadRoot) -> None:  # type: ignore[no-untyped-def]
    done, _failed, current = _recent_data(engine, root)
    assert run("restore").exit_code == 2
    assert run("cleanup", "--keep-months", "0").exit_code == 2
    nothing = run("restore", "--month", current.month)
    assert nothing.exit_code == 1 and "nothing to restore" in nothing.stderr
    _flip_a_byte(done.path)
    failed = run("cleanup")
    assert failed.exit_code == 1 and "no longer matches" in failed.stderr and done.path.exists()


def test_cli_archive_setting_comes_from_the_environment(run, engine: Engine, root: PayloadRoot) -> None:  # type: ignore[no-untyped-def]
    done, _failed, _current = _recent_data(engine, root)
    result = run("cleanup", "--json", PROPERTY_PIPELINE_ARCHIVE="false")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["archive"] is False and summary["result"]["deleted"] == 1
    assert not done.path.exists() and _archives(root) == []
