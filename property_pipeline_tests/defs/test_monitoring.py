"""Monitoring in Dagster: the status report's metadata, one alert per failed or stuck file, webhooks tolerated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import Engine, update

from property_pipeline.db import status
from property_pipeline.db.schema import batch_file_status, utcnow
from property_pipeline.defs.checks import ALL_CHECKS
from property_pipeline.defs.jobs import record_month_state_job
from property_pipeline.defs.monitoring import build_alert_sensor, build_run_failure_sensor, pipeline_status_report
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.defs.conftest import ALL_ASSETS_AND_CHECKS, metadata_values, write_month
from property_pipeline_tests.monitoring.test_alerts import Receiver

DEAD_WEBHOOK = "http://127.0.0.1:9/nothing-listens-here"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def one_failed_one_stuck_one_pending(engine: Engine, root: PayloadRoot) -> None:
    """2026-11: two COMPLETED files, then one FAILED, one stuck in PROCESSING past its lease, one PENDING."""
    write_month(root, "2026-11", files=5, per_file=4)
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run(limit=2)
    failed = status.claim_next_pending(engine, "w1", 60)
    assert failed is not None
    status.mark_failed(engine, failed.file_id, "w1", "payload is not valid JSON at byte 17", processing_time_ms=2)
    stuck = status.claim_next_pending(engine, "w2", 60)
    assert stuck is not None
    with engine.begin() as conn:
        conn.execute(
            update(batch_file_status)
            .where(batch_file_status.c.file_id == stuck.file_id)
            .values(locked_until=utcnow() - timedelta(minutes=1))
        )


def tick(sensor: dg.SensorDefinition, resources: dict[str, Any], instance: dg.DagsterInstance) -> str:
    """One evaluation of the sensor, as the daemon runs it; returns the tick's skip message."""
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor.evaluate_tick(context)
    assert result.run_requests == []
    return result.skip_message or ""


def test_status_report_records_numbers_for_trends_and_a_markdown_report_naming_the_error(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    one_failed_one_stuck_one_pending(engine, root)

    result = dg.materialize(
        [*ALL_ASSETS_AND_CHECKS, pipeline_status_report],
        selection=dg.AssetSelection.assets(pipeline_status_report),
        resources=resources,
        instance=instance,
    )

    (materialization,) = result.asset_materializations_for_node("pipeline_status_report")
    values = metadata_values(materialization)
    assert (values["backlog_files"], values["failed_files"], values["records_loaded"]) == (1, 1, 8)
    assert values["records_quarantined"] == 0 and values["rows_per_second"] > 0
    assert 0 <= values["oldest_pending_age_seconds"] < 300
    assert isinstance(materialization.metadata["backlog_files"], dg.IntMetadataValue)  # plotted by the UI
    assert isinstance(materialization.metadata["rows_per_second"], dg.FloatMetadataValue)
    assert isinstance(materialization.metadata["report"], dg.MarkdownMetadataValue)
    assert "payload is not valid JSON at byte 17" in values["report"]
    assert "| 2026-11 | camp-1 | 1 | 1 | 2 | 1 | 8 | 0 |" in values["report"]


def test_alert_sensor_raises_one_alert_per_failed_and_stuck_file_across_ticks_and_delivers_them(
    engine: Engine,
    root: PayloadRoot,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    receiver: Receiver,
    capfd: pytest.CaptureFixture[str],
) -> None:
    one_failed_one_stuck_one_pending(engine, root)
    sensor = build_alert_sensor(webhook_url=receiver.url, pending_max_age_seconds=3600)

    first = tick(sensor, resources, instance)
    later = [tick(sensor, resources, instance) for _ in range(3)]

    assert first.startswith("2 new alert(s)") and "2 delivered" in first
    assert all(message.startswith("no new alerts") for message in later)
    kinds = sorted(body["text"].split(":")[0] for body in receiver.bodies)
    assert kinds == ["[property_pipeline] failed", "[property_pipeline] stuck"]
    failed = next(body["text"] for body in receiver.bodies if "FAILED" in body["text"])
    assert "payload is not valid JSON at byte 17" in failed and "retry --file-id" in failed
    warnings = [line for line in capfd.readouterr().err.splitlines() if "WARNING - ALERT" in line]  # the tick log
    assert len(warnings) == 2 and any("ALERT stuck (month 2026-11)" in line for line in warnings)


@pytest.mark.slow
def test_an_unreachable_webhook_never_fails_the_tick_and_the_alert_is_delivered_once_it_answers(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    one_failed_one_stuck_one_pending(engine, root)

    started = time.monotonic()
    message = tick(build_alert_sensor(webhook_url=DEAD_WEBHOOK, pending_max_age_seconds=3600), resources, instance)
    assert time.monotonic() - started < 30  # bounded retries, well within the 60 s tick limit
    assert message.startswith("2 new alert(s)") and "2 not delivered" in message and receiver.bodies == []

    message = tick(build_alert_sensor(webhook_url=receiver.url, pending_max_age_seconds=3600), resources, instance)
    assert message.endswith("2 delivered, 0 not delivered") and len(receiver.bodies) == 2


def test_a_spent_delivery_budget_ends_the_tick_and_leaves_the_rest_for_the_next(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    one_failed_one_stuck_one_pending(engine, root)
    sensor = build_alert_sensor(webhook_url=receiver.url, pending_max_age_seconds=3600, delivery_budget_seconds=-1)
    assert "time budget spent" in tick(sensor, resources, instance) and receiver.bodies == []
    tick(build_alert_sensor(webhook_url=receiver.url, pending_max_age_seconds=3600), resources, instance)
    assert len(receiver.bodies) == 2


def test_an_old_pending_backlog_raises_one_alert(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    write_month(root, "2026-11", files=2)
    register_unregistered(engine, root, "test")
    with engine.begin() as conn:  # registered three hours ago
        conn.execute(update(batch_file_status).values(created_at=utcnow() - timedelta(hours=3)))
    sensor = build_alert_sensor(webhook_url=receiver.url, pending_max_age_seconds=2 * 3600)

    messages = [tick(sensor, resources, instance) for _ in range(3)]

    assert messages[0].startswith("1 new alert(s)") and all(m.startswith("no new alerts") for m in messages[1:])
    (body,) = receiver.bodies
    assert (
        body["text"].startswith("[property_pipeline] backlog: PENDING backlog is old") and "limit 2.0 h" in body["text"]
    )


def test_a_young_backlog_raises_nothing(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    write_month(root, "2026-11", files=2)
    register_unregistered(engine, root, "test")
    sensor = build_alert_sensor(webhook_url=None, pending_max_age_seconds=2 * 3600)
    assert tick(sensor, resources, instance).startswith("no new alerts (0 current")


@dg.op
def broken_step() -> None:
    raise RuntimeError("the payload folder is not mounted")


@dg.job
def failing_job() -> None:
    broken_step()


def run_failure_ticks(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    cursor: str | None,
    times: int = 1,
) -> str | None:
    """Evaluate the run-failure sensor as the daemon does, `times` times from the same cursor."""
    for _ in range(times):
        with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
            result = sensor.evaluate_tick(context)
    return result.cursor


@pytest.mark.parametrize("reachable", [True, False], ids=["webhook-up", "webhook-down"])
def test_the_run_failure_sensor_alerts_once_with_an_absolute_link_to_the_run(
    resources: dict[str, Any], own_instance: dg.DagsterInstance, receiver: Receiver, reachable: bool
) -> None:
    sensor = build_run_failure_sensor(
        webhook_url=receiver.url if reachable else DEAD_WEBHOOK, ui_base_url="https://dagster.example.org/"
    )
    cursor = run_failure_ticks(sensor, own_instance, resources, None)  # the sensor starts watching now
    result = failing_job.execute_in_process(
        instance=own_instance, raise_on_error=False, tags={"dagster/partition": "2026-11"}
    )
    assert not result.success

    run_failure_ticks(sensor, own_instance, resources, cursor, times=2)  # the same failure seen twice

    if reachable:
        (body,) = receiver.bodies
        assert f"run {result.run_id[:8]} (job failing_job) of month 2026-11 failed" in body["text"]
        assert body["text"].endswith(f"See the run: https://dagster.example.org/runs/{result.run_id}")
        assert body["alert_key"] == f"run_failure:{result.run_id}"
    else:
        assert receiver.bodies == []
        # Recorded all the same: the alert sensor delivers it once the webhook answers.
        tick(build_alert_sensor(webhook_url=receiver.url, pending_max_age_seconds=3600), resources, own_instance)
        (body,) = receiver.bodies
        assert body["alert_key"] == f"run_failure:{result.run_id}"


def test_the_run_failure_sensor_watches_the_asset_job_of_materialize_and_backfills(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    (lost,) = write_month(root, "2026-11", files=1)
    register_unregistered(engine, root, "test")
    lost.path.rename(lost.path.with_name(".away"))
    sensor = build_run_failure_sensor(webhook_url=receiver.url)
    cursor = run_failure_ticks(sensor, own_instance, resources, None)
    asset_job = dg.Definitions(
        assets=[raw_property_payloads, properties], asset_checks=ALL_CHECKS, resources=resources
    ).resolve_implicit_global_asset_job_def()

    # What the Materialize button and an asset backfill launch: the implicit asset job.
    result = asset_job.execute_in_process(
        partition_key="2026-11", asset_selection=[properties.key], instance=own_instance, raise_on_error=False
    )
    assert not result.success and result.dagster_run.job_name == "__ASSET_JOB"
    run_failure_ticks(sensor, own_instance, resources, cursor, times=2)

    (body,) = receiver.bodies
    assert f"run {result.run_id[:8]} (a Materialize or backfill run) of month 2026-11 failed" in body["text"]
    assert f"http://127.0.0.1:3000/runs/{result.run_id}" in body["text"]


def test_record_month_state_runs_do_not_alert_again_for_files_that_have_their_own_alert(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    (lost,) = write_month(root, "2026-11", files=1)
    register_unregistered(engine, root, "test")
    lost.path.rename(lost.path.with_name(".away"))
    PayloadProcessor(engine, root).run()
    sensor = build_run_failure_sensor(webhook_url=receiver.url)
    cursor = run_failure_ticks(sensor, own_instance, resources, None)
    job = dg.Definitions(
        assets=[raw_property_payloads, properties],
        asset_checks=ALL_CHECKS,
        jobs=[record_month_state_job],
        resources=resources,
    ).resolve_job_def("record_month_state")
    assert not job.execute_in_process(partition_key="2026-11", instance=own_instance, raise_on_error=False).success
    other = failing_job.execute_in_process(instance=own_instance, raise_on_error=False)

    run_failure_ticks(sensor, own_instance, resources, cursor)

    (body,) = receiver.bodies  # the other failure is seen, the record run is not alerted
    assert body["alert_key"] == f"run_failure:{other.run_id}"


@pytest.fixture
def own_instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance
