"""The property-pipeline command: the same truth as the core, with honest exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from property_pipeline.cli import main
from property_pipeline.db.engine import create_db_engine
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import write_pages


@pytest.fixture
def run(db_url: str, root: PayloadRoot):  # type: ignore[no-untyped-def]
    env = {"PROPERTY_PIPELINE_DB_URL": db_url, "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir)}

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def test_register_process_status_verify_round_trip(run, root: PayloadRoot) -> None:  # type: ignore[no-untyped-def]
    stored = write_pages(root, files=3, per_file=7)
    registered = run("register", "--json")
    assert registered.exit_code == 0, registered.output
    assert json.loads(registered.stdout)["registered"] == [s.relative_path for s in stored]

    processed = run("process", "--json")
    assert processed.exit_code == 0, processed.output
    summary = json.loads(processed.stdout)
    assert (summary["files_completed"], summary["files_failed"], summary["records_loaded"]) == (3, 0, 21)

    status = run("status", "--json")
    months = json.loads(status.stdout)["months"]
    assert [(m["month"], m["completed"], m["records_loaded"]) for m in months] == [("2026-11", 3, 21)]
    table = run("status")
    assert "2026-11" in table.stdout and "completed" in table.stdout

    verified = run("verify")
    assert verified.exit_code == 0 and "3 files checked, 0 problems" in verified.stdout


def test_verify_and_process_exit_1_when_a_file_was_tampered_with(run, root: PayloadRoot) -> None:  # type: ignore[no-untyped-def]
    stored = write_pages(root, files=2, per_file=3)
    run("register")
    os.chmod(stored[0].path, stat.S_IRUSR | stat.S_IWUSR)
    stored[0].path.write_bytes(stored[0].path.read_bytes().replace(b"Austin", b"Boston", 1))
    verified = run("verify", "--json")
    assert verified.exit_code == 1
    problems = json.loads(verified.stdout)["problems"]
    assert [(p["file_id"], p["problem"][:17]) for p in problems] == [(1, "checksum mismatch")]
    processed = run("process")
    assert processed.exit_code == 1
    assert "checksum mismatch" in processed.stderr and "retry" in processed.stderr
    status = run("status")
    assert "FAILED (1)" in status.stdout
    retried = run("retry", "--file-id", "1", "--file-id", "99")
    assert retried.exit_code == 1 and "file 1: FAILED -> PENDING" in retried.stdout and "99" in retried.stderr


def test_usage_errors_exit_2(run) -> None:  # type: ignore[no-untyped-def]
    assert run("retry").exit_code == 2
    assert run("status", "--month", "2026-13").exit_code == 2
    assert run("process", "--limit", "0").exit_code == 2
    assert run("no-such-command").exit_code == 2


def test_bad_setting_is_a_usage_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["status"], env={"PROPERTY_PIPELINE_LEASE_SECONDS": "soon"})
    assert result.exit_code == 2 and "PROPERTY_PIPELINE_LEASE_SECONDS" in result.output


def test_db_upgrade_is_idempotent_and_other_commands_create_the_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {"PROPERTY_PIPELINE_DB_URL": url, "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs")}
    # A command that writes creates the schema (`status` only looks: it creates nothing, see test_bad_configuration).
    assert CliRunner().invoke(main, ["register"], env=env).exit_code == 0
    status = CliRunner().invoke(main, ["status"], env=env)
    assert status.exit_code == 0 and "no payload files registered" in status.stdout
    upgrade = CliRunner().invoke(main, ["db", "upgrade"], env=env)
    assert upgrade.exit_code == 0 and "already at the newest schema" in upgrade.stdout


def test_commands_refuse_an_older_schema_until_db_upgrade(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0000_older')"))
    engine.dispose()
    env = {"PROPERTY_PIPELINE_DB_URL": url, "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs")}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 2 and "property-pipeline db upgrade" in result.output


def test_unreachable_database_is_reported_without_a_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "PROPERTY_PIPELINE_DB_URL": "postgresql://nobody:secret@127.0.0.1:1/none",
        "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "property_pipeline", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "cannot use the database" in result.stderr and "Traceback" not in result.stderr
    assert "secret" not in result.stderr
