"""`raw_property_payloads`: a month's folder of payload files, captured from the API or dropped in by others.

A materialization carries a data version made of the month's registered files, so a capture or a
registration that found nothing new records a materialization whose data version is unchanged and
whose `files_new` is 0: `properties` downstream is not flagged as having newer upstream data. A
capture that did not finish (the API down, a key refused) fails the step without a materialization;
what it stored is recorded on an observation and stays registered.
"""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
from pydantic import Field
from sqlalchemy import Engine

from property_pipeline.capture import Campaign, CampaignConfigError, CaptureReport, capture_campaigns
from property_pipeline.defs.metadata import markdown_table
from property_pipeline.defs.month_state import RAW_KEY, health_of, payload_metadata, raw_data_version
from property_pipeline.defs.partitions import current_month, monthly_partitions
from property_pipeline.defs.resources import CampaignCatalog, PayloadStore, PipelineDatabase, PropertyApi
from property_pipeline.registration import register_unregistered
from property_pipeline.store import backend

GROUP = "property_pipeline"
OWNERS = ["team:data-engineering"]
CAMPAIGN_TAG = "property_pipeline/campaign"  # a run tag naming the one campaign a capture run fetches
CAPTURE_CRON = "0 6 * * *"  # 06:00 UTC every day: the capture schedule
# The daily capture (06:00) is expected to have landed by 08:00 UTC; older than that, the asset is not fresh.
FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 8 * * *", lower_bound_delta=timedelta(hours=2))


class CaptureConfig(dg.Config):
    """What a capture of the current month fetches."""

    campaign: str | None = Field(
        default=None,
        description="Capture only this campaign id of the campaigns file (enabled or not). Default: every enabled "
        f"campaign. The run tag {CAMPAIGN_TAG} does the same.",
    )
    max_pages: int | None = Field(default=None, ge=1, description="Stop each campaign after this many pages.")
    resume: bool = Field(default=False, description="Continue each campaign's last unfinished capture.")


@dg.asset(
    key=RAW_KEY,
    partitions_def=monthly_partitions,
    group_name=GROUP,
    owners=OWNERS,
    tags={"layer": "raw", "source": "property-search-api"},
    kinds={"json", "file"},
    freshness_policy=FRESHNESS,
    description=(
        "The month's folder of immutable API pages, logs/property_payloads/YYYY-MM/. Materializing the "
        "current month captures every enabled campaign of the campaigns file (or one: config `campaign`, or "
        f"the run tag {CAMPAIGN_TAG}); any month registers the files on disk that the database does not know "
        "yet (PENDING). No property row is written. Its data version names the month's registered files."
    ),
)
def raw_property_payloads(
    context: dg.AssetExecutionContext,
    config: CaptureConfig,
    payload_store: PayloadStore,
    database: PipelineDatabase,
    property_api: PropertyApi,
    campaigns: CampaignCatalog,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    month = context.partition_key
    root, engine = payload_store.store(), database.engine
    before = health_of(engine, month)
    campaign = config.campaign or context.run.tags.get(CAMPAIGN_TAG)
    captures: list[CaptureReport] = []
    failures: list[str] = []
    if month == current_month():
        captures, failures = _capture(context, engine, root, property_api, campaigns, config, campaign)
    else:
        context.log.info(f"{month} is a past month: nothing is captured; the files on disk are registered and reported")
    registration = register_unregistered(
        engine, root, f"dagster-run:{context.run.run_id}", month, rules=payload_store.drop_in_rules()
    )
    for path, reason in registration.skipped:
        context.log.warning(f"not registered: {path}: {reason}")
    after = health_of(engine, month)
    metadata = payload_metadata(
        engine, after, captures=captures, registration=registration, files_new=after.files - before.files
    )
    if failures:
        # No materialization: the month's capture did not finish. What it stored is registered and recorded here.
        yield dg.AssetObservation(asset_key=RAW_KEY, partition=month, metadata=metadata)
        raise dg.Failure(
            description=f"{len(failures)} campaign(s) of {month} were not captured completely; "
            f"{metadata['files_new']} new files were stored and registered (rerun with resume: true)",
            metadata={"errors": markdown_table(["error"], [[failure] for failure in failures])},
            allow_retries=False,
        )
    context.log.info(f"{month}: {metadata['files_new']} new files; data version {raw_data_version(after)}")
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(raw_data_version(after)))


def _capture(
    context: dg.AssetExecutionContext,
    engine: Engine,
    root: backend.PayloadStore,
    property_api: PropertyApi,
    campaigns: CampaignCatalog,
    config: CaptureConfig,
    campaign: str | None,
) -> tuple[list[CaptureReport], list[str]]:
    """Capture every enabled campaign, or the one named; one campaign's failure does not stop the others."""
    try:
        chosen: list[Campaign] = [campaigns.named(campaign)] if campaign else campaigns.enabled()
    except CampaignConfigError as error:
        return [], [str(error)]

    def log_report(report: CaptureReport) -> None:
        context.log.info(
            f"campaign {report.campaign_id}: {report.pages} pages, {report.records} records, {report.bytes} bytes"
        )

    with property_api.client() as client:
        done = capture_campaigns(
            engine, root, client, chosen, max_pages=config.max_pages, resume=config.resume, on_report=log_report
        )
    for failure in done.failures:
        context.log.error(failure)
    return done.reports, done.failures
