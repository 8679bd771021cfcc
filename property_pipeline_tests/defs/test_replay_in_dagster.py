"""Reprocess and discard as the Dagster UI sees them: the `reprocess` option, the `reprocess_months` job,
and a discarded file that leaves its month settled (green, checks passing)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from sqlalchemy import Engine, select

from property_pipeline.db.schema import batch_file_status, file_status_events
from property_pipeline.defs.checks import ALL_CHECKS
from property_pipeline.defs.jobs import reprocess_months_job
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.digest import compute_digest
from property_pipeline.processing import replay
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests import replay_rules
from property_pipeline_tests.defs.conftest import (
    checks_by_name,
    materialize_month,
    metadata_values,
    statuses,
    write_month,
)
from property_pipeline_tests.factories import make_record, write_page


def _events(engine: Engine, detail_prefix: str) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        query = select(file_status_events.c.file_id, file_status_events.c.detail).where(
            file_status_events.c.detail.like(f"{detail_prefix}%")
        )
        return sorted(tuple(row) for row in conn.execute(query))  # type: ignore[misc]


def test_the_reprocess_option_reloads_the_month_with_todays_rules(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    write_page(
        root,
        [make_record("kept"), make_record("refused-now", extras={"replayRule": "reject"})],
        batch=1,
        captured_at=datetime(2026, 3, 3, 8, tzinfo=UTC),
    )
    register_unregistered(engine, root, "test")
    assert materialize_month("2026-03", resources, instance, selection=[properties]).success
    replay_rules.install()
    try:
        config = {"ops": {"properties": {"config": {"reprocess": True, "reason": "zip rule fixed"}}}}
        result = materialize_month("2026-03", resources, instance, selection=[properties], run_config=config)
    finally:
        replay_rules.uninstall()

    assert result.success
    values = metadata_values(result.asset_materializations_for_node("properties")[0])
    assert values["run_reprocessed"] is True and values["run_files_completed"] == 1
    assert (values["rows_delivered_by_month_files"], values["records_quarantined_by_month_files"]) == (1, 1)
    assert _events(engine, "reprocess:") == [(1, "reprocess: zip rule fixed")]
    assert checks_by_name(result)["row_counts_agree"].passed


def test_a_backfill_job_reprocesses_months_without_any_run_config(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    write_month(root, "2026-03", files=2)
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    loaded = compute_digest(engine)

    job = dg.Definitions(
        assets=[raw_property_payloads, properties],
        asset_checks=ALL_CHECKS,
        jobs=[reprocess_months_job],
        resources=resources,
    ).resolve_job_def("reprocess_months")
    result = job.execute_in_process(partition_key="2026-03", instance=instance, raise_on_error=False)

    assert result.success
    assert [file_id for file_id, _ in _events(engine, "reprocess:")] == [1, 2]
    assert all(detail.startswith("reprocess: Dagster run ") for _, detail in _events(engine, "reprocess:"))
    assert compute_digest(engine) == loaded and set(statuses(engine).values()) == {"COMPLETED"}


def test_a_discarded_file_leaves_its_month_settled_green_and_passing(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    _good, lost = write_month(root, "2026-03", files=2)
    register_unregistered(engine, root, "test")
    lost.path.chmod(0o644)
    lost.path.write_bytes(b'{"statusCode": 200, "data": [')  # truncated after registration: it can never load
    failed = materialize_month("2026-03", resources, instance, selection=[properties])
    assert not failed.success
    assert instance.get_status_by_partition(properties.key, ["2026-03"], monthly_partitions) == {
        "2026-03": AssetPartitionStatus.FAILED
    }
    with engine.connect() as conn:
        lost_id = conn.execute(
            select(batch_file_status.c.file_id).where(batch_file_status.c.file_path == lost.relative_path)
        ).scalar_one()

    replay.discard(engine, root, "test", [lost_id], "the API will not serve this page again")
    settled = materialize_month("2026-03", resources, instance, selection=[properties])

    assert settled.success
    values = metadata_values(settled.asset_materializations_for_node("properties")[0])
    assert values["month_settled"] is True and (values["files_discarded"], values["files_failed"]) == (1, 0)
    checks = checks_by_name(settled)
    assert checks["no_failed_files"].passed and checks["row_counts_agree"].passed
    assert instance.get_status_by_partition(properties.key, ["2026-03"], monthly_partitions) == {
        "2026-03": AssetPartitionStatus.MATERIALIZED
    }
