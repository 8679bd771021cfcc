"""The daily capture schedule: every enabled campaign, into the current month."""

import dagster as dg

from property_pipeline.defs.jobs import capture_job
from property_pipeline.defs.partitions import current_month

CAPTURE_CRON = "0 6 * * *"  # 06:00 UTC every day


@dg.schedule(
    job=capture_job,
    cron_schedule=CAPTURE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Captures every enabled campaign of the campaigns file into the current month. Stopped until "
    "turned on (it calls the API): in the UI, or `dagster schedule start daily_capture_schedule`.",
)
def daily_capture_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    month = current_month(context.scheduled_execution_time)
    return dg.RunRequest(partition_key=month, tags={"property_pipeline/requested_by": "daily_capture_schedule"})
