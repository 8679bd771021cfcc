"""`raw_property_payloads`: the current month is captured, any month's files on disk are registered and reported."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster_shared.serdes import serialize_value
from sqlalchemy import Engine

from property_pipeline.api.sandbox import SandboxConfig, SandboxServer
from property_pipeline.definitions import defs
from property_pipeline.defs.partitions import current_month
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import PropertyApi
from property_pipeline.store.layout import PayloadRoot
from property_pipeline_tests.defs.conftest import (
    checks_by_name,
    materialize_month,
    metadata_values,
    statuses,
    write_month,
)

API_KEY = "sk-test-do-not-show-4f1c"


def event_log_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Everything the UI could show of a run: every event, serialized."""
    return "\n".join(serialize_value(record) for record in instance.all_logs(run_id))


def test_materializing_the_current_month_captures_the_enabled_campaigns(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    with SandboxServer(SandboxConfig(records=1000, api_key=API_KEY)) as server:
        resources["property_api"] = PropertyApi(base_url=server.base_url, api_key=API_KEY, page_size=20)
        result = materialize_month(current_month(), resources, instance, selection=[raw_property_payloads])

    assert result.success
    (materialization,) = result.asset_materializations_for_node("raw_property_payloads")
    values = metadata_values(materialization)
    assert (values["files"], values["records"], values["pages_captured"]) == (3, 50, 3)
    assert values["bytes"] == sum(path.stat().st_size for path in root.month_dir(current_month()).glob("*.json"))
    assert "| tx-sfr | 3 | 50 |" in values["campaigns"] and "off-campaign" not in values["campaigns"]
    assert sorted(statuses(engine).values()) == ["PENDING"] * 3
    assert checks_by_name(result)["payload_files_intact"].passed
    assert API_KEY not in event_log_text(instance, result.run_id)


def test_a_past_month_registers_and_reports_the_files_on_disk_without_calling_the_api(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    stored = write_month(root, "2026-03", files=2, per_file=7)
    write_month(root, "2026-04", files=1)

    result = materialize_month("2026-03", resources, instance, selection=[raw_property_payloads])

    assert result.success  # the API resource points at a closed port: any capture attempt would fail
    values = metadata_values(result.asset_materializations_for_node("raw_property_payloads")[0])
    assert (values["files"], values["records"], values["files_registered_from_disk"], values["pages_captured"]) == (
        2,
        14,
        2,
        0,
    )
    assert statuses(engine) == {s.relative_path: "PENDING" for s in stored}


def test_a_capture_the_api_refuses_fails_the_run_and_never_shows_the_key(
    root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    with SandboxServer(SandboxConfig(records=50, api_key="the-right-key")) as server:
        resources["property_api"] = PropertyApi(base_url=server.base_url, api_key=API_KEY, page_size=20)
        result = materialize_month(current_month(), resources, instance, selection=[raw_property_payloads])

    assert not result.success
    failure = result.failure_data_for_node("raw_property_payloads")
    assert failure is not None and "not captured completely" in str(failure.error)
    assert metadata_values(result.asset_materializations_for_node("raw_property_payloads")[0])["files"] == 0
    log = event_log_text(instance, result.run_id)
    assert "401" in log and API_KEY not in log


# Dagster's own snapshot code (what the webserver runs) reads a deprecated property of every schedule.
@pytest.mark.filterwarnings("ignore:Property `ScheduleDefinition.environment_vars`:DeprecationWarning")
def test_secrets_reach_the_ui_as_variable_names_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPERTY_API_KEY", API_KEY)
    monkeypatch.setenv("PROPERTY_PIPELINE_DB_URL", "postgresql://pipeline:db-password-9c2e@db.internal/pipeline")
    repository = defs().get_repository_def()
    snapshot = serialize_value(RepositorySnap.from_def(repository))
    assert API_KEY not in snapshot and "db-password-9c2e" not in snapshot
    assert "PROPERTY_API_KEY" in snapshot and "PROPERTY_PIPELINE_DB_URL" in snapshot
