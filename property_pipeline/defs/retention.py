"""The retention job and its monthly schedule: archive, verify, then delete old months' COMPLETED files.

The same plan and the same code as `property-pipeline cleanup`; the policy (months kept, archive
or not) comes from the `retention_policy` resource, i.e. from the settings.
"""

from collections.abc import Iterator

import dagster as dg
from dagster._core.definitions.metadata import RawMetadataValue
from pydantic import Field

from property_pipeline.defs.metadata import markdown_table
from property_pipeline.defs.month_state import health_of, payload_metadata
from property_pipeline.defs.partitions import is_partition
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import PayloadStore, PipelineDatabase, RetentionPolicy
from property_pipeline.retention import RetentionPlan, RetentionReport, apply_retention, plan_retention

RETENTION_CRON = "0 3 1 * *"  # 03:00 UTC on the first day of every month


class RetentionRunConfig(dg.Config):
    """What a retention run does with its plan."""

    dry_run: bool = Field(default=False, description="Only report the plan; change nothing.")


@dg.op(out=dg.Out(dg.Nothing), description="Plan retention, then (unless dry_run) archive, verify and delete.")
def apply_retention_policy(
    context: dg.OpExecutionContext,
    config: RetentionRunConfig,
    payload_store: PayloadStore,
    database: PipelineDatabase,
    retention_policy: RetentionPolicy,
) -> Iterator[dg.Output]:
    root, engine = payload_store.store(), database.engine
    plan = plan_retention(engine, root, keep_months=retention_policy.keep_months)
    context.log.info(
        f"plan: keep {plan.oldest_kept_month} and later; {plan.files} files ({plan.bytes} bytes) to remove, "
        f"{plan.skipped} skipped"
    )
    report = None if config.dry_run else apply_retention(engine, root, plan, archive=retention_policy.archive)
    for month in report.months if report else []:
        if is_partition(month.month):
            context.log_event(
                dg.AssetObservation(
                    asset_key=raw_property_payloads.key,
                    partition=month.month,
                    metadata={
                        **payload_metadata(engine, health_of(engine, month.month)),
                        "retention_archive": month.archive_name or "",
                        "retention_files_deleted": len(month.deleted) + len(month.healed),
                        "retention_bytes_deleted": month.bytes_deleted,
                    },
                )
            )
    yield dg.Output(None, metadata=retention_summary(plan, report, retention_policy.archive))
    if report is not None and not report.ok:
        failures = [(m.month, f.file_path or "(whole month)", f.reason) for m in report.months for f in m.failures]
        raise dg.Failure(
            description=f"retention could not finish {len(failures)} item(s); nothing unverified was deleted",
            metadata={"failures": markdown_table(["month", "file", "reason"], failures)},
        )


def retention_summary(
    plan: RetentionPlan, report: RetentionReport | None, archive: bool
) -> dict[str, RawMetadataValue]:
    """The run summary: the plan per month and, unless a dry run, what was archived and deleted."""
    done = {m.month: m for m in report.months} if report else {}
    rows = [
        [
            m.month,
            len(m.files),
            m.bytes,
            len(m.skipped),
            done[m.month].archive_name if m.month in done else "",
            len(done[m.month].deleted) + len(done[m.month].healed) if m.month in done else 0,
        ]
        for m in plan.months
    ]
    return {
        "dry_run": report is None,
        "archive": archive,
        "oldest_kept_month": plan.oldest_kept_month,
        "files_planned": plan.files,
        "bytes_planned": plan.bytes,
        "files_skipped": plan.skipped,
        "files_deleted": report.deleted if report else 0,
        "bytes_deleted": report.bytes_deleted if report else 0,
        "months": markdown_table(["month", "files", "bytes", "skipped", "archive", "deleted"], rows),
        "skipped_files": markdown_table(
            ["month", "file", "reason"], [[m.month, s.file_path, s.reason] for m in plan.months for s in m.skipped]
        ),
    }


@dg.job(description="Archive, verify, then delete the COMPLETED payload files of months older than the kept window.")
def retention_job() -> None:
    apply_retention_policy()


retention_schedule = dg.ScheduleDefinition(
    name="monthly_retention_schedule",
    job=retention_job,
    cron_schedule=RETENTION_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Runs retention on the first day of every month. Stopped until turned on: in the UI, or "
    "`dagster schedule start monthly_retention_schedule`.",
)
