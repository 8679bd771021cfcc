"""Bad configuration and bad arguments: one line that names the culprit, exit 2, no traceback, no password.

Every `PROPERTY_PIPELINE_*` / `PROPERTY_API_*` variable is tried with values the pipeline cannot use,
and so are the arguments people mistype; read-only commands pointed at the wrong place create
nothing and say that nothing is there; Ctrl-C while the command starts is one line too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from property_pipeline.cli import main
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import REPO

pytestmark = pytest.mark.faults

SECRET = "s3cr3t-pw-do-not-show"

# (variable, value, a word the message must hold besides the variable's name)
BAD_SETTINGS = [
    ("PROPERTY_PIPELINE_LEASE_SECONDS", "0", "at least"),
    ("PROPERTY_PIPELINE_LEASE_SECONDS", "-5", "at least"),
    ("PROPERTY_PIPELINE_LEASE_SECONDS", "abc", "whole number"),
    ("PROPERTY_PIPELINE_LEASE_SECONDS", "99999999999999999999", "at most"),
    ("PROPERTY_PIPELINE_RETENTION_MONTHS", "0", "at least"),
    ("PROPERTY_PIPELINE_RETENTION_MONTHS", "two", "whole number"),
    ("PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES", "0", "at least"),
    ("PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES", "lots", "whole number"),
    ("PROPERTY_PIPELINE_PROCESS_WORKERS", "-1", "at least"),
    ("PROPERTY_PIPELINE_PROCESS_WORKERS", "100000", "at most"),
    ("PROPERTY_PIPELINE_SENSOR_MAX_FILES", "0", "at least"),
    ("PROPERTY_PIPELINE_PENDING_ALERT_SECONDS", "-1", "at least"),
    ("PROPERTY_PIPELINE_SETTLE_SECONDS", "soon", "whole number"),
    ("PROPERTY_PIPELINE_CLOCK_SKEW_SECONDS", "-3", "at least"),
    ("PROPERTY_PIPELINE_ARCHIVE", "maybe", "true or false"),
    ("PROPERTY_PIPELINE_SENSOR_AUTO_PROCESS", "2", "true or false"),
    ("PROPERTY_API_PAGE_SIZE", "0", "at least"),
    ("PROPERTY_API_PAGE_SIZE", "5000", "at most"),
    ("PROPERTY_API_MAX_ATTEMPTS", "0", "at least"),
    ("PROPERTY_API_PAGE_DEADLINE_SECONDS", "0", "at least"),
    ("PROPERTY_API_BASE_URL", "ftp://example.com", "http"),
    ("PROPERTY_API_BASE_URL", "not a url", "http"),
    ("PROPERTY_API_BASE_URL", "http://", "http"),
    ("PROPERTY_PIPELINE_ALERT_WEBHOOK_URL", "slack", "http"),
    ("PROPERTY_PIPELINE_DB_URL", "foo://bar", "sqlite"),
    ("PROPERTY_PIPELINE_DB_URL", "garbage", "sqlite"),
    ("PROPERTY_PIPELINE_DB_URL", f"mysql://admin:{SECRET}@db.example.com/pipeline", "postgresql"),
    ("PROPERTY_PIPELINE_DB_URL", f"postgresql://admin:{SECRET}@127.0.0.1:99999/pipeline", "port"),
]
COMMANDS = [["status"], ["process"], ["register"], ["verify"], ["cleanup", "--dry-run"], ["db", "upgrade"]]


def _env(tmp_path: Path, **changes: str) -> dict[str, str]:
    env = {
        "PROPERTY_PIPELINE_DB_URL": f"sqlite:///{tmp_path / 'p.db'}",
        "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs"),
        "PROPERTY_PIPELINE_CAMPAIGNS_FILE": str(tmp_path / "campaigns.yaml"),
    }
    env.update(changes)
    return env


def _one_clean_line(result: Result) -> str:
    """The one line a failing command printed; fails the test on a traceback, a password or several lines."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output and SECRET not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(("variable", "value", "says"), BAD_SETTINGS)
def test_a_setting_the_pipeline_cannot_use_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    for command in COMMANDS:
        result = CliRunner().invoke(main, command, env=_env(tmp_path, **{variable: value}))
        line = _one_clean_line(result)
        assert result.exit_code == 2, (command, result.output)
        assert variable in line and says in line, (command, line)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "p.db").exists(), "nothing was created"


def test_a_data_root_that_is_a_file_or_cannot_be_created_is_one_line_and_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "logs-file"
    a_file.write_text("not a folder")
    cases = {"a file": str(a_file), "unwritable": "/proc/1/property-pipeline-logs"}
    checked = 0
    for what, logs in cases.items():
        for command in (["register"], ["process"], ["capture", "--campaign", "x", "--criteria", '{"a": 1}']):
            result = CliRunner().invoke(main, command, env=_env(tmp_path, PROPERTY_PIPELINE_LOGS_DIR=logs))
            line = _one_clean_line(result)
            assert result.exit_code == 2, (what, command, result.output)
            assert "PROPERTY_PIPELINE_LOGS_DIR" in line, (what, line)
            checked += 1
    report_figure("bad_configuration", settings_cases=len(BAD_SETTINGS) * len(COMMANDS), data_root_cases=checked)


@pytest.mark.parametrize(
    "arguments",
    [
        ["status", "--month", "2026-13"],
        ["process", "--month", "26-11"],
        ["register", "--month", "../x"],
        ["verify", "--month", "2026-1"],
        ["retry", "--month", "2026-00"],
        ["restore", "--month", "٢٠٢٦-11"],
        ["process", "--workers", "0"],
        ["process", "--limit", "-1"],
        ["cleanup", "--keep-months", "0"],
        ["retry", "--file-id", "abc"],
        ["capture", "--campaign", "../etc", "--criteria", "{}"],
        ["capture", "--campaign", "x", "--criteria", "{not json"],
        ["capture", "--all", "--campaign", "x"],
        ["no-such-command"],
    ],
)
def test_a_mistyped_argument_is_one_line_and_exit_2(tmp_path: Path, arguments: list[str]) -> None:
    result = CliRunner().invoke(main, arguments, env=_env(tmp_path))
    _one_clean_line(result)
    assert result.exit_code == 2, result.output


def test_db_upgrade_against_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://admin:{SECRET}@127.0.0.1:1/pipeline"
    result = CliRunner().invoke(main, ["db", "upgrade"], env=_env(tmp_path, PROPERTY_PIPELINE_DB_URL=url))
    line = _one_clean_line(result)
    assert result.exit_code == 1 and "cannot use the database" in line, line


def test_read_only_commands_pointed_at_nothing_create_nothing_and_say_so(tmp_path: Path, postgres_url: str) -> None:
    missing_db = tmp_path / "typo" / "pipeline.db"
    missing_logs = tmp_path / "typo-logs"
    env = _env(
        tmp_path, PROPERTY_PIPELINE_DB_URL=f"sqlite:///{missing_db}", PROPERTY_PIPELINE_LOGS_DIR=str(missing_logs)
    )
    for command in (["status"], ["status", "--json"], ["verify"], ["cleanup", "--dry-run"]):
        result = CliRunner().invoke(main, command, env=env)
        line = _one_clean_line(result)
        assert result.exit_code == 2, (command, result.output)
        assert "no pipeline database" in line and "PROPERTY_PIPELINE_DB_URL" in line, line
    assert not missing_db.exists() and not missing_db.parent.exists() and not missing_logs.exists()

    # A PostgreSQL database without the pipeline's tables: the read-only commands do not create them.
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url

    empty = make_url(postgres_url).set(database=f"pp_empty_{os.getpid()}")
    admin = create_engine(make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{empty.database}"'))
    try:
        pg_env = _env(tmp_path, PROPERTY_PIPELINE_DB_URL=empty.render_as_string(hide_password=False))
        result = CliRunner().invoke(main, ["status"], env=pg_env)
        line = _one_clean_line(result)
        assert result.exit_code == 2 and "no pipeline tables" in line, line
        engine = create_engine(empty)
        assert inspect(engine).get_table_names() == [], "status created no table"
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{empty.database}" WITH (FORCE)'))
        admin.dispose()


# A Ctrl-C that lands in code a module builds with `exec` (dataclasses, namedtuple and SQLAlchemy do, while
# they are imported): under `python -m`, CPython 3.11 remembers that KeyboardInterrupt as unhandled even after
# the command caught it, and ends the process by SIGINT instead of the exit status the command chose.
_CTRL_C_INSIDE_EXEC = """
import os, sys

class _CtrlCWhileImporting:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["CTRL_C_WHILE_IMPORTING"]:
            exec("raise KeyboardInterrupt")
        return None

sys.meta_path.insert(0, _CtrlCWhileImporting())
"""


@pytest.mark.parametrize(
    "module",
    [
        "property_pipeline.cli",  # the command's own modules are being imported (caught in __main__)
        "property_pipeline.runtime",  # the command runs and imports what it needs (caught where click aborts)
    ],
)
def test_ctrl_c_inside_exec_still_exits_130(tmp_path: Path, module: str) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_CTRL_C_INSIDE_EXEC)
    env = {
        **os.environ,
        **_env(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]),
        "CTRL_C_WHILE_IMPORTING": module,
    }
    done = subprocess.run(
        [sys.executable, "-m", "property_pipeline", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130, (done.returncode, done.stderr)
    assert done.stderr.strip() == "interrupted (Ctrl-C): the command stopped", done.stderr


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3])
def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path: Path, delay: float) -> None:
    env = {**os.environ, **_env(tmp_path), "PYTHONPATH": str(REPO)}
    started = subprocess.Popen(
        [sys.executable, "-m", "property_pipeline", "status"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    finished_first = started.poll() is not None
    started.send_signal(signal.SIGINT)
    _out, err = started.communicate(timeout=60)
    frames = [line.strip() for line in err.splitlines() if line.strip().startswith("File ")]
    if frames and (
        all(frame.startswith('File "<frozen') for frame in frames)
        or any(frame.startswith('File "<frozen site>"') for frame in frames)
    ):
        # The signal came while CPython itself was still starting, before the package's first line: runpy
        # locating the package, or `site` running the environment's .pth files (the editable install's finder
        # imports pathlib; `site` either stops with that traceback or reports the line and goes on). No code
        # of ours can catch that. A faster start moves later samples into it.
        pytest.skip(f"SIGINT after {delay}s landed in the interpreter's own start-up, before any project code")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    if started.returncode == 130 or (not finished_first and "no pipeline database" not in err):
        assert started.returncode == 130, (started.returncode, err)
        assert len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    # Otherwise the command had already said its own one line (no database there) when the signal came.
