"""The status report: per month and campaign, what is done, what failed and why, what is waiting."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, select

from property_pipeline.db.queries import file_totals, processing_throughput
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import utcnow
from property_pipeline.states import FileStatus

SLOWEST_FILES = 5
LATEST_ERRORS = 10
ERROR_PREVIEW_CHARS = 200


@dataclass(frozen=True)
class CampaignMonth:
    month: str
    campaign_id: str
    pending: int
    processing: int
    completed: int
    failed: int
    records_loaded: int
    records_quarantined: int
    oldest_pending_at: datetime | None
    discarded: int = 0  # given up on by an operator (`discard`): settled, not failed


@dataclass(frozen=True)
class FileLine:
    file_id: int
    file_path: str
    status: str
    processing_time_ms: int | None
    success_count: int | None
    processed_at: datetime | None
    error_details: str | None


@dataclass
class StatusReport:
    generated_at: datetime
    rows: list[CampaignMonth] = field(default_factory=list)
    slowest: list[FileLine] = field(default_factory=list)
    latest_errors: list[FileLine] = field(default_factory=list)
    rows_per_second: float = 0.0

    @property
    def backlog_files(self) -> int:
        return sum(row.pending for row in self.rows)

    @property
    def failed_files(self) -> int:
        return sum(row.failed for row in self.rows)

    @property
    def discarded_files(self) -> int:
        return sum(row.discarded for row in self.rows)

    @property
    def stuck_candidates(self) -> int:
        return sum(row.processing for row in self.rows)

    @property
    def records_loaded(self) -> int:
        return sum(row.records_loaded for row in self.rows)

    @property
    def records_quarantined(self) -> int:
        return sum(row.records_quarantined for row in self.rows)

    @property
    def oldest_pending_age_seconds(self) -> float:
        oldest = [row.oldest_pending_at for row in self.rows if row.oldest_pending_at is not None]
        return max(0.0, (self.generated_at - min(oldest)).total_seconds()) if oldest else 0.0

    def months(self) -> list[str]:
        return sorted({row.month for row in self.rows})


def build_status_report(engine: Engine, *, month: str | None = None, now: datetime | None = None) -> StatusReport:
    """Assemble the report: the totals per month and campaign, and a few lines of files read through indexes."""
    report = StatusReport(generated_at=now or utcnow())
    scope = [files.c.month == month] if month else []
    line_columns = (
        files.c.file_id,
        files.c.file_path,
        files.c.status,
        files.c.processing_time_ms,
        files.c.success_count,
        files.c.processed_at,
        files.c.error_details,
    )
    slowest = (
        select(*line_columns)
        .where(files.c.status == FileStatus.COMPLETED, files.c.duplicate_of_file_id.is_(None), *scope)
        .order_by(files.c.processing_time_ms.desc(), files.c.file_id)
        .limit(SLOWEST_FILES)
    )
    errors = (
        select(*line_columns)
        .where(files.c.status == FileStatus.FAILED, *scope)
        .order_by(files.c.processed_at.desc(), files.c.file_id.desc())
        .limit(LATEST_ERRORS)
    )
    report.rows = [
        CampaignMonth(
            t.month,
            t.campaign_id,
            t.pending,
            t.processing,
            t.completed,
            t.failed,
            t.records_loaded,
            t.records_quarantined,
            t.oldest_pending_at,
            t.discarded,
        )
        for t in file_totals(engine, month)
    ]
    with engine.connect() as conn:
        report.slowest = [FileLine(**row._mapping) for row in conn.execute(slowest)]
        report.latest_errors = [FileLine(**row._mapping) for row in conn.execute(errors)]
    loaded, milliseconds = processing_throughput(engine, month)
    report.rows_per_second = round(loaded / (milliseconds / 1000), 1) if milliseconds else 0.0
    return report


def format_age(seconds: float | None) -> str:
    """A short human age: 45s, 12m, 5h, 3d."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def format_age_since(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago `moment` was, as `format_age` says it ("-" for none)."""
    return format_age(None if moment is None else ((now or utcnow()) - moment).total_seconds())


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: StatusReport) -> str:
    """The report as markdown tables, for the Dagster UI."""
    lines = [
        f"**Backlog:** {report.backlog_files} files pending (oldest {format_age(report.oldest_pending_age_seconds)}) · "
        f"**Failed:** {report.failed_files} · **Discarded:** {report.discarded_files} · "
        f"**Loaded:** {report.records_loaded} records · "
        f"**Quarantined:** {report.records_quarantined} · **Throughput:** {report.rows_per_second:,.0f} rows/s",
        "",
        "| month | campaign | pending | processing | completed | failed | loaded | quarantined | oldest pending "
        "| discarded |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in report.rows:
        age = None if row.oldest_pending_at is None else (report.generated_at - row.oldest_pending_at).total_seconds()
        lines.append(
            f"| {row.month} | {_cell(row.campaign_id)} | {row.pending} | {row.processing} | {row.completed} | "
            f"{row.failed} | {row.records_loaded} | {row.records_quarantined} | {format_age(age)} | {row.discarded} |"
        )
    if not report.rows:
        lines.append("| - | - | 0 | 0 | 0 | 0 | 0 | 0 | - | 0 |")
    lines += ["", "**Latest errors**", ""]
    if report.latest_errors:
        lines += ["| file | path | failed at | error |", "| ---: | --- | --- | --- |"]
        for item in report.latest_errors:
            error = (item.error_details or "")[:ERROR_PREVIEW_CHARS]
            lines.append(
                f"| {item.file_id} | {_cell(item.file_path)} | {item.processed_at:%Y-%m-%d %H:%M} | {_cell(error)} |"
            )
    else:
        lines.append("No failed files.")
    lines += ["", "**Slowest files**", ""]
    if report.slowest:
        lines += ["| file | path | ms | records |", "| ---: | --- | ---: | ---: |"]
        for item in report.slowest:
            lines.append(
                f"| {item.file_id} | {_cell(item.file_path)} | {item.processing_time_ms} | {item.success_count} |"
            )
    else:
        lines.append("No completed files yet.")
    return "\n".join(lines)
