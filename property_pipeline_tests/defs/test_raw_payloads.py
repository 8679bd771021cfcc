"""`raw_property_payloads`: the current month is captured, any month's files on disk are registered and reported."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from dagster_shared.serdes import serialize_value
from sqlalchemy import Engine

from property_pipeline.api.sandbox import SandboxConfig, SandboxServer
from property_pipeline.definitions import defs
from property_pipeline.defs.partitions import current_month, monthly_partitions
from property_pipeline.defs.raw_payloads import CAMPAIGN_TAG, raw_property_payloads
from property_pipeline.defs.resources import PropertyApi
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.defs.conftest import (
    ALL_ASSETS_AND_CHECKS,
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
    assert (values["files_on_disk"], values["records_on_disk"], values["pages_captured"]) == (3, 50, 3)
    assert (values["files_new"], values["files_pending"], values["month_data_version"]) == (3, 3, "3 files, newest 3")
    assert materialization.tags["dagster/data_version"] == "3 files, newest 3"
    assert values["bytes_on_disk"] == sum(
        path.stat().st_size for path in root.month_dir(current_month()).glob("*.json")
    )
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
    assert (values["files_on_disk"], values["records_on_disk"], values["files_registered_from_disk"]) == (2, 14, 2)
    assert values["pages_captured"] == 0 and values["files_new"] == 2
    assert statuses(engine) == {s.relative_path: "PENDING" for s in stored}


def test_a_month_with_nothing_new_records_an_unchanged_data_version_and_zero_new_files(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    write_month(root, "2026-03", files=2)
    first = materialize_month("2026-03", resources, instance, selection=[raw_property_payloads])
    again = materialize_month("2026-03", resources, instance, selection=[raw_property_payloads])

    (before,) = first.asset_materializations_for_node("raw_property_payloads")
    (after,) = again.asset_materializations_for_node("raw_property_payloads")
    assert metadata_values(before)["files_new"] == 2 and metadata_values(after)["files_new"] == 0
    # The same data version: `properties` of the month is not shown as having newer upstream data.
    assert after.tags["dagster/data_version"] == before.tags["dagster/data_version"] == "2 files, newest 2"


def test_a_capture_the_api_refuses_fails_the_run_and_never_shows_the_key(
    root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    with SandboxServer(SandboxConfig(records=50, api_key="the-right-key")) as server:
        resources["property_api"] = PropertyApi(base_url=server.base_url, api_key=API_KEY, page_size=20)
        result = materialize_month(current_month(), resources, instance, selection=[raw_property_payloads])

    assert not result.success
    failure = result.failure_data_for_node("raw_property_payloads")
    assert failure is not None and "not captured completely" in str(failure.error)
    # Nothing stored: no materialization, the month shows Failed, the observation says what happened.
    assert result.asset_materializations_for_node("raw_property_payloads") == []
    (observation,) = result.asset_observations_for_node("raw_property_payloads")
    assert (metadata_values(observation)["files_new"], metadata_values(observation)["pages_captured"]) == (0, 0)
    month_status = instance.get_status_by_partition(raw_property_payloads.key, [current_month()], monthly_partitions)
    assert month_status == {current_month(): AssetPartitionStatus.FAILED}
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


def test_one_campaign_is_captured_when_a_run_tag_or_the_config_names_it(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    with SandboxServer(SandboxConfig(records=200, api_key=API_KEY)) as server:
        resources["property_api"] = PropertyApi(base_url=server.base_url, api_key=API_KEY, page_size=20)
        tagged = dg.materialize(
            ALL_ASSETS_AND_CHECKS,
            selection=[raw_property_payloads],
            partition_key=current_month(),
            resources=resources,
            instance=instance,
            tags={CAMPAIGN_TAG: "off-campaign"},  # disabled in the file: naming it asks for it anyway
            run_config={"ops": {"raw_property_payloads": {"config": {"max_pages": 1}}}},
        )
        configured = materialize_month(
            current_month(),
            resources,
            instance,
            selection=[raw_property_payloads],
            run_config={"ops": {"raw_property_payloads": {"config": {"campaign": "tx-sfr", "max_pages": 1}}}},
        )
        unknown = materialize_month(
            current_month(),
            resources,
            instance,
            selection=[raw_property_payloads],
            run_config={"ops": {"raw_property_payloads": {"config": {"campaign": "nope"}}}},
        )

    first = metadata_values(tagged.asset_materializations_for_node("raw_property_payloads")[0])
    second = metadata_values(configured.asset_materializations_for_node("raw_property_payloads")[0])
    assert tagged.dagster_run.tags[CAMPAIGN_TAG] == "off-campaign"
    assert "| off-campaign | 1 |" in first["campaigns"] and "tx-sfr" not in first["campaigns"]
    assert "| tx-sfr | 1 |" in second["campaigns"] and second["files_new"] == 1
    assert not unknown.success and "'nope' is not in" in str(unknown.get_step_failure_events()[0].event_specific_data)
