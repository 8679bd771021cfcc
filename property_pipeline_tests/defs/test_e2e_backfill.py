"""End to end: the real dagster-webserver and dagster-daemon on PostgreSQL storage run backfills of `properties`.

Both documented ways to retry failed months are used: a backfill of the asset launched the way the
UI launches it (GraphQL `launchPartitionBackfill`, two months, run config `include_failed: true`),
and `dagster job backfill -j retry_failed_months` from the command line (a third month). The months
hold PENDING files and files that FAILED earlier and have been fixed since. Afterwards every file is
COMPLETED and every run succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.schema import batch_file_status
from property_pipeline.db.schema import properties as properties_table
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import StoredPayload
from property_pipeline_tests.conftest import TABLES
from property_pipeline_tests.defs.conftest import statuses, write_month

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UI_MONTHS = ["2026-02", "2026-03"]
CLI_MONTH = "2026-04"
CLI_BACKFILL = [
    "job",
    "backfill",
    "-w",
    "workspace.yaml",
    "-j",
    "retry_failed_months",
    "--partitions",
    CLI_MONTH,
    "--noprompt",
]
STARTUP_TIMEOUT = 120
BACKFILL_TIMEOUT = 180
TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
  }
}
"""
PROGRESS = """
{
  partitionBackfillsOrError { ... on PartitionBackfills { results { id status } } }
  runsOrError { ... on Runs { results { runId jobName status tags { key value } } } }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process_group(
    command: list[str], env: dict[str, str], log: Path, *, cwd: Path = REPO
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a command in its own process group; stop the whole group (SIGTERM, then SIGKILL) on the way out."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue


def graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        document = json.loads(response.read())
    assert "errors" not in document, document["errors"]
    return document["data"]


def wait_until_serving(port: int, webserver: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /server_info: the log says "Serving" even when the port is taken."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        assert webserver.poll() is None, f"dagster-webserver exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver did not answer within {STARTUP_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def wait_for_backfills(port: int, runs_expected: int, logs: list[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    """(backfill statuses, runs) once every backfill is done and every run has finished."""
    deadline = time.monotonic() + BACKFILL_TIMEOUT
    while time.monotonic() < deadline:
        data = graphql(port, PROGRESS, {})
        backfills = [b["status"] for b in data["partitionBackfillsOrError"]["results"]]
        runs = data["runsOrError"]["results"]
        settled = backfills and not {"REQUESTED", "CANCELING", "FAILING"} & set(backfills)
        if settled and len(runs) == runs_expected and all(run["status"] in TERMINAL_RUN_STATUSES for run in runs):
            return backfills, runs
        time.sleep(1)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    pytest.fail(f"backfills not finished within {BACKFILL_TIMEOUT}s:\n{tails}")


def fail_once(engine: Engine, root: PayloadRoot, stored: StoredPayload) -> None:
    """The file FAILED in an earlier run (it was missing then) and has been put back since."""
    with engine.connect() as conn:
        file_id = conn.execute(
            select(batch_file_status.c.file_id).where(batch_file_status.c.file_path == stored.relative_path)
        ).scalar_one()
    hidden = stored.path.with_name(".restored-later")
    stored.path.rename(hidden)
    (outcome,) = PayloadProcessor(engine, root).run(file_ids=[file_id]).outcomes
    hidden.rename(stored.path)
    assert outcome.status == "FAILED"


def prepare_pipeline(postgres_url: str, root: PayloadRoot) -> dict[str, str]:
    """Three months of files on an empty pipeline database: PENDING ones, and ones that FAILED and were fixed."""
    engine = create_db_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        write_month(root, "2026-02", files=3, per_file=10)
        march = write_month(root, "2026-03", files=3, per_file=10)
        april = write_month(root, CLI_MONTH, files=2, per_file=10)
        register_unregistered(engine, root, "e2e")
        fail_once(engine, root, march[0])
        fail_once(engine, root, april[0])
        return statuses(engine)
    finally:
        engine.dispose()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_backfills_retry_failed_months_on_the_real_webserver_and_daemon_with_postgres_storage(
    postgres_url: str, dagster_pg_env: dict[str, str], tmp_path: Path
) -> None:
    started = time.monotonic()
    root = PayloadRoot(tmp_path / "logs")
    root.ensure_folders()
    before = prepare_pipeline(postgres_url, root)
    assert sorted(before.values()) == ["FAILED"] * 2 + ["PENDING"] * 6

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.postgres.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        **dagster_pg_env,
        "DAGSTER_HOME": str(home),
        "PROPERTY_PIPELINE_DB_URL": postgres_url,
        "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir),
        "PROPERTY_PIPELINE_SENSOR_AUTO_PROCESS": "false",  # the sensor runs, but requests no run of its own
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    port = free_port()
    logs = [tmp_path / "webserver.log", tmp_path / "daemon.log"]
    with ExitStack() as stack:
        webserver = stack.enter_context(
            process_group(
                [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                env,
                logs[0],
            )
        )
        wait_until_serving(port, webserver, logs[0])

        launched = graphql(
            port,
            LAUNCH,
            {
                "params": {
                    "assetSelection": [{"path": ["properties"]}],
                    "partitionNames": UI_MONTHS,
                    "runConfigData": {"ops": {"properties": {"config": {"include_failed": True}}}},
                    "title": "retry failed months (e2e)",
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        cli = subprocess.run(
            [str(BIN / "dagster"), *CLI_BACKFILL],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        # The months' files FAILED outside Dagster: month_state_sensor would launch record_month_state runs
        # for them (test_month_sensor.py tests that), racing the retries. This test is about the backfills.
        stopped = subprocess.run(
            [str(BIN / "dagster"), "sensor", "stop", "-w", "workspace.yaml", "month_state_sensor"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        # Backfill iterations are 30 s apart; a daemon started now picks both backfills up in its first one.
        stack.enter_context(process_group([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, logs[1]))
        backfills, runs = wait_for_backfills(port, len(UI_MONTHS) + 1, logs)

    print(f"\nend-to-end backfills of {len(UI_MONTHS) + 1} months: {time.monotonic() - started:.1f}s in all")
    assert sorted(backfills) == ["COMPLETED", "COMPLETED_SUCCESS"]  # a job backfill ends COMPLETED once submitted
    assert [run["status"] for run in runs] == ["SUCCESS"] * 3
    by_partition = {
        tag["value"]: run["jobName"] for run in runs for tag in run["tags"] if tag["key"] == "dagster/partition"
    }
    assert by_partition == {"2026-02": "__ASSET_JOB", "2026-03": "__ASSET_JOB", CLI_MONTH: "retry_failed_months"}

    engine = create_db_engine(postgres_url)
    try:
        after = statuses(engine)
        assert set(after) == set(before) and set(after.values()) == {"COMPLETED"}
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(properties_table)).scalar_one() == 80
    finally:
        engine.dispose()
