"""`raw_property_payloads`: a month's folder of payload files, captured from the API or dropped in by others."""

from collections.abc import Iterator

import dagster as dg
from pydantic import Field
from sqlalchemy import Engine

from property_pipeline.capture import CampaignConfigError, CaptureReport, capture_campaigns
from property_pipeline.db.queries import campaign_totals
from property_pipeline.defs.metadata import markdown_table
from property_pipeline.defs.partitions import current_month, monthly_partitions
from property_pipeline.defs.resources import CampaignCatalog, PayloadStore, PipelineDatabase, PropertyApi
from property_pipeline.registration import RegistrationReport, register_unregistered
from property_pipeline.store.layout import PayloadRoot

GROUP = "property_pipeline"


class CaptureConfig(dg.Config):
    """How far a capture of the current month goes."""

    max_pages: int | None = Field(default=None, ge=1, description="Stop each campaign after this many pages.")
    resume: bool = Field(default=False, description="Continue each campaign's last unfinished capture.")


@dg.asset(
    partitions_def=monthly_partitions,
    group_name=GROUP,
    kinds={"json"},
    description=(
        "The month's folder of immutable API pages, logs/property_payloads/YYYY-MM/. Materializing the "
        "current month captures every enabled campaign of the campaigns file; any month registers the "
        "files on disk that the database does not know yet (PENDING). No property row is written."
    ),
)
def raw_property_payloads(
    context: dg.AssetExecutionContext,
    config: CaptureConfig,
    payload_store: PayloadStore,
    database: PipelineDatabase,
    property_api: PropertyApi,
    campaigns: CampaignCatalog,
) -> Iterator[dg.MaterializeResult]:
    month = context.partition_key
    root, engine = payload_store.root(), database.engine
    captures: list[CaptureReport] = []
    failures: list[str] = []
    if month == current_month():
        captures, failures = _capture_enabled_campaigns(context, engine, root, property_api, campaigns, config)
    else:
        context.log.info(f"{month} is a past month: nothing is captured; the files on disk are registered and reported")
    registration = register_unregistered(
        engine, root, f"dagster-run:{context.run.run_id}", month, rules=payload_store.drop_in_rules()
    )
    for path, reason in registration.skipped:
        context.log.warning(f"not registered: {path}: {reason}")
    yield dg.MaterializeResult(metadata=month_metadata(engine, month, captures, registration))
    if failures:
        # The pages stored so far are registered and reported above; the run still fails so it is noticed.
        raise dg.Failure(
            description=f"{len(failures)} campaign(s) of {month} were not captured completely",
            metadata={"errors": markdown_table(["error"], [[failure] for failure in failures])},
        )


def _capture_enabled_campaigns(
    context: dg.AssetExecutionContext,
    engine: Engine,
    root: PayloadRoot,
    property_api: PropertyApi,
    campaigns: CampaignCatalog,
    config: CaptureConfig,
) -> tuple[list[CaptureReport], list[str]]:
    """Capture every enabled campaign; one campaign's failure does not stop the others."""
    try:
        enabled = campaigns.enabled()
    except CampaignConfigError as error:
        return [], [str(error)]

    def log_report(report: CaptureReport) -> None:
        context.log.info(
            f"campaign {report.campaign_id}: {report.pages} pages, {report.records} records, {report.bytes} bytes"
        )

    with property_api.client() as client:
        done = capture_campaigns(
            engine, root, client, enabled, max_pages=config.max_pages, resume=config.resume, on_report=log_report
        )
    for failure in done.failures:
        context.log.error(failure)
    return done.reports, done.failures


def month_metadata(
    engine: Engine, month: str, captures: list[CaptureReport], registration: RegistrationReport
) -> dict[str, object]:
    """What the month's folder holds (files, records, bytes, a table per campaign) and what this run added."""
    totals = campaign_totals(engine, month)
    pages = {report.campaign_id: report.pages for report in captures}
    return {
        "files": sum(t.files for t in totals),
        "records": sum(t.records for t in totals),
        "bytes": sum(t.bytes for t in totals),
        "campaigns": markdown_table(
            ["campaign", "files", "records", "bytes", "pending", "processing", "completed", "failed", "pages captured"],
            [
                [
                    t.campaign_id,
                    t.files,
                    t.records,
                    t.bytes,
                    t.pending,
                    t.processing,
                    t.completed,
                    t.failed,
                    pages.get(t.campaign_id, 0),
                ]
                for t in totals
            ],
        ),
        "pages_captured": sum(report.pages for report in captures),
        "records_captured": sum(report.records for report in captures),
        "files_registered_from_disk": len(registration.registered),
        "duplicates_recorded": len(registration.duplicates),
        "files_skipped": markdown_table(["path", "reason"], registration.skipped),
    }
