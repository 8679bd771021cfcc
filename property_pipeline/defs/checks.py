"""Asset checks: the month's files are intact, row counts agree, nothing is stuck, no FAILED file is left.

The checks are not partitioned (a partitioned `@asset_check` is a preview feature in Dagster 1.13):
in a run that materializes a month they check that month, read from the run's partition; run on
their own (the UI's "Execute" on a check) they check every month, like `property-pipeline verify`.
"""

import dagster as dg

from property_pipeline.db.queries import problem_files, row_count_mismatches
from property_pipeline.defs.metadata import markdown_table, month_label
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import PayloadStore, PipelineDatabase
from property_pipeline.integrity import verify_files


def month_in_scope(context: dg.AssetCheckExecutionContext) -> str | None:
    """The run's month, or None (every month) when the check runs outside a partitioned run."""
    return context.partition_key if context.has_partition_key else None


@dg.asset_check(
    asset=raw_property_payloads,
    blocking=True,
    description="Every registered file of the month that retention has not removed is on disk and matches "
    "its SHA-256. Blocking: a month with a changed or missing file is not processed in the same run.",
)
def payload_files_intact(
    context: dg.AssetCheckExecutionContext, payload_store: PayloadStore, database: PipelineDatabase
) -> dg.AssetCheckResult:
    month = month_in_scope(context)
    report = verify_files(database.engine, payload_store.root(), month)
    return dg.AssetCheckResult(
        passed=report.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if report.ok else f"{len(report.problems)} payload file(s) missing or changed; restore them",
        metadata={
            "month": month_label(month),
            "files_checked": report.checked,
            "problems": len(report.problems),
            "offending_files": markdown_table(
                ["file", "path", "problem"], [[p.file_id, p.file_path, p.problem] for p in report.problems]
            ),
        },
    )


@dg.asset_check(
    asset=properties,
    blocking=True,
    description="The sum of success_count over the month's COMPLETED files equals the rows those files "
    "delivered (file_properties).",
)
def row_counts_agree(context: dg.AssetCheckExecutionContext, database: PipelineDatabase) -> dg.AssetCheckResult:
    month = month_in_scope(context)
    expected, delivered, mismatches = row_count_mismatches(database.engine, month)
    return dg.AssetCheckResult(
        passed=not mismatches,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "month": month_label(month),
            "success_count_total": expected,
            "rows_delivered": delivered,
            "offending_files": markdown_table(
                ["file", "path", "success_count", "rows delivered"],
                [[m.file_id, m.file_path, m.success_count, m.link_rows] for m in mismatches],
            ),
        },
    )


@dg.asset_check(
    asset=properties,
    description="No file of the month is PROCESSING past its lease (its processor died). A warning: the next "
    "processing run of any month puts such files back to PENDING.",
)
def no_stuck_files(context: dg.AssetCheckExecutionContext, database: PipelineDatabase) -> dg.AssetCheckResult:
    month = month_in_scope(context)
    stuck, _failed = problem_files(database.engine, month)
    return dg.AssetCheckResult(
        passed=not stuck,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "month": month_label(month),
            "stuck_files": len(stuck),
            "offending_files": markdown_table(
                ["file", "path", "worker", "lease ended"],
                [[f.file_id, f.file_path, f.locked_by, f.locked_until] for f in stuck],
            ),
        },
    )


@dg.asset_check(
    asset=properties,
    blocking=True,
    description="No FAILED file is left in the month. Fix the cause, then materialize the month again with "
    "`include_failed: true` (or backfill the months with that config).",
)
def no_failed_files(context: dg.AssetCheckExecutionContext, database: PipelineDatabase) -> dg.AssetCheckResult:
    month = month_in_scope(context)
    _stuck, failed = problem_files(database.engine, month)
    return dg.AssetCheckResult(
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if not failed else f"{len(failed)} FAILED file(s); retry with include_failed: true",
        metadata={
            "month": month_label(month),
            "failed_files": len(failed),
            "offending_files": markdown_table(
                ["file", "path", "attempts", "error"],
                [[f.file_id, f.file_path, f.attempts, f.error_details] for f in failed],
            ),
        },
    )


ALL_CHECKS = [payload_files_intact, row_counts_agree, no_stuck_files, no_failed_files]
