"""The month sensor: work done outside Dagster reaches Dagster as that month's events, once, within one tick."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from datetime import date
from typing import Any

import dagster as dg
import pytest
from click.testing import CliRunner
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from sqlalchemy import Engine, event

from property_pipeline.cli import main
from property_pipeline.definitions import defs
from property_pipeline.defs.month_sensor import SENSOR_NAME, MonthStateCursor, build_month_state_sensor
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.registration import register_unregistered
from property_pipeline.retention import apply_retention, plan_retention
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.defs.conftest import materialize_month, metadata_values, statuses, write_month


@functools.cache
def project_repository() -> dg.RepositoryDefinition:
    return defs().get_repository_def()


@pytest.fixture
def own_instance() -> Iterator[dg.DagsterInstance]:
    """An instance of the test's own: what Dagster recorded about a month must be this test's only."""
    with dg.instance_for_test() as instance:
        yield instance


def tick(instance: dg.DagsterInstance, resources: dict[str, Any], cursor: str | None, **bounds: Any) -> dg.SensorResult:
    """One evaluation as the daemon runs it, whose runless events are then stored as the daemon stores them."""
    sensor = build_month_state_sensor(commit_lag_seconds=0, **bounds)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources, repository_def=project_repository()
    ) as context:
        result = sensor.evaluate_tick(context)
    for asset_event in result.asset_events:
        instance.report_runless_asset_event(asset_event)
    return result  # type: ignore[return-value]


def cli(db_url: str, root: PayloadRoot, *args: str) -> int:
    env = {"PROPERTY_PIPELINE_DB_URL": db_url, "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir)}
    return CliRunner().invoke(main, list(args), env=env).exit_code


def events_of(result: dg.SensorResult, kind: type, key: dg.AssetKey) -> dict[str, Any]:
    return {e.partition: e for e in result.asset_events if isinstance(e, kind) and e.asset_key == key}


def partition_status(instance: dg.DagsterInstance, key: dg.AssetKey, month: str) -> AssetPartitionStatus | None:
    return (instance.get_status_by_partition(key, [month], monthly_partitions) or {}).get(month)


def test_a_cli_register_and_process_are_reported_as_that_months_materializations_with_their_checks(
    db_url: str, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    cursor = tick(own_instance, resources, None).cursor  # the sensor was running before the CLI worked
    write_month(root, "2026-03", files=3, per_file=4)
    assert cli(db_url, root, "register") == 0
    assert cli(db_url, root, "process", "--month", "2026-03") == 0

    result = tick(own_instance, resources, cursor)

    (raw,) = events_of(result, dg.AssetMaterialization, raw_property_payloads.key).values()
    (loaded,) = events_of(result, dg.AssetMaterialization, properties.key).values()
    values = metadata_values(loaded)
    assert raw.partition == loaded.partition == "2026-03" and metadata_values(raw)["files_new"] == 3
    assert (values["files_completed"], values["rows_delivered_by_month_files"], values["dagster/row_count"]) == (
        3,
        12,
        12,
    )
    assert "cli:register (3)" in values["changed_by"]
    verdicts = {e.check_name: e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)}
    assert set(verdicts) == {"row_counts_agree", "no_stuck_files", "no_failed_files", "quarantine_rate_acceptable"}
    assert all(v.passed and v.partition == "2026-03" for v in verdicts.values())
    assert partition_status(own_instance, properties.key, "2026-03") == AssetPartitionStatus.MATERIALIZED
    assert "2026-03: raw_property_payloads materialized (3 files), properties materialized" in (
        result.skip_message or ""
    )

    again = tick(own_instance, resources, result.cursor)
    assert again.asset_events == [] and again.skip_message == "no file changed since the last tick"


def test_a_month_whose_file_failed_outside_dagster_gets_a_record_run_that_shows_it_failed(
    db_url: str, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    _good, lost = write_month(root, "2026-04", files=2)
    cursor = tick(own_instance, resources, None).cursor
    assert cli(db_url, root, "register") == 0
    lost.path.rename(lost.path.with_name(".away"))
    assert cli(db_url, root, "process", "--month", "2026-04") == 1

    result = tick(own_instance, resources, cursor)

    (request,) = result.run_requests
    assert (request.job_name, request.partition_key) == ("record_month_state", "2026-04")
    assert events_of(result, dg.AssetMaterialization, properties.key) == {}  # not green, not observed twice
    job = project_repository().get_job("record_month_state")
    run = job.execute_in_process(
        instance=own_instance,
        partition_key="2026-04",
        tags=request.tags,
        resources=resources,
        raise_on_error=False,
    )
    assert not run.success and statuses_of_month(db_url, root) == ["COMPLETED", "FAILED"]  # processed nothing
    assert partition_status(own_instance, properties.key, "2026-04") == AssetPartitionStatus.FAILED
    (observation,) = run.asset_observations_for_node("properties")
    assert lost.relative_path in metadata_values(observation)["first_errors"]
    failed_check = next(e for e in run.get_asset_check_evaluations() if e.check_name == "no_failed_files")
    assert not failed_check.passed and failed_check.partition == "2026-04"

    # The run recorded the month: the next tick finds Dagster up to date (no second run, no event).
    after = tick(own_instance, resources, result.cursor)
    assert after.run_requests == [] and after.asset_events == []

    # Fixed and retried from the CLI: no_failed_files of the month changes to passed, a verdict only a run can
    # record again (Dagster keeps one runless verdict per check and month), so a record run, which succeeds.
    lost.path.with_name(".away").rename(lost.path)
    assert cli(db_url, root, "retry", "--month", "2026-04") == 0
    assert cli(db_url, root, "process", "--month", "2026-04") == 0
    fixed = tick(own_instance, resources, after.cursor)
    (request,) = fixed.run_requests
    assert (request.job_name, request.partition_key) == ("record_month_state", "2026-04")
    green = job.execute_in_process(
        instance=own_instance, partition_key="2026-04", tags=request.tags, resources=resources, raise_on_error=False
    )
    assert (
        green.success and partition_status(own_instance, properties.key, "2026-04") == AssetPartitionStatus.MATERIALIZED
    )
    verdict = next(e for e in green.get_asset_check_evaluations() if e.check_name == "no_failed_files")
    assert verdict.passed and verdict.partition == "2026-04"
    assert tick(own_instance, resources, fixed.cursor).run_requests == []


def test_a_month_changed_again_outside_dagster_is_reported_again_without_a_second_runless_verdict(
    db_url: str, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    cursor = tick(own_instance, resources, None).cursor
    write_month(root, "2026-09", files=1)
    assert cli(db_url, root, "register") == 0 and cli(db_url, root, "process") == 0
    first = tick(own_instance, resources, cursor)
    assert len([e for e in first.asset_events if isinstance(e, dg.AssetCheckEvaluation)]) == 4

    write_month(root, "2026-09", files=2, campaign="camp-2")
    assert cli(db_url, root, "register") == 0 and cli(db_url, root, "process") == 0
    second = tick(own_instance, resources, first.cursor)  # stored as the daemon stores it: this must not raise

    (loaded,) = events_of(second, dg.AssetMaterialization, properties.key).values()
    assert metadata_values(loaded)["files_completed"] == 3
    assert [e for e in second.asset_events if isinstance(e, dg.AssetCheckEvaluation)] == []  # unchanged verdicts
    assert second.run_requests == []


def statuses_of_month(db_url: str, root: PayloadRoot) -> list[str]:
    from property_pipeline.db.engine import create_db_engine

    engine = create_db_engine(db_url)
    try:
        return sorted(statuses(engine).values())
    finally:
        engine.dispose()


def test_what_a_dagster_run_recorded_is_not_reported_again(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    cursor = tick(own_instance, resources, None).cursor
    write_month(root, "2026-05", files=2)

    run = materialize_month("2026-05", resources, own_instance, selection=[raw_property_payloads, properties])
    assert run.success
    result = tick(own_instance, resources, cursor)

    assert result.asset_events == [] and result.run_requests == []
    assert result.skip_message == "1 month(s) already up to date in Dagster"


def test_a_month_with_a_run_in_progress_waits_for_that_run(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    cursor = tick(own_instance, resources, None).cursor
    write_month(root, "2026-06", files=1)
    register_unregistered(engine, root, "another-system")
    running = own_instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": "2026-06"},
        )
    )

    waiting = tick(own_instance, resources, cursor)
    assert waiting.asset_events == [] and "2026-06 wait(s) for a run in progress" in (waiting.skip_message or "")
    assert MonthStateCursor.parse(waiting.cursor).months == ("2026-06",)

    own_instance.delete_run(running.run_id)  # it ended without recording the month (it crashed, say)
    reported = tick(own_instance, resources, waiting.cursor)
    assert set(events_of(reported, dg.AssetMaterialization, raw_property_payloads.key)) == {"2026-06"}
    assert set(events_of(reported, dg.AssetObservation, properties.key)) == {"2026-06"}  # 1 PENDING: not loaded
    assert MonthStateCursor.parse(reported.cursor).months == ()


def test_the_cursor_stays_small_ticks_are_bounded_and_a_tick_with_no_new_event_runs_one_empty_query(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    cursor = tick(own_instance, resources, None).cursor
    for month in ("2026-02", "2026-03", "2026-04"):
        write_month(root, month, files=20, per_file=1)
    register_unregistered(engine, root, "another-system")  # 60 events

    cursors, months = [], []
    for _ in range(4):
        result = tick(own_instance, resources, cursor, max_events_per_tick=25)
        cursor = result.cursor
        cursors.append(cursor)
        months.append(sorted(events_of(result, dg.AssetMaterialization, raw_property_payloads.key)))
    assert [MonthStateCursor.parse(c).after for c in cursors] == [25, 50, 60, 60]
    # Each month is reported as the database has it now, so March (all 20 files, read on the first tick) is
    # not reported again when the second tick reads the rest of its events.
    assert months == [["2026-02", "2026-03"], ["2026-04"], [], []]
    assert max(len(c) for c in cursors) < 40

    statements: list[str] = []

    def record(conn: Any, cursor_: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        quiet = tick(own_instance, resources, cursor)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert quiet.skip_message == "no file changed since the last tick" and quiet.cursor == cursor
    (query,) = [s for s in statements if "file_status_events" in s or "batch_file_status" in s]
    assert "event_id >" in query and "LIMIT" in query.upper()


def test_the_first_tick_reports_every_month_as_the_database_has_it(
    db_url: str, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    write_month(root, "2026-07", files=2, per_file=3)
    write_month(root, "2026-08", files=1, per_file=3)
    assert cli(db_url, root, "register") == 0
    assert cli(db_url, root, "process", "--month", "2026-07") == 0

    first = tick(own_instance, resources, None)

    assert set(events_of(first, dg.AssetMaterialization, raw_property_payloads.key)) == {"2026-07", "2026-08"}
    assert set(events_of(first, dg.AssetMaterialization, properties.key)) == {"2026-07"}
    assert set(events_of(first, dg.AssetObservation, properties.key)) == {"2026-08"}
    assert partition_status(own_instance, properties.key, "2026-07") == AssetPartitionStatus.MATERIALIZED
    assert partition_status(own_instance, properties.key, "2026-08") is None  # PENDING files: not green


def test_retention_outside_dagster_is_an_observation_of_the_months_payloads(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    write_month(root, "2026-02", files=2)
    register_unregistered(engine, root, "another-system")
    from property_pipeline.processing.processor import PayloadProcessor

    PayloadProcessor(engine, root).run()
    cursor = tick(own_instance, resources, None).cursor

    report = apply_retention(engine, root, plan_retention(engine, root, keep_months=2, today=date(2026, 12, 1)))
    assert report.ok and report.deleted == 2
    result = tick(own_instance, resources, cursor)

    assert events_of(result, dg.AssetMaterialization, raw_property_payloads.key) == {}  # the same data
    (observed,) = events_of(result, dg.AssetObservation, raw_property_payloads.key).values()
    values = metadata_values(observed)
    assert (values["files_archived"], values["files_deleted_by_retention"], values["files_on_disk"]) == (2, 2, 0)
    assert result.asset_events == [observed]  # `properties` did not change


def test_the_sensor_runs_by_default() -> None:
    sensor = project_repository().get_sensor_def(SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
