"""reprocess, discard, retry of a discard, digest, rebuild and restore --reprocess from the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from property_pipeline.cli import main
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import make_record, write_page


@pytest.fixture
def env(db_url: str, root: PayloadRoot) -> dict[str, str]:
    # Files written a moment ago register at once (the truncated one is not held back to settle).
    return {
        "PROPERTY_PIPELINE_DB_URL": db_url,
        "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir),
        "PROPERTY_PIPELINE_SETTLE_SECONDS": "0",
    }


def _run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _pages(root: PayloadRoot) -> int:
    """Two files in October, two in November (one truncated); the truncated one's batch number."""
    for month, batch in ((10, 1), (10, 2), (11, 1)):
        records = [make_record(f"{month}-{batch}-{i}") for i in range(4)] + [make_record("shared", bedrooms=month)]
        write_page(root, records, batch=batch, captured_at=datetime(2026, month, 2, 8, batch, tzinfo=UTC))
    truncated = write_page(root, [make_record("lost")], batch=2, captured_at=datetime(2026, 11, 2, 9, tzinfo=UTC))
    truncated.path.chmod(0o644)
    truncated.path.write_bytes(truncated.path.read_bytes()[:25])
    return 4


def _months(env: dict[str, str]) -> dict[str, dict[str, int]]:
    status = _run(env, "status", "--json")
    assert status.exit_code == 0, status.output
    return {m["month"]: m for m in json.loads(status.stdout)["months"]}


def test_a_new_users_replay_tour(env: dict[str, str], root: PayloadRoot, tmp_path: Path) -> None:
    hopeless = _pages(root)
    assert _run(env, "register").exit_code == 0
    assert _run(env, "process").exit_code == 1  # the truncated file FAILED
    loaded = json.loads(_run(env, "digest", "--json").stdout)

    # Usage mistakes are refused before anything changes.
    assert _run(env, "reprocess", "--reason", "x").exit_code == 2
    assert _run(env, "reprocess", "--campaign", "camp-1", "--reason", "x").exit_code == 2
    assert _run(env, "reprocess", "--month", "2026-11", "--reason", "  ").exit_code == 2
    assert _run(env, "reprocess", "--month", "2026-11").exit_code == 2  # --reason is required

    dry = _run(env, "reprocess", "--month", "2026-10", "--reason", "mapping fixed", "--dry-run", "--json")
    assert dry.exit_code == 0 and [f[0] for f in json.loads(dry.stdout)["to_reprocess"]] == [1, 2]
    assert _months(env)["2026-10"]["completed"] == 2

    again = _run(env, "reprocess", "--month", "2026-10", "--reason", "mapping fixed", "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["reprocessed"], summary["files_completed"], summary["records_loaded"]) == ([1, 2], 2, 10)
    assert json.loads(_run(env, "digest", "--json").stdout) == loaded
    by_id = _run(env, "reprocess", "--file-id", "3", "--file-id", "99", "--reason", "one file")
    assert by_id.exit_code == 1 and "file 99: not registered" in by_id.stderr

    # The hopeless file: discarded with a reason, shown as discarded, taken back by retry, discarded again.
    assert _run(env, "discard", "--file-id", str(hopeless)).exit_code == 2  # --reason is required
    discarded = _run(env, "discard", "--file-id", str(hopeless), "--reason", "the API will not serve it again")
    assert discarded.exit_code == 0 and f"file {hopeless}: FAILED -> DISCARDED" in discarded.stdout
    assert (_months(env)["2026-11"]["failed"], _months(env)["2026-11"]["discarded"]) == (0, 1)
    assert "discarded" in _run(env, "status").stdout
    assert _run(env, "discard", "--file-id", "1", "--reason", "no").exit_code == 1  # COMPLETED: not FAILED
    retried = _run(env, "retry", "--file-id", str(hopeless))
    assert retried.exit_code == 0 and f"file {hopeless}: DISCARDED -> PENDING" in retried.stdout
    assert _run(env, "process").exit_code == 1
    assert _run(env, "discard", "--file-id", str(hopeless), "--reason", "still truncated").exit_code == 0

    # A rebuild into a new database gives the same digest; the digest can be asked per month.
    rebuilt_url = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    rebuilt = _run(env, "rebuild", "--into", rebuilt_url, "--json")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.stdout)["discarded_carried_over"] == 1
    rebuilt_env = {**env, "PROPERTY_PIPELINE_DB_URL": rebuilt_url}
    assert json.loads(_run(rebuilt_env, "digest", "--json").stdout) == loaded
    november = _run(env, "digest", "--month", "2026-11")
    assert november.exit_code == 0 and "2026-11" in november.stdout and loaded["sha256"] not in november.stdout
    refused = _run(env, "rebuild", "--into", env["PROPERTY_PIPELINE_DB_URL"])
    assert refused.exit_code == 2 and "the target is the source" in refused.stderr


def test_restore_then_reprocess_in_one_command(env: dict[str, str], root: PayloadRoot) -> None:
    _pages(root)
    _run(env, "register")
    _run(env, "process")
    loaded = json.loads(_run(env, "digest", "--json").stdout)
    cleanup = _run(env, "cleanup", "--keep-months", "1")  # today is in December: October and November go
    assert cleanup.exit_code == 0, cleanup.output
    needs_restore = _run(env, "reprocess", "--month", "2026-10", "--reason", "rule fixed")
    assert needs_restore.exit_code == 1 and "restore its month first" in needs_restore.stderr

    restored = _run(env, "restore", "--month", "2026-10", "--reprocess", "--json")
    assert restored.exit_code == 0, restored.output
    summary = json.loads(restored.stdout)
    assert len(summary["restore"]["restored"]) == 2 and summary["reprocessed"] == [1, 2]
    assert json.loads(_run(env, "digest", "--json").stdout) == loaded
