"""The command starts light: `--help` loads neither SQLAlchemy, Alembic, requests, Dagster nor pandas, and
`status` on a current database opens it without Alembic. Checked by what a real process imported, never by
how long it took (benchmarks/target_cli.py measures that)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from property_pipeline.db.engine import HEAD_REVISION, create_db_engine, current_revision, head_revision, upgrade

HEAVY = ("sqlalchemy", "alembic", "requests", "dagster", "pandas", "pyarrow", "psycopg", "property_pipeline.api")

# Runs the command as `property-pipeline ARGS...` would, then says which of HEAVY the process imported.
PROGRAM = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["property-pipeline", *json.loads(sys.argv[1])]
from property_pipeline.__main__ import run
try:
    run()
except SystemExit as done:
    code = done.code
loaded = sorted(name for name in heavy if name in sys.modules)
print("LOADED " + json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def _loaded(arguments: list[str], env: dict[str, str]) -> tuple[int, list[str], str]:
    """(exit status, the HEAVY modules the command imported, its stdout), with `env` as the pipeline's variables."""
    outside = {name: value for name, value in os.environ.items() if not name.startswith("PROPERTY_PIPELINE_")}
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, json.dumps(arguments), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**outside, **env},
    )
    line = next(line for line in run.stderr.splitlines() if line.startswith("LOADED "))
    outcome = json.loads(line.removeprefix("LOADED "))
    return int(outcome["code"] or 0), outcome["loaded"], run.stdout


@pytest.mark.parametrize("arguments", [["--help"], ["process", "--help"], ["capture", "--help"], ["export", "--help"]])
def test_help_imports_no_database_http_or_dagster_module(arguments: list[str], tmp_path: Path) -> None:
    code, loaded, output = _loaded(arguments, {"PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path)})
    assert code == 0
    assert "Usage: property-pipeline" in output
    assert loaded == []
    assert list(tmp_path.iterdir()) == []


def test_help_with_a_database_url_set_creates_nothing_and_imports_no_database_driver(tmp_path: Path) -> None:
    """`--help` never reads the settings; a subcommand's help checks PROPERTY_PIPELINE_DB_URL, with SQLAlchemy's
    URL parser (the one thing it loads), and opens nothing."""
    env = {"PROPERTY_PIPELINE_DB_URL": f"sqlite:///{tmp_path / 'p.db'}", "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path)}
    assert _loaded(["--help"], env)[:2] == (0, [])
    assert _loaded(["status", "--help"], env)[:2] == (0, ["sqlalchemy"])
    assert list(tmp_path.iterdir()) == []


def test_every_command_is_listed_by_help_without_importing_it(tmp_path: Path) -> None:
    code, loaded, output = _loaded(["--help"], {"PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path)})
    assert code == 0 and loaded == []
    for command in ("capture", "register", "process", "status", "verify", "retry", "reprocess", "cleanup", "export"):
        assert f"  {command} " in output


def test_status_on_a_current_database_opens_it_without_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    code, loaded, output = _loaded(
        ["status"], {"PROPERTY_PIPELINE_DB_URL": url, "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path)}
    )
    assert code == 0
    assert "no payload files registered yet" in output
    assert loaded == ["sqlalchemy"]


def test_status_on_an_older_schema_still_says_to_upgrade(tmp_path: Path) -> None:
    """The quick schema check falls back to Alembic's own reading: an older database is refused as before."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = create_db_engine(url)
    upgrade(engine, "0008_replay")
    engine.dispose()
    code, _loaded_modules, _output = _loaded(
        ["status"], {"PROPERTY_PIPELINE_DB_URL": url, "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path)}
    )
    assert code == 2


def test_the_start_up_schema_check_agrees_with_alembic(engine: Engine) -> None:
    """Commands skip Alembic when the stamped revision is HEAD_REVISION: it must be the newest migration."""
    assert HEAD_REVISION == head_revision()
    assert current_revision(engine) == HEAD_REVISION
