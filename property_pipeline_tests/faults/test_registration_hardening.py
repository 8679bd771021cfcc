"""Registration that a careless or unlucky drop-in cannot fool.

A file is registered only once it is complete and stable; an empty or unparsable file is never
"a duplicate" of anything; names from the future or from another month than their folder are
refused; two registrars at once record each content once (a database constraint); a month folder
linked to another month is refused; registered drop-ins are made read-only.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from property_pipeline.cli import main
from property_pipeline.db.schema import batch_file_status, file_properties, properties
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import format_timestamp, month_of
from property_pipeline.store.publish import sha256_file
from property_pipeline_tests.factories import make_page, make_record
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import cli_command, cli_env
from property_pipeline_tests.faults.invariants import data_violations

pytestmark = pytest.mark.faults

MONTH = "2026-11"


def _cli(db_url: str, root: PayloadRoot, *args: str, **env: str):  # type: ignore[no-untyped-def]
    base = {"PROPERTY_PIPELINE_DB_URL": db_url, "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir), **env}
    return CliRunner().invoke(main, list(args), env=base, catch_exceptions=False)


def _rows(engine: Engine):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(batch_file_status).order_by(batch_file_status.c.file_id)).all()


def _copy_slowly(source: bytes, target: Path, pieces: int, pause: float) -> None:
    """Write `source` to `target` the way a network copy does: created first, then filled piece by piece."""
    step = max(1, len(source) // pieces)
    with open(target, "wb") as out:
        for start in range(0, len(source), step):
            out.write(source[start : start + step])
            out.flush()
            time.sleep(pause)


def test_files_being_copied_in_are_registered_only_once_complete(
    db_url: str, engine: Engine, root: PayloadRoot
) -> None:
    month = root.month_dir(MONTH)
    month.mkdir(parents=True, exist_ok=True)
    bodies = {
        f"dropin_batch{n}_202611{n + 1:02d}T000000Z.json": make_page([make_record(f"copy-{n}-{i}") for i in range(30)])
        for n in range(1, 13)
    }
    copier = threading.Thread(
        target=lambda: [_copy_slowly(body, month / name, pieces=6, pause=0.02) for name, body in bodies.items()]
    )
    copier.start()
    rounds = 0
    while copier.is_alive():  # another system copies files in while `register` runs, again and again
        assert _cli(db_url, root, "register").exit_code == 0
        rounds += 1
    copier.join()
    assert _cli(db_url, root, "register").exit_code == 0
    rows = _rows(engine)
    assert sorted(row.file_path for row in rows) == sorted(f"{MONTH}/{name}" for name in bodies)
    for row in rows:
        on_disk, size = sha256_file(root.resolve(row.file_path))
        assert (row.checksum_sha256, row.file_size_bytes) == (on_disk, size), f"{row.file_path} registered partial"
        assert row.duplicate_of_file_id is None and row.status == "PENDING"
    report = PayloadProcessor(engine, root).run()
    assert (report.completed, report.failed, report.records_loaded) == (12, 0, 360)
    report_figure(
        f"registration_while_copying_{engine.dialect.name}", files=12, register_runs=rounds, partial_registered=0
    )


def test_an_incomplete_file_waits_for_the_settling_interval_and_empty_files_are_never_duplicates(
    db_url: str, engine: Engine, root: PayloadRoot
) -> None:
    month = root.month_dir(MONTH)
    month.mkdir(parents=True, exist_ok=True)
    page = make_page([make_record("whole-1")])
    (month / "drop_batch1_20261101T000000Z.json").write_bytes(page[: len(page) // 2])
    (month / "drop_batch2_20261101T000001Z.json").write_bytes(b"")
    (month / "drop_batch3_20261101T000002Z.json").write_bytes(b"")
    held = _cli(db_url, root, "register", "--json", PROPERTY_PIPELINE_SETTLE_SECONDS="1")
    assert held.exit_code == 0, held.output
    assert len(json.loads(held.stdout)["held_back"]) == 3 and _rows(engine) == []
    time.sleep(1.2)  # unchanged for the settling interval: registered, to fail on their own with a reason
    registered = _cli(db_url, root, "register", "--json", PROPERTY_PIPELINE_SETTLE_SECONDS="1")
    assert len(json.loads(registered.stdout)["registered"]) == 3
    rows = _rows(engine)
    assert [row.duplicate_of_file_id for row in rows] == [None, None, None], "an empty file duplicates nothing"
    assert [row.status for row in rows] == ["PENDING"] * 3
    report = PayloadProcessor(engine, root).run()
    assert (report.completed, report.failed) == (0, 3)
    assert all("not valid JSON" in (outcome.error or "") for outcome in report.outcomes)


def test_names_from_the_future_or_from_another_month_are_refused_with_the_reason(
    db_url: str, engine: Engine, root: PayloadRoot
) -> None:
    soon = datetime.now(UTC) + timedelta(days=2)
    near = f"drop_batch1_{format_timestamp(soon, microseconds=False)}.json"
    root.month_dir(month_of(soon)).mkdir(parents=True, exist_ok=True)
    (root.month_dir(month_of(soon)) / near).write_bytes(make_page([make_record("p-1", estimatedValue=1)]))
    far = root.month_dir("2099-12")
    far.mkdir(parents=True)
    (far / "drop_batch3_20991231T000000Z.json").write_bytes(make_page([make_record("p-3", estimatedValue=1)]))
    august = root.month_dir("2026-08")
    august.mkdir(parents=True)
    (august / "drop_batch2_20261201T000000Z.json").write_bytes(make_page([make_record("p-2")]))
    result = _cli(db_url, root, "register", "--json")
    assert result.exit_code == 1, result.output
    reasons = {Path(item["path"]).name: item["reason"] for item in json.loads(result.stdout)["skipped"]}
    assert "future" in reasons[near]
    assert "future" in reasons["drop_batch3_20991231T000000Z.json"]
    assert "2026-12" in reasons["drop_batch2_20261201T000000Z.json"]
    assert "2026-08" in reasons["drop_batch2_20261201T000000Z.json"]
    assert _rows(engine) == []


@pytest.mark.slow
def test_two_register_commands_at_once_register_each_content_once(
    db_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    """Identical files in two month folders, two `register --month` at once: one original per content."""
    files_per_month = 300
    for month, campaign in (("2026-10", "left"), ("2026-11", "right")):
        folder = root.month_dir(month)
        folder.mkdir(parents=True)
        for n in range(1, files_per_month + 1):
            body = make_page([make_record(f"same-{n}-{i}") for i in range(10)], result_index=n)
            (folder / f"{campaign}_batch{n}_{month.replace('-', '')}01T000000Z.json").write_bytes(body)
    env = cli_env(db_url, root)
    both = [
        subprocess.Popen(cli_command("register", "--month", month), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
        for month in ("2026-10", "2026-11")
    ]
    assert [process.wait(timeout=300) for process in both] == [0, 0]
    rows = _rows(engine)
    originals = [row for row in rows if row.duplicate_of_file_id is None]
    assert len(rows) == 2 * files_per_month
    assert len(originals) == files_per_month, "each content has exactly one original"
    assert len({row.checksum_sha256 for row in originals}) == files_per_month
    PayloadProcessor(engine, root).run()
    with engine.connect() as conn:
        links = conn.execute(select(func.count()).select_from(file_properties)).scalar_one()
        loaded = conn.execute(select(func.count()).select_from(properties)).scalar_one()
    assert links == loaded == 10 * files_per_month, "no content delivered twice"
    assert data_violations(engine) == []
    report_figure(
        f"two_registrars_at_once_{engine.dialect.name}",
        files=2 * files_per_month,
        originals=len(originals),
        link_rows=links,
        properties=loaded,
        double_loads=0,
    )


def test_a_month_folder_linked_to_another_month_is_refused_and_never_deleted_through(
    db_url: str, engine: Engine, root: PayloadRoot
) -> None:
    current = root.month_dir("2026-12")
    current.mkdir(parents=True)
    (current / "cur_batch1_20261201T000000Z.json").write_bytes(make_page([make_record("cur-1")]))
    (root.payloads / "2026-08").symlink_to(current, target_is_directory=True)
    result = _cli(db_url, root, "register", "--json")
    assert result.exit_code == 1
    skipped = json.loads(result.stdout)["skipped"]
    assert any("2026-08" in item["path"] and "symbolic link" in item["reason"] for item in skipped), skipped
    assert [row.file_path for row in _rows(engine)] == ["2026-12/cur_batch1_20261201T000000Z.json"]

    # A month registered as a real folder and later replaced by a link: cleanup deletes nothing through it.
    (root.payloads / "2026-08").unlink()
    august = root.month_dir("2026-08")
    august.mkdir()
    (august / "old_batch1_20260801T000000Z.json").write_bytes(make_page([make_record("old-1")]))
    assert _cli(db_url, root, "register").exit_code == 0
    assert _cli(db_url, root, "process").exit_code == 0
    elsewhere = root.payloads / "2026-12"
    os.replace(august / "old_batch1_20260801T000000Z.json", elsewhere / "old_batch1_20260801T000000Z.json")
    august.rmdir()
    (root.payloads / "2026-08").symlink_to(elsewhere, target_is_directory=True)
    cleaned = _cli(db_url, root, "cleanup", "--no-archive", "--json")
    assert (elsewhere / "old_batch1_20260801T000000Z.json").exists(), "a file reached through a link is never deleted"
    assert (elsewhere / "cur_batch1_20261201T000000Z.json").exists()
    assert cleaned.exit_code == 1 and "link" in cleaned.output


def test_registered_drop_ins_are_made_read_only(db_url: str, engine: Engine, root: PayloadRoot) -> None:
    month = root.month_dir(MONTH)
    month.mkdir(parents=True)
    dropped = month / "drop_batch1_20261101T000000Z.json"
    dropped.write_bytes(make_page([make_record("ro-1")]))
    dropped.chmod(0o664)
    assert _cli(db_url, root, "register").exit_code == 0
    assert stat.S_IMODE(dropped.stat().st_mode) & 0o222 == 0, "registered originals are read-only"
