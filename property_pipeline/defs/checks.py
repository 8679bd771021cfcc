"""Asset checks, one verdict per month: the month's files are intact, row counts agree, nothing is stuck,
no FAILED file is left, and not too many records were quarantined.

The checks are partitioned by month (`partitions_def=monthly_partitions`), so the UI keeps each month's
verdict and history apart, and executing a check from the UI asks for the month to check. Partitioned
asset checks are a preview feature of Dagster 1.13 (pinned in pyproject.toml, tested in
property_pipeline_tests/defs/test_checks.py); they are the only way for a verdict to belong to one
month in this release. Dagster warns (PreviewWarning) when such a check is declared: the warning is
filtered here, for that one message, so loading the code location stays free of warnings.

The checks on `properties` read the database only; their verdicts are built in `defs/month_state.py`,
where the `properties` asset (when it fails a month) and the month sensor (for work done outside
Dagster) build the same verdicts.
"""

import warnings

import dagster as dg

from property_pipeline.defs.metadata import markdown_table
from property_pipeline.defs.month_state import (
    failed_verdict,
    health_of,
    quarantine_verdict,
    row_counts_verdict,
    stuck_verdict,
)
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import PayloadStore, PipelineDatabase, QuarantinePolicy
from property_pipeline.integrity import VerificationProblem, verify_files

# The one warning Dagster 1.13 gives for a partitioned check, deliberately accepted (see the docstring).
PARTITIONED_CHECK_PREVIEW = r"Specifying a partitions_def on an AssetCheckSpec is currently in preview"

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=PARTITIONED_CHECK_PREVIEW, category=dg.PreviewWarning)

    @dg.asset_check(
        asset=raw_property_payloads,
        partitions_def=monthly_partitions,
        blocking=True,
        description="Every registered file of the month that retention has not removed is on disk and matches "
        "its SHA-256. Blocking: a month with a changed or missing file is not processed in the same run.",
    )
    def payload_files_intact(
        context: dg.AssetCheckExecutionContext, payload_store: PayloadStore, database: PipelineDatabase
    ) -> dg.AssetCheckResult:
        month = context.partition_key
        report = verify_files(database.engine, payload_store.store(), month)
        return dg.AssetCheckResult(
            passed=report.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None
            if report.ok
            else f"{len(report.problems)} payload file(s) missing or changed; restore them",
            metadata={
                "month": month,
                "files_checked": report.checked,
                "problems": len(report.problems),
                "offending_files": _problems_table(report.problems),
            },
        )

    @dg.asset_check(
        asset=properties,
        partitions_def=monthly_partitions,
        blocking=True,
        description="The sum of success_count over the month's COMPLETED files equals the rows those files "
        "delivered (file_properties).",
    )
    def row_counts_agree(context: dg.AssetCheckExecutionContext, database: PipelineDatabase) -> dg.AssetCheckResult:
        return row_counts_verdict(database.engine, context.partition_key).result()

    @dg.asset_check(
        asset=properties,
        partitions_def=monthly_partitions,
        description="No file of the month is PROCESSING past its lease (its processor died). A warning: the next "
        "processing run of any month puts such files back to PENDING.",
    )
    def no_stuck_files(context: dg.AssetCheckExecutionContext, database: PipelineDatabase) -> dg.AssetCheckResult:
        return stuck_verdict(database.engine, context.partition_key).result()

    @dg.asset_check(
        asset=properties,
        partitions_def=monthly_partitions,
        blocking=True,
        description="No FAILED file is left in the month. Fix the cause, then materialize the month again with "
        "`include_failed: true` (or backfill the months with the retry_failed_months job).",
    )
    def no_failed_files(context: dg.AssetCheckExecutionContext, database: PipelineDatabase) -> dg.AssetCheckResult:
        return failed_verdict(database.engine, context.partition_key).result()

    @dg.asset_check(
        asset=properties,
        partitions_def=monthly_partitions,
        description="At most PROPERTY_PIPELINE_QUARANTINE_WARN_SHARE (default 1%) of the records of the month's "
        "COMPLETED files were quarantined. A warning: the records are kept in quarantined_records with their reason.",
    )
    def quarantine_rate_acceptable(
        context: dg.AssetCheckExecutionContext, database: PipelineDatabase, quarantine_policy: QuarantinePolicy
    ) -> dg.AssetCheckResult:
        health = health_of(database.engine, context.partition_key)
        return quarantine_verdict(health, quarantine_policy.warn_share).result()


def _problems_table(problems: list[VerificationProblem]) -> dg.MetadataValue:
    return markdown_table(["file", "path", "problem"], [[p.file_id, p.file_path, p.problem] for p in problems])


ALL_CHECKS = [payload_files_intact, row_counts_agree, no_stuck_files, no_failed_files, quarantine_rate_acceptable]
