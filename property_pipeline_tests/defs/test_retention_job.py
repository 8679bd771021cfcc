"""The retention job: the same plan as `property-pipeline cleanup`, with a run summary in the metadata."""

from __future__ import annotations

from typing import Any

import dagster as dg
from sqlalchemy import Engine

from property_pipeline.defs.retention import retention_job
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.defs.conftest import metadata_values, statuses, write_month


def run_retention(resources: dict[str, Any], instance: dg.DagsterInstance, *, dry_run: bool = False):  # type: ignore[no-untyped-def]
    return retention_job.execute_in_process(
        run_config={"ops": {"apply_retention_policy": {"config": {"dry_run": dry_run}}}},
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def summary(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (output,) = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    return {key: getattr(value, "value", value) for key, value in output.step_output_data.metadata.items()}


def test_retention_archives_and_deletes_old_completed_files_and_keeps_the_rest(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    old = write_month(root, "2026-03", files=2)
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    pending = write_month(root, "2026-03", files=1, campaign="late")
    register_unregistered(engine, root, "test")

    dry = run_retention(resources, instance, dry_run=True)
    assert dry.success and summary(dry)["files_planned"] == 2 and summary(dry)["files_deleted"] == 0
    assert all(stored.path.exists() for stored in old)

    result = run_retention(resources, instance)

    assert result.success
    values = summary(result)
    assert (values["dry_run"], values["files_deleted"], values["files_skipped"]) == (False, 2, 1)
    assert pending[0].relative_path in values["skipped_files"] and "PENDING" in values["skipped_files"]
    assert not any(stored.path.exists() for stored in old) and pending[0].path.exists()
    assert len(list(root.archive.glob("property_payloads_2026-03_*.tar.gz"))) == 1
    assert statuses(engine)[pending[0].relative_path] == "PENDING"
    (observation,) = [
        e.asset_observation_data.asset_observation for e in result.all_node_events if e.is_asset_observation
    ]
    assert observation.partition == "2026-03" and metadata_values(observation)["retention_files_deleted"] == 2
