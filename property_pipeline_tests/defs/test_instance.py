"""The two instance profiles in dagster_home/: they load, and carry the pool and per-month run limits."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest

from property_pipeline.defs.properties import PROPERTY_DB_POOL

PROFILES = Path(__file__).resolve().parents[2] / "dagster_home"
PER_MONTH_LIMIT = {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}


def load_profile(profile: str, home: Path) -> dg.DagsterInstance:
    shutil.copy(PROFILES / profile, home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


def assert_concurrency(instance: dg.DagsterInstance) -> None:
    config = instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 1
    assert config.run_queue_config is not None
    assert PER_MONTH_LIMIT in config.run_queue_config.tag_concurrency_limits
    assert instance.event_log_storage.get_concurrency_info(PROPERTY_DB_POOL).limit == 1


def test_the_default_profile_keeps_everything_in_sqlite_under_dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with load_profile("dagster.yaml", tmp_path) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert not instance.telemetry_enabled
        assert_concurrency(instance)
    assert (tmp_path / "history" / "runs.db").is_file()


def test_the_postgres_profile_stores_runs_and_events_in_postgresql(
    dagster_pg_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in dagster_pg_env.items():
        monkeypatch.setenv(variable, value)
    with load_profile("dagster.postgres.yaml", tmp_path) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        run = instance.add_run(dg.DagsterRun(job_name="probe", run_id=str(uuid.uuid4())))
        instance.report_engine_event("written through psycopg2", run)  # psycopg 3 fails here (NOTIFY)
        assert [e.message for e in instance.all_logs(run.run_id)] == ["written through psycopg2"]
        assert_concurrency(instance)
