"""Asset checks give one verdict per month: they fail on that month's real problems, name the offending files,
and block where they should."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster._core.storage.event_log.base import PartitionKeyFilter
from sqlalchemy import Engine, delete, select, update

from property_pipeline.db import status
from property_pipeline.db.schema import batch_file_status, file_properties, utcnow
from property_pipeline.defs.checks import (
    no_failed_files,
    no_stuck_files,
    payload_files_intact,
    quarantine_rate_acceptable,
    row_counts_agree,
)
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import QuarantinePolicy
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.defs.conftest import (
    ALL_ASSETS_AND_CHECKS,
    checks_by_name,
    materialize_month,
    metadata_values,
    statuses,
    write_month,
)
from property_pipeline_tests.factories import make_page, make_record


def run_checks_alone(
    checks: list[Any], month: str, resources: dict[str, Any], instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """What the UI's "Execute" on a check does: a run of only the checks, for the month picked."""
    job = dg.Definitions(
        assets=ALL_ASSETS_AND_CHECKS[:2],
        asset_checks=ALL_ASSETS_AND_CHECKS[2:],
        jobs=[dg.define_asset_job("checks_alone", selection=dg.AssetSelection.checks(*checks))],
        resources=resources,
    ).resolve_job_def("checks_alone")
    # The UI launches it with the month as the run's partition tag (a job of checks only has no partitions of its own).
    return job.execute_in_process(tags={"dagster/partition": month}, instance=instance, raise_on_error=False)


def test_a_tampered_payload_fails_the_checksum_check_and_blocks_processing_in_the_same_run(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    intact, tampered = write_month(root, "2026-03", files=2)
    register_unregistered(engine, root, "test")
    os.chmod(tampered.path, stat.S_IRUSR | stat.S_IWUSR)
    tampered.path.write_bytes(tampered.path.read_bytes().replace(b"Austin", b"Boston", 1))

    result = materialize_month("2026-03", resources, instance, selection=[raw_property_payloads, properties])

    check = checks_by_name(result)["payload_files_intact"]
    values = metadata_values(check)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.partition == "2026-03" and values["month"] == "2026-03"
    assert (values["files_checked"], values["problems"]) == (2, 1)
    assert tampered.relative_path in values["offending_files"] and "checksum mismatch" in values["offending_files"]
    assert intact.relative_path not in values["offending_files"]
    assert not result.success and result.asset_materializations_for_node("properties") == []
    assert set(statuses(engine).values()) == {"PENDING"}  # nothing was processed behind the failed check


def test_files_removed_by_retention_on_purpose_do_not_fail_the_checksum_check(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    _kept, removed = write_month(root, "2026-03", files=2)
    register_unregistered(engine, root, "test")
    os.chmod(removed.path, stat.S_IRUSR | stat.S_IWUSR)
    removed.path.unlink()
    with engine.begin() as conn:
        conn.execute(
            update(batch_file_status)
            .where(batch_file_status.c.file_path == removed.relative_path)
            .values(deleted_at=utcnow())
        )

    result = materialize_month("2026-03", resources, instance, selection=[raw_property_payloads])

    check = checks_by_name(result)["payload_files_intact"]
    assert check.passed and metadata_values(check)["files_checked"] == 1


def test_row_counts_that_disagree_fail_the_check_naming_the_file(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    short, whole = write_month(root, "2026-03", files=2, per_file=4)
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    file_id = _file_ids(engine)[short.relative_path]
    with engine.begin() as conn:
        conn.execute(delete(file_properties).where(file_properties.c.file_id == file_id))

    result = materialize_month("2026-03", resources, instance, selection=[properties])

    check = checks_by_name(result)["row_counts_agree"]
    values = metadata_values(check)
    assert not check.passed and not result.success  # blocking, ERROR: the run fails
    assert (values["success_count_total"], values["rows_delivered"]) == (8, 4)
    assert short.relative_path in values["offending_files"] and whole.relative_path not in values["offending_files"]


def test_a_file_stuck_past_its_lease_is_a_warning_that_names_it_and_its_worker(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    (stuck,) = write_month(root, "2026-03", files=1)
    register_unregistered(engine, root, "test")
    assert status.claim_next_pending(engine, "crashed-worker", 60) is not None
    with engine.begin() as conn:
        conn.execute(update(batch_file_status).values(locked_until=utcnow() - timedelta(minutes=5)))

    result = run_checks_alone([no_stuck_files], "2026-03", resources, instance)

    (check,) = result.get_asset_check_evaluations()
    values = metadata_values(check)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert result.success  # a warning does not fail the run: the next processing run requeues the file
    assert stuck.relative_path in values["offending_files"] and "crashed-worker" in values["offending_files"]


def test_a_check_run_for_one_month_checks_that_month_only_and_records_its_verdict_under_it(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    march = write_month(root, "2026-03", files=1)[0]
    april = write_month(root, "2026-04", files=1)[0]
    register_unregistered(engine, root, "test")
    for stored in (march, april):
        stored.path.rename(stored.path.with_name(".gone"))  # reused name: both months lose their file
        PayloadProcessor(engine, root).run(month=stored.month)
        stored.path.with_name(".gone").rename(stored.path)
    write_month(root, "2026-05", files=1)
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run(month="2026-05")

    march_result = run_checks_alone(
        [payload_files_intact, row_counts_agree, no_failed_files], "2026-03", resources, instance
    )
    may_result = run_checks_alone([no_failed_files], "2026-05", resources, instance)

    checks = checks_by_name(march_result)
    failed = metadata_values(checks["no_failed_files"])
    assert {check.partition for check in checks.values()} == {"2026-03"}
    assert not checks["no_failed_files"].passed and failed["month"] == "2026-03" and failed["failed_files"] == 1
    assert march.relative_path in failed["offending_files"] and april.relative_path not in failed["offending_files"]
    assert (
        checks["payload_files_intact"].passed and metadata_values(checks["payload_files_intact"])["files_checked"] == 1
    )
    (may,) = may_result.get_asset_check_evaluations()
    assert may.passed and may.partition == "2026-05"

    # Each month keeps its own verdict: the latest one of March is a failure, of May a pass.
    key = dg.AssetCheckKey(properties.key, "no_failed_files")
    latest = {
        month: instance.event_log_storage.get_asset_check_execution_history(
            key, limit=1, partition_filter=PartitionKeyFilter(key=month)
        )[0]
        for month in ("2026-03", "2026-05")
    }
    assert latest["2026-03"].run_id == march_result.run_id and latest["2026-05"].run_id == may_result.run_id
    assert latest["2026-03"].event.dagster_event.event_specific_data.passed is False
    assert latest["2026-05"].event.dagster_event.event_specific_data.passed is True


def test_a_month_with_too_many_quarantined_records_gets_a_warning_under_the_configured_share(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    records = [make_record(f"q-{index}") for index in range(9)] + [make_record("bad", address={"zip": "ABCDE"})]
    (root.month_dir("2026-03")).mkdir(parents=True)
    (root.month_dir("2026-03") / "q_batch1_20260310T000000Z.json").write_bytes(make_page(records))
    register_unregistered(engine, root, "test")

    strict = materialize_month("2026-03", resources, instance, selection=[properties])
    resources["quarantine_policy"] = QuarantinePolicy(warn_share=0.2)
    lenient = run_checks_alone([quarantine_rate_acceptable], "2026-03", resources, instance)

    check = checks_by_name(strict)["quarantine_rate_acceptable"]
    values = metadata_values(check)
    assert strict.success  # a warning: the month loaded, its quarantine is visible
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and check.partition == "2026-03"
    assert (values["records_quarantined"], values["records_loaded"], values["quarantined_share"]) == (1, 9, 0.1)
    assert values["warn_above_share"] == 0.01 and "10.00%" in (check.description or "")
    (relaxed,) = lenient.get_asset_check_evaluations()
    assert relaxed.passed and metadata_values(relaxed)["warn_above_share"] == 0.2


def _file_ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(batch_file_status.c.file_path, batch_file_status.c.file_id)).all())
