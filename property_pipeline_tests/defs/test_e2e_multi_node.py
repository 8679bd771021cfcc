"""End to end across three nodes that share only PostgreSQL and the bucket.

Three groups of processes stand for three machines, each with its own empty working directory and no
shared folder: node A captures from the sandbox API into the bucket (`property-pipeline capture`, which
registers its own pages); node B runs a Dagster code server (`dagster code-server start`), the daemon
and the webserver on PostgreSQL instance storage: its registration sensor registers the objects another
system dropped into an old month and requests that month's processing run, and a backfill of the
captured month, launched the way the UI launches it, processes node A's pages; node C runs `cleanup`
of the old month and `restore`. Checked afterwards: every file
COMPLETED and loaded once, every object's bytes equal to its registered SHA-256, the archive's
members and manifest equal to the database, every Dagster run succeeded, and the months' partitions
of `properties` materialized.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from property_pipeline.api.sandbox import SandboxConfig, SandboxServer
from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.schema import batch_file_status
from property_pipeline.db.schema import properties as properties_table
from property_pipeline.defs.jobs import processing_job
from property_pipeline.retention.archive import MANIFEST_NAME
from property_pipeline.store.s3 import S3Store
from property_pipeline_tests.conftest import TABLES, s3_environment
from property_pipeline_tests.defs.test_e2e_backfill import (
    LAUNCH,
    REPO,
    free_port,
    graphql,
    process_group,
    wait_until_serving,
)
from property_pipeline_tests.factories import make_record, write_page
from property_pipeline_tests.s3server import MotoServer

BIN = Path(sys.executable).parent
OLD_MONTH = "2026-02"  # older than the two months cleanup keeps, and a partition of the Dagster assets
RECORDS = 900  # three pages of 400, 400 and 100
SETTLE_TIMEOUT = 240
RUNS = """
{ runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }
"""
PARTITIONS = """
{ assetNodeOrError(assetKey: {path: ["properties"]}) {
    ... on AssetNode { assetPartitionStatuses {
      ... on TimePartitionStatuses { ranges { status startKey endKey } } } } } }
"""


def node(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "property_pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_nodes_sharing_only_postgres_and_the_bucket_capture_register_process_archive_and_restore(
    postgres_url: str, dagster_pg_env: dict[str, str], s3_server: MotoServer, s3_store: S3Store, tmp_path: Path
) -> None:
    engine = create_db_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    shared = {
        **os.environ,
        **s3_environment(s3_server.url),
        "PROPERTY_PIPELINE_DB_URL": postgres_url,
        "PROPERTY_PIPELINE_PAYLOADS_URL": f"s3://{s3_store.bucket}/landing",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    shared.pop("PROPERTY_API_KEY", None)
    shared.pop("PROPERTY_PIPELINE_LOGS_DIR", None)
    a, b, c = node(tmp_path, "node-a"), node(tmp_path, "node-b"), node(tmp_path, "node-c")

    # Another system dropped an old month's pages into the bucket earlier (not registered anywhere yet).
    old = [
        write_page(
            s3_store,
            [make_record(f"old-{i}-{j}") for j in range(5)],
            campaign="legacy",
            batch=i,
            captured_at=datetime(2026, 2, 3, i, tzinfo=UTC),
        )
        for i in range(1, 4)
    ]

    # Node A: capture from the sandbox API (serving from the test process, reached over loopback).
    with SandboxServer(SandboxConfig(records=RECORDS, seed=11)) as sandbox:
        env_a = {**shared, "PROPERTY_API_BASE_URL": sandbox.base_url}
        run_cli(a, env_a, "capture", "--campaign", "north", "--criteria", json.dumps({"records": RECORDS}))
    assert sorted(os.listdir(a)) == []  # nothing written on node A's disk

    # Node B: code server, daemon and webserver on PostgreSQL instance storage; the sensor registers and asks
    # for a processing run of each month that got files.
    home = b / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.postgres.yaml", home / "dagster.yaml")
    grpc_port, ui_port = free_port(), free_port()
    (b / "workspace.yaml").write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {grpc_port}\n"
        "      location_name: property_pipeline\n"
    )
    env_b = {
        **shared,
        **dagster_pg_env,
        "DAGSTER_HOME": str(home),
        "PROPERTY_PIPELINE_SENSOR_AUTO_PROCESS": "true",
    }
    logs = [b / "code-server.log", b / "webserver.log", b / "daemon.log"]
    with ExitStack() as stack:
        stack.enter_context(
            process_group(
                [
                    str(BIN / "dagster"),
                    "code-server",
                    "start",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(grpc_port),
                    "-m",
                    "property_pipeline.definitions",
                ],
                env_b,
                logs[0],
                cwd=b,
            )
        )
        wait_for_code_server(grpc_port, logs[0], env_b)
        webserver = stack.enter_context(
            process_group(
                [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(ui_port)],
                env_b,
                logs[1],
                cwd=b,
            )
        )
        wait_until_serving(ui_port, webserver, logs[1])
        stack.enter_context(
            process_group([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env_b, logs[2], cwd=b)
        )
        this_month = datetime.now(UTC).strftime("%Y-%m")
        launched = graphql(
            ui_port,
            LAUNCH,
            {"params": {"assetSelection": [{"path": ["properties"]}], "partitionNames": [this_month], "title": "e2e"}},
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        runs = wait_for_settled(engine, ui_port, expected_files=3 + len(old), logs=logs)
        partitions = graphql(ui_port, PARTITIONS, {})

    processing = {
        tag["value"]: run["status"]
        for run in runs
        if run["jobName"] == processing_job.name
        for tag in run["tags"]
        if tag["key"] == "dagster/partition"
    }
    assert processing == {OLD_MONTH: "SUCCESS"}  # requested by the sensor
    backfilled = {
        tag["value"]: run["status"] for run in runs for tag in run["tags"] if tag["key"] == "dagster/partition"
    }
    assert backfilled[this_month] == "SUCCESS"
    assert {run["status"] for run in runs} == {"SUCCESS"}
    ranges = partitions["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]
    materialized = {r["startKey"] for r in ranges if r["status"] == "MATERIALIZED"} | {
        r["endKey"] for r in ranges if r["status"] == "MATERIALIZED"
    }
    assert {OLD_MONTH, this_month} <= materialized

    with engine.connect() as conn:
        rows = conn.execute(select(batch_file_status)).all()
        loaded = conn.execute(select(func.count()).select_from(properties_table)).scalar_one()
    assert {row.status for row in rows} == {"COMPLETED"} and len(rows) == 3 + len(old)
    assert loaded == sum(row.success_count for row in rows) == RECORDS - RECORDS // 97 + 15
    assert sum(1 for row in rows if row.month == this_month and row.campaign_id == "north") == 3
    for row in rows:
        assert s3_store.hash_payload(row.file_path) == (row.checksum_sha256, row.file_size_bytes)
    assert sorted(os.listdir(b)) == ["code-server.log", "daemon.log", "dagster_home", "webserver.log", "workspace.yaml"]

    # Node C: cleanup of the old month (archived, read back, verified, then deleted), then restore.
    cleanup = json.loads(run_cli(c, shared, "cleanup", "--json").stdout)
    [month] = cleanup["result"]["months"]
    assert month["month"] == OLD_MONTH and sorted(month["deleted"]) == sorted(s.relative_path for s in old)
    assert list(s3_store.list_payloads(OLD_MONTH)) == []
    with s3_store.reading_archive(month["archive_name"]) as archive, tarfile.open(archive, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    manifest = json.loads(members.pop(MANIFEST_NAME))
    expected = {row.file_path: row.checksum_sha256 for row in rows if row.month == OLD_MONTH}
    assert {name: hashlib.sha256(body).hexdigest() for name, body in members.items()} == expected
    assert {entry["path"]: entry["sha256"] for entry in manifest["files"]} == expected
    run_cli(c, shared, "restore", "--month", OLD_MONTH)
    for stored in old:
        assert s3_store.hash_payload(stored.relative_path) == (stored.sha256, stored.size_bytes)
    run_cli(c, shared, "verify")
    assert sorted(os.listdir(c)) == []  # node C wrote nothing locally either
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(properties_table)).scalar_one() == loaded
    engine.dispose()


def wait_for_settled(engine, ui_port: int, *, expected_files: int, logs: list[Path]) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    """The runs, once every expected file is COMPLETED and every run has finished."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            states = list(conn.execute(select(batch_file_status.c.status)).scalars())
        runs = graphql(ui_port, RUNS, {})["runsOrError"]["results"]
        done = all(run["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for run in runs)
        if len(states) == expected_files and set(states) == {"COMPLETED"} and runs and done:
            return runs  # type: ignore[no-any-return]
        time.sleep(2)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    pytest.fail(f"the pipeline did not settle within {SETTLE_TIMEOUT}s:\n{tails}")


def wait_for_code_server(port: int, log: Path, env: dict[str, str]) -> None:
    """Until the code server answers its gRPC health check (the webserver loads the location once, at start)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        check = subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)],
            env=env,
            capture_output=True,
            timeout=60,
        )
        if check.returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"the code server did not answer within 120 s:\n{log.read_text()[-3000:]}")
