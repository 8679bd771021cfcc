"""Schedules: capture daily into the current month, retention on the first day of every month."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from property_pipeline.definitions import defs
from property_pipeline.defs.raw_payloads import CAMPAIGN_TAG
from property_pipeline.defs.resources import CampaignCatalog


def evaluate(schedule_name: str, when: datetime, campaigns: Path | None = None) -> dg.ScheduleExecutionData:
    repository = defs().get_repository_def()
    schedule = repository.get_schedule_def(schedule_name)
    resources = {"campaigns": CampaignCatalog(path=str(campaigns))} if campaigns else None
    with dg.build_schedule_context(
        scheduled_execution_time=when, repository_def=repository, resources=resources
    ) as context:
        return schedule.evaluate_tick(context)


def test_the_daily_capture_runs_each_enabled_campaign_into_the_month_it_runs_in(campaigns_file: Path) -> None:
    repository = defs().get_repository_def()
    schedule = repository.get_schedule_def("daily_capture_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == (
        "0 6 * * *",
        "UTC",
        "capture_payloads",
    )
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # it calls the API: turned on deliberately

    mid_month = evaluate("daily_capture_schedule", datetime(2026, 10, 15, 6, tzinfo=UTC), campaigns_file)
    first_day = evaluate("daily_capture_schedule", datetime(2026, 10, 1, 6, tzinfo=UTC), campaigns_file)
    assert [r.partition_key for r in mid_month.run_requests or []] == ["2026-10"]
    assert [r.partition_key for r in first_day.run_requests or []] == ["2026-10"]
    (request,) = mid_month.run_requests or []  # off-campaign is disabled in the file
    assert request.tags[CAMPAIGN_TAG] == "tx-sfr" and request.run_key == "tx-sfr:2026-10-15T06:00"


def test_each_enabled_campaign_gets_its_own_tagged_run(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.yaml"
    path.write_text("campaigns:\n  - id: a\n    criteria: {state: TX}\n  - id: b\n    criteria: {state: CA}\n")
    result = evaluate("daily_capture_schedule", datetime(2026, 10, 15, 6, tzinfo=UTC), path)
    assert [r.tags[CAMPAIGN_TAG] for r in result.run_requests or []] == ["a", "b"]

    path.write_text("campaigns:\n  - id: a\n    enabled: false\n    criteria: {state: TX}\n")
    idle = evaluate("daily_capture_schedule", datetime(2026, 10, 15, 6, tzinfo=UTC), path)
    assert idle.run_requests == [] and "no enabled campaign" in (idle.skip_message or "")


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
