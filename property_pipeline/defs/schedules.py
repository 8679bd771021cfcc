"""The daily capture schedule: one run per enabled campaign, into the current month, tagged with its campaign."""

import dagster as dg

from property_pipeline.defs.jobs import capture_job
from property_pipeline.defs.partitions import current_month
from property_pipeline.defs.raw_payloads import CAMPAIGN_TAG, CAPTURE_CRON
from property_pipeline.defs.resources import CampaignCatalog

REQUESTED_BY_TAG = "property_pipeline/requested_by"


@dg.schedule(
    job=capture_job,
    cron_schedule=CAPTURE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Captures the current month at 06:00 UTC: one run per enabled campaign of the campaigns file, "
    f"tagged {CAMPAIGN_TAG}=<id> (filter the Runs page by it). Runs of the same month wait for each other "
    "(one run per month at a time). Stopped until turned on (it calls the API): in the UI, or "
    "`dagster schedule start daily_capture_schedule`.",
)
def daily_capture_schedule(
    context: dg.ScheduleEvaluationContext, campaigns: CampaignCatalog
) -> list[dg.RunRequest] | dg.SkipReason:
    month = current_month(context.scheduled_execution_time)
    enabled = campaigns.enabled()  # a broken campaigns file fails the tick, with the file and line named
    if not enabled:
        return dg.SkipReason(f"no enabled campaign in {campaigns.path}")
    tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M") if context.scheduled_execution_time else month
    return [
        dg.RunRequest(
            run_key=f"{campaign.campaign_id}:{tick}",
            partition_key=month,
            tags={CAMPAIGN_TAG: campaign.campaign_id, REQUESTED_BY_TAG: "daily_capture_schedule"},
        )
        for campaign in enabled
    ]
