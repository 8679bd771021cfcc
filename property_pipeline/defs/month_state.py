"""A month's state in Dagster's terms: the metadata, data version and check verdicts of one month.

Everything Dagster records about a month is built here from the same core query
(`property_pipeline.db.queries.month_health`), so a run of an asset and the month sensor (which
reports work done outside Dagster) record the same numbers under the same names. `month_files_state`
is a readable one-line summary of the month's files; the month sensor compares it with the latest
recorded one to tell whether Dagster's view of the month is behind the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from sqlalchemy import Engine

from property_pipeline.capture import CaptureReport
from property_pipeline.db.queries import (
    MonthHealth,
    campaign_totals,
    month_health,
    problem_files,
    row_count_mismatches,
    table_row_count,
)
from property_pipeline.defs.metadata import markdown_table
from property_pipeline.processing.processor import ProcessingReport
from property_pipeline.registration import RegistrationReport
from property_pipeline.states import SETTLED, FileStatus

RAW_KEY = dg.AssetKey("raw_property_payloads")
PROPERTIES_KEY = dg.AssetKey("properties")
STATE_KEY = "month_files_state"
DATA_VERSION_KEY = "month_data_version"
DATA_VERSION_TAG = "dagster/data_version"  # where an AssetMaterialization carries its data version
FIRST_ERRORS = 10
KNOWN_STATES = tuple(FileStatus)


def health_of(engine: Engine, month: str) -> MonthHealth:
    """The month's health; a month without any registered file is an empty, settled month."""
    return month_health(engine, [month]).get(month) or MonthHealth(month, {}, 0, 0, 0, 0, 0, 0, 0)


def files_by_state(health: MonthHealth) -> dict[str, int]:
    """`files_total` and `files_<state>` for every state (every known one always, so the UI can plot them)."""
    states = {f"files_{state.lower()}": health.count(state) for state in KNOWN_STATES}
    states.update(
        {f"files_{state.lower()}": n for state, n in health.files_by_status.items() if state not in KNOWN_STATES}
    )
    return {"files_total": health.files, **states}


def raw_data_version(health: MonthHealth) -> str:
    """Registered files are never removed from the table and ids only grow: count and newest id name the set."""
    return f"{health.files} files, newest {health.last_file_id}"


def raw_state(health: MonthHealth) -> str:
    """What `raw_property_payloads` of the month is: its registered files and where retention put them."""
    return (
        f"{health.files} files registered (newest file {health.last_file_id}); "
        f"{health.archived} archived, {health.deleted} deleted from disk by retention"
    )


def properties_state(health: MonthHealth) -> str:
    """What `properties` of the month is: its files by state, what they delivered, and how often they were tried."""
    states = ", ".join(f"{n} {state}" for state, n in health.files_by_status.items()) or "no file"
    return (
        f"{health.files} files: {states}; {health.rows_delivered} rows delivered, "
        f"{health.records_quarantined} quarantined; {health.attempts} processing attempts"
    )


def first_errors(engine: Engine, month: str) -> dg.MetadataValue:
    """The month's FAILED files with their errors (the first ten), as a markdown table."""
    _stuck, failed = problem_files(engine, month)
    return markdown_table(
        ["file", "path", "attempts", "error"],
        [[f.file_id, f.file_path, f.attempts, f.error_details] for f in failed],
        max_rows=FIRST_ERRORS,
    )


def payload_metadata(
    engine: Engine,
    health: MonthHealth,
    *,
    captures: Sequence[CaptureReport] = (),
    registration: RegistrationReport | None = None,
    files_new: int = 0,
    changed_by: str | None = None,
) -> dict[str, Any]:
    """`raw_property_payloads` of a month: what is on disk (per campaign), what this report added, the files' states."""
    totals = campaign_totals(engine, health.month)
    pages = {report.campaign_id: report.pages for report in captures}
    metadata: dict[str, Any] = {
        "files_new": files_new,
        "pages_captured": sum(report.pages for report in captures),
        "records_captured": sum(report.records for report in captures),
        "files_on_disk": sum(t.files for t in totals),
        "records_on_disk": sum(t.records for t in totals),
        "bytes_on_disk": sum(t.bytes for t in totals),
        **files_by_state(health),
        "files_archived": health.archived,
        "files_deleted_by_retention": health.deleted,
        "campaigns": markdown_table(
            ["campaign", "files", "records", "bytes", "pending", "processing", "completed", "failed", "pages captured"],
            [[*_campaign_row(t), pages.get(t.campaign_id, 0)] for t in totals],
        ),
        DATA_VERSION_KEY: raw_data_version(health),
        STATE_KEY: raw_state(health),
    }
    if registration is not None:
        metadata["files_registered_from_disk"] = len(registration.registered)
        metadata["duplicates_recorded"] = len(registration.duplicates)
        metadata["files_skipped"] = markdown_table(["path", "reason"], registration.skipped)
    if changed_by is not None:
        metadata["changed_by"] = changed_by
    return metadata


def _campaign_row(t: Any) -> list[Any]:
    return [t.campaign_id, t.files, t.records, t.bytes, t.pending, t.processing, t.completed, t.failed]


def properties_metadata(
    engine: Engine, health: MonthHealth, *, report: ProcessingReport | None = None, changed_by: str | None = None
) -> dict[str, Any]:
    """`properties` of a month: its files by state and what they delivered, the table's size, this run's work."""
    table = table_row_count(engine)
    metadata: dict[str, Any] = {
        "month_settled": health.settled,
        **files_by_state(health),
        "rows_delivered_by_month_files": health.rows_delivered,
        "records_quarantined_by_month_files": health.records_quarantined,
        "quarantined_share": round(health.quarantined_share, 6),
        # Where Dagster shows a table's size: the whole properties table, measured now.
        "dagster/row_count": table.rows,
        "table_row_count_method": table.method,
        "first_errors": first_errors(engine, health.month),
        STATE_KEY: properties_state(health),
    }
    if report is not None:
        metadata.update(
            {
                "run_files_completed": report.completed,
                "run_files_failed": report.failed,
                "run_records_loaded": report.records_loaded,
                "run_records_quarantined": report.records_quarantined,
                "run_rows_per_second": round(report.rows_per_second, 1),
                "run_seconds": round(report.seconds, 3),
                "run_files_requeued_after_expired_lease": len(report.requeued),
                "run_failed_files_retried": len(report.retried),
            }
        )
    if changed_by is not None:
        metadata["changed_by"] = changed_by
    return metadata


def unsettled_reason(engine: Engine, health: MonthHealth) -> str:
    """Why the month is not settled, with the first FAILED files' errors: the text a person reads first."""
    waiting = [f"{n} {state}" for state, n in health.files_by_status.items() if n and state not in SETTLED]
    _stuck, failed = problem_files(engine, health.month)
    errors = [f"file {f.file_id} {f.file_path}: {(f.error_details or '')[:500]}" for f in failed[:3]]
    more = [f"and {len(failed) - 3} more FAILED files (first_errors)"] if len(failed) > 3 else []
    advice = (
        "Fix the cause, then materialize the month with include_failed: true (or `property-pipeline retry`)."
        if failed
        else "Materialize the month again once the other processor is done."
    )
    lines = [f"{health.month} is not settled: {', '.join(waiting)} of {health.files} files.", *errors, *more, advice]
    return "\n".join(lines)


# --- Checks: one verdict per month, built the same way in a run, in the asset's failure path and by the sensor ---


@dataclass(frozen=True)
class CheckVerdict:
    """One check's verdict on one month, convertible to what a check returns and to a loggable evaluation."""

    asset_key: dg.AssetKey
    check_name: str
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def result(self) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=self.passed, severity=self.severity, description=self.description, metadata=dict(self.metadata)
        )

    def evaluation(self, partition: str) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=self.asset_key,
            check_name=self.check_name,
            passed=self.passed,
            severity=self.severity,
            description=self.description,
            metadata=dict(self.metadata),
            partition=partition,
        )


def row_counts_verdict(engine: Engine, month: str) -> CheckVerdict:
    expected, delivered, mismatches = row_count_mismatches(engine, month)
    return CheckVerdict(
        PROPERTIES_KEY,
        "row_counts_agree",
        not mismatches,
        dg.AssetCheckSeverity.ERROR,
        None if not mismatches else f"{len(mismatches)} file(s) delivered a different number of rows than recorded",
        {
            "month": month,
            "success_count_total": expected,
            "rows_delivered": delivered,
            "offending_files": markdown_table(
                ["file", "path", "success_count", "rows delivered"],
                [[m.file_id, m.file_path, m.success_count, m.link_rows] for m in mismatches],
            ),
        },
    )


def stuck_verdict(engine: Engine, month: str) -> CheckVerdict:
    stuck, _failed = problem_files(engine, month)
    return CheckVerdict(
        PROPERTIES_KEY,
        "no_stuck_files",
        not stuck,
        dg.AssetCheckSeverity.WARN,
        None
        if not stuck
        else f"{len(stuck)} file(s) PROCESSING past their lease; the next processing run requeues them",
        {
            "month": month,
            "stuck_files": len(stuck),
            "offending_files": markdown_table(
                ["file", "path", "worker", "lease ended"],
                [[f.file_id, f.file_path, f.locked_by, f.locked_until] for f in stuck],
            ),
        },
    )


def failed_verdict(engine: Engine, month: str) -> CheckVerdict:
    _stuck, failed = problem_files(engine, month)
    return CheckVerdict(
        PROPERTIES_KEY,
        "no_failed_files",
        not failed,
        dg.AssetCheckSeverity.ERROR,
        None if not failed else f"{len(failed)} FAILED file(s); fix the cause, then retry with include_failed: true",
        {
            "month": month,
            "failed_files": len(failed),
            "offending_files": markdown_table(
                ["file", "path", "attempts", "error"],
                [[f.file_id, f.file_path, f.attempts, f.error_details] for f in failed],
            ),
        },
    )


def quarantine_verdict(health: MonthHealth, warn_share: float) -> CheckVerdict:
    share = health.quarantined_share
    ok = share <= warn_share
    return CheckVerdict(
        PROPERTIES_KEY,
        "quarantine_rate_acceptable",
        ok,
        dg.AssetCheckSeverity.WARN,
        None
        if ok
        else f"{share:.2%} of the month's records were quarantined (limit {warn_share:.2%}); read quarantined_records",
        {
            "month": health.month,
            "records_quarantined": health.records_quarantined,
            "records_loaded": health.rows_delivered,
            "quarantined_share": round(share, 6),
            "warn_above_share": warn_share,
        },
    )


def database_verdicts(engine: Engine, health: MonthHealth, warn_share: float) -> list[CheckVerdict]:
    """Every check on `properties` for the month: they read the database only (cheap enough for a sensor tick)."""
    return [
        row_counts_verdict(engine, health.month),
        stuck_verdict(engine, health.month),
        failed_verdict(engine, health.month),
        quarantine_verdict(health, warn_share),
    ]
