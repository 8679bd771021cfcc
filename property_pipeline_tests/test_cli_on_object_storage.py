"""The whole demo with `PROPERTY_PIPELINE_PAYLOADS_URL=s3://...` against moto's server: capture, register, process,
status, verify, cleanup and restore through the `property-pipeline` command, with no payload folder at all."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.schema import batch_file_status, properties
from property_pipeline.store.s3 import S3Store
from property_pipeline_tests.conftest import s3_environment
from property_pipeline_tests.factories import make_record, write_page
from property_pipeline_tests.s3server import MotoServer

pytestmark = pytest.mark.slow


def test_the_demo_and_every_command_run_on_object_storage(
    tmp_path: Path, s3_server: MotoServer, s3_store: S3Store
) -> None:
    env = {
        **os.environ,
        **s3_environment(s3_server.url),
        "PROPERTY_PIPELINE_DB_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs"),
        "PROPERTY_PIPELINE_PAYLOADS_URL": f"s3://{s3_store.bucket}/landing",
    }
    env.pop("PROPERTY_API_KEY", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "property_pipeline", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )

    demo = cli("demo", "--records", "900")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Demo complete" in demo.stdout and f"s3://{s3_store.bucket}/landing/property_payloads/" in demo.stdout
    assert not (tmp_path / "logs" / "property_payloads").exists()  # nothing on local disk

    old = [
        write_page(
            s3_store, [make_record(f"old-{i}")], campaign="drop", batch=i, captured_at=datetime(2025, 3, i, tzinfo=UTC)
        )
        for i in range(1, 4)
    ]
    register = cli("register")
    assert register.returncode == 0, register.stderr
    process = cli("process")
    assert process.returncode == 0, process.stderr
    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    verify = cli("verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["checked"] == 6, verify.stdout + verify.stderr

    cleanup = cli("cleanup", "--json")
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    [month] = json.loads(cleanup.stdout)["result"]["months"]
    assert month["month"] == "2025-03" and sorted(month["deleted"]) == sorted(s.relative_path for s in old)
    assert list(s3_store.list_payloads("2025-03")) == []
    archives = s3_store.client.list_objects_v2(Bucket=s3_store.bucket, Prefix="landing/archive/")["Contents"]
    assert [item["Key"] for item in archives] == [f"landing/archive/{month['archive_name']}"]

    restore = cli("restore", "--month", "2025-03")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    for stored in old:
        with s3_store.open_payload(stored.relative_path, 1 << 20) as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == stored.sha256
    assert cli("verify").returncode == 0

    engine = create_db_engine(env["PROPERTY_PIPELINE_DB_URL"])
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(properties)).scalar_one()
        states = set(conn.execute(select(batch_file_status.c.status)).scalars())
    engine.dispose()
    assert count == 900 - 9 + 3 and states == {"COMPLETED"}
