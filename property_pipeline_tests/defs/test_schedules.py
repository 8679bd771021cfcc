"""Schedules: capture daily into the current month, retention on the first day of every month."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from property_pipeline.definitions import defs


def evaluate(schedule_name: str, when: datetime) -> dg.ScheduleExecutionData:
    repository = defs().get_repository_def()
    schedule = repository.get_schedule_def(schedule_name)
    context = dg.build_schedule_context(scheduled_execution_time=when, repository_def=repository)
    return schedule.evaluate_tick(context)


def test_the_daily_capture_captures_into_the_month_it_runs_in() -> None:
    repository = defs().get_repository_def()
    schedule = repository.get_schedule_def("daily_capture_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == (
        "0 6 * * *",
        "UTC",
        "capture_payloads",
    )
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # it calls the API: turned on deliberately

    mid_month = evaluate("daily_capture_schedule", datetime(2026, 10, 15, 6, tzinfo=UTC))
    first_day = evaluate("daily_capture_schedule", datetime(2026, 10, 1, 6, tzinfo=UTC))
    assert [r.partition_key for r in mid_month.run_requests or []] == ["2026-10"]
    assert [r.partition_key for r in first_day.run_requests or []] == ["2026-10"]


def test_retention_runs_on_the_first_day_of_every_month() -> None:
    repository = defs().get_repository_def()
    schedule = repository.get_schedule_def("monthly_retention_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == (
        "0 3 1 * *",
        "UTC",
        "retention_job",
    )
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    result = evaluate("monthly_retention_schedule", datetime(2026, 11, 1, 3, tzinfo=UTC))
    assert len(result.run_requests or []) == 1 and result.run_requests[0].partition_key is None
