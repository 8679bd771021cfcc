"""What killed or concurrent commands leave behind is cleaned, and the folders keep telling the truth.

- `retry` puts the markers back to `pending/`, like the database.
- A `cleanup` killed while writing an archive, or a processor killed between its commit and
  dropping its copy, leaves temporaries that the next run of the same command removes.
- `restore` refuses one file whose place holds a link out of the data root, and restores the rest.
- Two `cleanup` commands at once: one per month at a time, honest counts, no orphan archive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from property_pipeline.cli import main
from property_pipeline.db.schema import batch_file_status
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import write_payload
from property_pipeline_tests.factories import make_page, make_record
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import REPO, cli_command, cli_env, poll
from property_pipeline_tests.faults.invariants import data_violations

pytestmark = pytest.mark.faults

OLD_MONTHS = ("2026-07", "2026-08")  # older than the two months cleanup keeps (now is 2026-12 or later)


def _cli(db_url: str, root: PayloadRoot, *args: str):  # type: ignore[no-untyped-def]
    env = {
        "PROPERTY_PIPELINE_DB_URL": db_url,
        "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir),
        "PROPERTY_PIPELINE_SETTLE_SECONDS": "0",  # the test's files are complete when written
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _old_month(root: PayloadRoot, month: str, files: int, per_file: int = 5, padding: int = 0) -> None:
    start = datetime.strptime(f"{month}-02", "%Y-%m-%d").replace(tzinfo=UTC)
    for batch in range(1, files + 1):
        records = [make_record(f"{month}-{batch}-{i}", legalDescription="x" * padding) for i in range(per_file)]
        write_payload(root, f"c{month[-2:]}", batch, make_page(records), start + timedelta(minutes=batch))


def test_retry_puts_the_markers_back_to_pending(db_url: str, engine: Engine, root: PayloadRoot) -> None:
    month = root.month_dir("2026-11")
    month.mkdir(parents=True)
    (month / "bad_batch1_20261101T000000Z.json").write_bytes(b'{"data": [')
    _cli(db_url, root, "register")
    assert _cli(db_url, root, "process").exit_code == 1
    processed = root.processed / "2026-11" / "bad_batch1_20261101T000000Z.json"
    assert json.loads(processed.read_text())["status"] == "FAILED"
    assert _cli(db_url, root, "retry", "--all-failed").exit_code == 0
    assert (root.pending / "2026-11" / "bad_batch1_20261101T000000Z.json").exists()
    assert not processed.exists(), "the marker says what the database says: PENDING"


KILL_CLEANUP_WHILE_ARCHIVING = textwrap.dedent(
    """
    import os, signal, sys, tarfile
    from property_pipeline.retention import archive as retention
    real = retention._add_payload
    calls = [0]

    def add_then_die(tar, root, payload):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT"]):
            tar.fileobj.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tar, root, payload)

    retention._add_payload = add_then_die
    from property_pipeline.cli import main
    sys.argv[0] = "property-pipeline"
    main()
    """
)


def test_a_cleanup_killed_while_archiving_leaves_nothing_that_the_next_cleanup_does_not_remove(
    db_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    _old_month(root, "2026-08", files=30, padding=2000)
    assert _cli(db_url, root, "register").exit_code == 0
    assert _cli(db_url, root, "process").exit_code == 0
    env = {**cli_env(db_url, root), "PYTHONPATH": str(REPO), "KILL_AT": "20"}
    killed = subprocess.run([sys.executable, "-c", KILL_CLEANUP_WHILE_ARCHIVING, "cleanup"], env=env, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    leftovers = list(root.archive.glob(".*.tmp"))
    assert leftovers, "the killed cleanup left its half-written archive"
    again = _cli(db_url, root, "cleanup", "--json")
    assert again.exit_code == 0, again.output
    assert list(root.archive.glob(".*")) == [], "the next cleanup removed its predecessor's temporary"
    assert len(list(root.archive.glob("*.tar.gz"))) == 1
    assert json.loads(again.stdout)["result"]["deleted"] == 30
    report_figure(f"cleanup_killed_mid_archive_{engine.dialect.name}", files=30, leftover_temporaries_after_next_run=0)


KILL_AFTER_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    from property_pipeline.store import markers
    markers.drop_processing_copy = lambda copy: os.kill(os.getpid(), signal.SIGKILL)
    from property_pipeline.cli import main
    sys.argv[0] = "property-pipeline"
    main()
    """
)


def test_a_processing_copy_left_by_a_killed_worker_is_removed_by_the_next_run(
    db_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    _old_month(root, "2026-11", files=3)
    _cli(db_url, root, "register")
    env = {**cli_env(db_url, root), "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_COMMIT, "process", "--workers", "1"], env=env, cwd=tmp_path
    )
    assert killed.returncode == -signal.SIGKILL
    (left,) = list(root.processing.iterdir())
    an_hour_ago = time.time() - 3600
    os.utime(left, (an_hour_ago, an_hour_ago))  # as if the next run came later; a fresh copy may be in use
    assert _cli(db_url, root, "process").exit_code == 0
    assert list(root.processing.iterdir()) == [], "the next process run removed the copy its predecessor left"
    assert data_violations(engine) == []


def test_restore_refuses_one_file_behind_a_link_out_of_the_root_and_restores_the_rest(
    db_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    _old_month(root, "2026-08", files=3)
    _cli(db_url, root, "register")
    _cli(db_url, root, "process")
    assert _cli(db_url, root, "cleanup").exit_code == 0
    with engine.connect() as conn:
        paths = list(
            conn.execute(select(batch_file_status.c.file_path).order_by(batch_file_status.c.file_id)).scalars()
        )
    outside = tmp_path / "outside.json"
    outside.write_text("not yours")
    root.month_dir("2026-08").mkdir(exist_ok=True)
    (root.payloads / paths[0]).symlink_to(outside)
    result = _cli(db_url, root, "restore", "--month", "2026-08", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert sorted(report["restored"]) == sorted(paths[1:])
    assert [failure["file_path"] for failure in report["failures"]] == [paths[0]]
    assert "link" in report["failures"][0]["reason"] or "outside" in report["failures"][0]["reason"]
    assert outside.read_text() == "not yours", "nothing written through the link"


@pytest.mark.slow
def test_two_cleanups_at_once_do_each_month_once_and_leave_no_orphan_archive(
    db_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    for month in OLD_MONTHS:
        _old_month(root, month, files=300, per_file=2)
    _cli(db_url, root, "register")
    assert _cli(db_url, root, "process").exit_code == 0
    env = cli_env(db_url, root)
    both = [
        subprocess.Popen(cli_command("cleanup", "--json"), env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    deleted = [json.loads(output)["result"]["deleted"] for output in outputs]
    assert sum(deleted) == 600, f"each file counted once across both commands: {deleted}"
    with engine.connect() as conn:
        referenced = set(conn.execute(select(batch_file_status.c.archive_name).distinct()).scalars())
    on_disk = {path.name for path in root.archive.glob("*.tar.gz")}
    assert on_disk == referenced and len(on_disk) == 2, (on_disk, referenced)
    report_figure(
        f"two_cleanups_at_once_{engine.dialect.name}",
        files=600,
        deleted_per_command=deleted,
        archives=len(on_disk),
        orphans=0,
    )


def test_a_cleanup_waits_for_a_restore_of_the_same_month(db_url: str, engine: Engine, root: PayloadRoot) -> None:
    """The month lock is shared by cleanup and restore: the second one waits, then finds the work done."""
    from property_pipeline.retention import month_lock

    _old_month(root, "2026-08", files=2)
    _cli(db_url, root, "register")
    _cli(db_url, root, "process")
    with month_lock(engine, "2026-08"):
        waiter = subprocess.Popen(
            cli_command("cleanup"), env=cli_env(db_url, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        poll(lambda: "waiting" in (waiter.stderr.readline() if waiter.stderr else ""), deadline_seconds=30)
        assert list(root.month_dir("2026-08").glob("*.json")), "nothing deleted while the lock is held elsewhere"
    assert waiter.wait(timeout=60) == 0
    assert list(root.payloads.glob("2026-08/*.json")) == [], "once the lock was free, the cleanup did its work"
