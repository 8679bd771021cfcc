"""`properties`: materializing a month loads that month's PENDING files, FAILED ones only when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
from click.testing import CliRunner
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from sqlalchemy import Engine, delete, select

from property_pipeline.cli import main
from property_pipeline.db.schema import batch_file_status, file_properties, quarantined_records
from property_pipeline.db.schema import properties as properties_table
from property_pipeline.definitions import defs
from property_pipeline.defs.checks import ALL_CHECKS
from property_pipeline.defs.jobs import retry_failed_months_job
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.properties import PROPERTY_DB_POOL, properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.conftest import TABLES
from property_pipeline_tests.defs.conftest import (
    checks_by_name,
    materialize_month,
    metadata_values,
    statuses,
    write_month,
)
from property_pipeline_tests.factories import make_page, make_record


def test_materializing_a_month_loads_its_pending_files_and_leaves_other_months(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    march = write_month(root, "2026-03", files=3, per_file=5)
    april = write_month(root, "2026-04", files=2, per_file=5)
    write_month(root, "2026-05", files=1, per_file=7)
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run(month="2026-05")  # the table holds another month's rows too

    result = materialize_month("2026-03", resources, instance, selection=[properties])

    assert result.success
    states = statuses(engine)
    assert {states[s.relative_path] for s in march} == {"COMPLETED"}
    assert {states[s.relative_path] for s in april} == {"PENDING"}
    (materialization,) = result.asset_materializations_for_node("properties")
    values = metadata_values(materialization)
    assert materialization.partition == "2026-03"
    assert (values["run_files_completed"], values["run_files_failed"], values["run_records_loaded"]) == (3, 0, 15)
    assert values["month_settled"] is True and (values["files_total"], values["files_completed"]) == (3, 3)
    assert values["rows_delivered_by_month_files"] == 15 and values["files_pending"] == 0
    # Where Dagster shows a table's size: the whole table (March's 15 and May's 7), counted.
    assert values["dagster/row_count"] == 22 and values["table_row_count_method"] == "count(*)"
    assert values["run_rows_per_second"] > 0 and values["first_errors"] == "_none_"
    checks = checks_by_name(result)
    assert set(checks) == {"row_counts_agree", "no_stuck_files", "no_failed_files", "quarantine_rate_acceptable"}
    assert all(check.passed and check.partition == "2026-03" for check in checks.values())


def test_a_month_left_with_a_failed_file_is_not_materialized_and_shows_failed_with_the_error(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    good, lost = write_month(root, "2026-03", files=2, per_file=4)
    register_unregistered(engine, root, "test")
    hidden = lost.path.with_name(".away")
    lost.path.rename(hidden)

    first = materialize_month("2026-03", resources, instance, selection=[properties])

    assert not first.success and first.asset_materializations_for_node("properties") == []
    status_now = instance.get_status_by_partition(properties.key, ["2026-03"], monthly_partitions)
    assert status_now == {"2026-03": AssetPartitionStatus.FAILED}
    (observation,) = first.asset_observations_for_node("properties")
    values = metadata_values(observation)
    assert observation.partition == "2026-03" and values["month_settled"] is False
    assert (values["run_files_completed"], values["run_files_failed"], values["files_failed"]) == (1, 1, 1)
    assert lost.relative_path in values["first_errors"] and "missing" in values["first_errors"]
    failure = first.failure_data_for_node("properties")
    description = failure.user_failure_data.description if failure else ""
    assert "1 FAILED of 2 files" in description and f"{lost.relative_path} is missing" in description  # the error
    assert lost.relative_path in failure.user_failure_data.metadata["first_errors"].value
    # The month's checks are skipped once the step fails; their verdicts were recorded by the step.
    checks = checks_by_name(first)
    failed_check = checks["no_failed_files"]
    assert not failed_check.passed and failed_check.severity == dg.AssetCheckSeverity.ERROR
    assert (
        failed_check.partition == "2026-03" and lost.relative_path in metadata_values(failed_check)["offending_files"]
    )

    hidden.rename(lost.path)
    again = materialize_month("2026-03", resources, instance, selection=[properties])
    assert not again.success and statuses(engine)[lost.relative_path] == "FAILED"

    retried = materialize_month(
        "2026-03",
        resources,
        instance,
        selection=[properties],
        run_config={"ops": {"properties": {"config": {"include_failed": True}}}},
    )
    assert retried.success
    assert statuses(engine) == {good.relative_path: "COMPLETED", lost.relative_path: "COMPLETED"}
    values = metadata_values(retried.asset_materializations_for_node("properties")[0])
    assert (values["run_failed_files_retried"], values["run_files_completed"], values["dagster/row_count"]) == (1, 1, 8)
    status_now = instance.get_status_by_partition(properties.key, ["2026-03"], monthly_partitions)
    assert status_now == {"2026-03": AssetPartitionStatus.MATERIALIZED}


def test_record_only_processes_nothing_and_records_the_months_state(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    write_month(root, "2026-03", files=2)
    register_unregistered(engine, root, "test")
    record_only = {"ops": {"properties": {"config": {"record_only": True}}}}

    pending = materialize_month("2026-03", resources, instance, selection=[properties], run_config=record_only)
    assert not pending.success and set(statuses(engine).values()) == {"PENDING"}  # nothing was processed
    assert "2 PENDING of 2 files" in str(pending.failure_data_for_node("properties").user_failure_data.description)

    PayloadProcessor(engine, root).run(month="2026-03")
    settled = materialize_month("2026-03", resources, instance, selection=[properties], run_config=record_only)
    assert settled.success
    values = metadata_values(settled.asset_materializations_for_node("properties")[0])
    assert values["files_completed"] == 2 and "run_files_completed" not in values


def test_the_retry_job_retries_failed_files_with_no_run_config_at_all(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    (lost,) = write_month(root, "2026-03", files=1)
    pending = write_month(root, "2026-03", files=1, campaign="camp-2")
    register_unregistered(engine, root, "test")
    lost.path.rename(lost.path.with_name(".away"))
    with engine.connect() as conn:
        lost_id = conn.execute(
            select(batch_file_status.c.file_id).where(batch_file_status.c.file_path == lost.relative_path)
        ).scalar_one()
    PayloadProcessor(engine, root).run(file_ids=[lost_id])
    lost.path.with_name(".away").rename(lost.path)
    assert statuses(engine)[lost.relative_path] == "FAILED"

    job = dg.Definitions(
        assets=[raw_property_payloads, properties],
        asset_checks=ALL_CHECKS,
        jobs=[retry_failed_months_job],
        resources=resources,
    ).resolve_job_def("retry_failed_months")
    result = job.execute_in_process(partition_key="2026-03", instance=instance, raise_on_error=False)

    assert result.success
    assert statuses(engine) == {lost.relative_path: "COMPLETED", pending[0].relative_path: "COMPLETED"}


def test_properties_is_never_automatic_and_writes_through_the_pool() -> None:
    assets = defs().get_repository_def().assets_defs_by_key
    spec = assets[properties.key].specs_by_key[properties.key]
    assert spec.automation_condition is None
    assert assets[properties.key].op.pool == PROPERTY_DB_POOL


def test_cli_process_and_dagster_materialization_leave_the_same_database_state(
    engine: Engine, db_url: str, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    write_month(root, "2026-03", files=3, per_file=4)
    bad = [make_record("bad-zip", address={"zip": "ABCDE", "state": "TX"}), make_record("ok-1"), make_record("ok-1")]
    (root.month_dir("2026-03") / "other_batch1_20260310T000000Z.json").write_bytes(make_page(bad))
    (root.month_dir("2026-03") / "other_batch2_20260311T000000Z.json").write_bytes(b'{"data": [')
    write_month(root, "2026-04", files=1)

    register_unregistered(engine, root, "test")
    cli = CliRunner().invoke(
        main,
        ["process", "--month", "2026-03", "--json"],
        env={"PROPERTY_PIPELINE_DB_URL": db_url, "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir)},
    )
    assert cli.exit_code == 1, cli.output  # the truncated file FAILED
    assert json.loads(cli.stdout)["files_failed"] == 1
    by_cli = database_state(engine, root)

    _forget_everything(engine, root)
    register_unregistered(engine, root, "test")
    dagster = materialize_month("2026-03", resources, instance, selection=[properties])
    assert not dagster.success  # the same FAILED file fails the step
    by_dagster = database_state(engine, root)

    assert by_dagster == by_cli
    assert by_cli["files"]["2026-04/camp-1_batch1_20260403T080100000000Z.json"][0] == "PENDING"
    assert len(by_cli["quarantined"]) == 2 and len(by_cli["properties"]) == 13


def database_state(engine: Engine, root: PayloadRoot) -> dict[str, Any]:
    """Everything processing writes, with file ids replaced by paths (ids differ between two registrations)."""
    with engine.connect() as conn:
        files = conn.execute(select(batch_file_status)).all()
        path_of = {row.file_id: row.file_path for row in files}
        props = conn.execute(select(properties_table)).mappings().all()
        links = conn.execute(select(file_properties)).all()
        quarantined = conn.execute(select(quarantined_records)).mappings().all()
    return {
        "files": {
            row.file_path: (row.status, row.properties_count, row.success_count, row.error_count, row.error_details)
            for row in files
        },
        "properties": {row["property_id"]: {**row, "source_file_id": path_of[row["source_file_id"]]} for row in props},
        "links": sorted((path_of[row.file_id], row.property_id) for row in links),
        "quarantined": sorted(
            (path_of[row["file_id"]], row["record_index"], row["property_id"] or "", row["reason"], row["raw"])
            for row in quarantined
        ),
        "markers": sorted(
            str(path.relative_to(root.logs_dir))
            for folder in (root.pending, root.processed)
            for path in folder.rglob("*")
        ),
    }


def _forget_everything(engine: Engine, root: PayloadRoot) -> None:
    """Back to "files on disk, empty database", keeping the payload files."""
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(delete(properties_table.metadata.tables[table]))
    for folder in (root.pending, root.processed):
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    assert not any(Path(root.processing).iterdir())
