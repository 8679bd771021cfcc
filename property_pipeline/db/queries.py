"""Read-only questions about the status table, shared by the CLI, the Dagster checks and the reports."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, case, func, select, text

from property_pipeline.db.schema import (
    as_utc,
    file_properties,
    file_status_events,
    metadata,
    quarantined_records,
    utcnow,
)
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import file_totals as totals_table
from property_pipeline.states import SETTLED, FileStatus


@dataclass(frozen=True)
class MonthStatus:
    month: str
    pending: int
    processing: int
    completed: int
    failed: int
    duplicates: int
    records_loaded: int
    records_quarantined: int
    oldest_pending_at: datetime | None
    archived: int = 0  # in a retention archive (`archived_at` set)
    deleted: int = 0  # removed from disk by retention on purpose (`deleted_at` set)
    discarded: int = 0  # FAILED files an operator gave up on (`discard`): settled, never loaded

    @property
    def total(self) -> int:
        return self.pending + self.processing + self.completed + self.failed + self.discarded


@dataclass(frozen=True)
class FileProblemRow:
    file_id: int
    file_path: str
    status: str
    attempts: int
    error_details: str | None
    locked_by: str | None
    locked_until: datetime | None
    processed_at: datetime | None


@dataclass(frozen=True)
class FileTotals:
    """The files of one month and campaign: by state, what they loaded and quarantined, and what is on disk.

    The one aggregate query behind `month_statuses`, `campaign_totals` and the status report.
    """

    month: str
    campaign_id: str
    pending: int
    processing: int
    completed: int
    failed: int
    duplicates: int
    records_loaded: int  # success_count of the COMPLETED files
    records_quarantined: int  # error_count of the COMPLETED files
    oldest_pending_at: datetime | None
    archived: int  # in a retention archive (`archived_at` set)
    deleted: int  # removed from disk by retention on purpose (`deleted_at` set); always settled
    records_on_disk: int  # records of the files not deleted by retention
    bytes_on_disk: int
    discarded: int = 0  # FAILED files an operator gave up on (`discard`): settled, never loaded
    discarded_deleted: int = 0  # of which retention removed from disk (the rest of `deleted` were COMPLETED)


def file_totals(engine: Engine, month: str | None = None) -> list[FileTotals]:
    """FileTotals per month and campaign (one month when given), in month and campaign order.

    Read from `file_totals` (one row per month and campaign, which triggers keep equal to a count of
    the status table), and the oldest PENDING file of each from the PENDING files alone: neither reads
    the settled files, however many there are.
    """
    waiting_since = func.min(func.coalesce(files.c.pending_since, files.c.created_at))
    oldest_query = (
        select(files.c.month, files.c.campaign_id, waiting_since.label("oldest_pending"))
        .where(files.c.status == FileStatus.PENDING)
        .group_by(files.c.month, files.c.campaign_id)
    )
    query = (
        select(totals_table).where(totals_table.c.files > 0).order_by(totals_table.c.month, totals_table.c.campaign_id)
    )
    if month is not None:
        query = query.where(totals_table.c.month == month)
        oldest_query = oldest_query.where(files.c.month == month)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        # MIN() of a time: SQLite returns it as untyped text.
        oldest = {(row.month, row.campaign_id): as_utc(row.oldest_pending) for row in conn.execute(oldest_query)}
    return [
        FileTotals(
            month=row.month,
            campaign_id=row.campaign_id,
            pending=row.pending,
            processing=row.processing,
            completed=row.completed,
            failed=row.failed,
            duplicates=row.duplicates,
            records_loaded=row.records_loaded,
            records_quarantined=row.records_quarantined,
            oldest_pending_at=oldest.get((row.month, row.campaign_id)),
            archived=row.archived,
            deleted=row.deleted,
            records_on_disk=row.records_on_disk,
            bytes_on_disk=row.bytes_on_disk,
            discarded=row.discarded,
            discarded_deleted=row.discarded_deleted,
        )
        for row in rows
    ]


def processing_throughput(engine: Engine, month: str | None = None) -> tuple[int, int]:
    """(rows loaded, milliseconds spent loading them) over the COMPLETED originals in scope, from `file_totals`."""
    query = select(
        func.coalesce(func.sum(totals_table.c.original_rows_loaded), 0),
        func.coalesce(func.sum(totals_table.c.original_processing_ms), 0),
    )
    if month is not None:
        query = query.where(totals_table.c.month == month)
    with engine.connect() as conn:
        rows, milliseconds = conn.execute(query).one()
    return int(rows), int(milliseconds)


def month_statuses(engine: Engine, month: str | None = None) -> list[MonthStatus]:
    """Files by status, records loaded and quarantined, and the oldest PENDING file, per month."""
    by_month: dict[str, list[FileTotals]] = {}
    for totals in file_totals(engine, month):
        by_month.setdefault(totals.month, []).append(totals)
    return [
        MonthStatus(
            name,
            sum(t.pending for t in group),
            sum(t.processing for t in group),
            sum(t.completed for t in group),
            sum(t.failed for t in group),
            sum(t.duplicates for t in group),
            sum(t.records_loaded for t in group),
            sum(t.records_quarantined for t in group),
            min((t.oldest_pending_at for t in group if t.oldest_pending_at is not None), default=None),
            archived=sum(t.archived for t in group),
            deleted=sum(t.deleted for t in group),
            discarded=sum(t.discarded for t in group),
        )
        for name, group in by_month.items()
    ]


def problem_files(
    engine: Engine, month: str | None = None, now: datetime | None = None
) -> tuple[list[FileProblemRow], list[FileProblemRow]]:
    """(stuck, failed): PROCESSING files whose lease has expired, and FAILED files with their errors."""
    now = now or utcnow()
    columns = (
        files.c.file_id,
        files.c.file_path,
        files.c.status,
        files.c.attempts,
        files.c.error_details,
        files.c.locked_by,
        files.c.locked_until,
        files.c.processed_at,
    )
    stuck_query = select(*columns).where(files.c.status == FileStatus.PROCESSING, files.c.locked_until < now)
    failed_query = select(*columns).where(files.c.status == FileStatus.FAILED)
    if month is not None:
        stuck_query = stuck_query.where(files.c.month == month)
        failed_query = failed_query.where(files.c.month == month)
    with engine.connect() as conn:
        stuck = [FileProblemRow(**row._mapping) for row in conn.execute(stuck_query.order_by(files.c.file_id))]
        failed = [FileProblemRow(**row._mapping) for row in conn.execute(failed_query.order_by(files.c.file_id))]
    return stuck, failed


@dataclass(frozen=True)
class RowCountMismatch:
    file_id: int
    file_path: str
    success_count: int
    link_rows: int


def row_count_mismatches(engine: Engine, month: str | None = None) -> tuple[int, int, list[RowCountMismatch]]:
    """(sum of success_count, link rows, mismatching files) over the COMPLETED files in scope.

    The link rows are counted file by file (a range of the links' primary key), so a month's check
    reads that month's links only, not every file's.
    """
    link_rows = (
        select(func.count())
        .select_from(file_properties)
        .where(file_properties.c.file_id == files.c.file_id)
        .scalar_subquery()
    )
    query = select(
        files.c.file_id,
        files.c.file_path,
        files.c.success_count,
        link_rows.label("link_rows"),
    ).where(files.c.status == FileStatus.COMPLETED)
    if month is not None:
        query = query.where(files.c.month == month)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    expected = sum(int(row.success_count or 0) for row in rows)
    actual = sum(int(row.link_rows) for row in rows)
    mismatches = [
        RowCountMismatch(row.file_id, row.file_path, int(row.success_count or 0), int(row.link_rows))
        for row in rows
        if int(row.success_count or 0) != int(row.link_rows)
    ]
    return expected, actual, mismatches


def registered_files_for_verification(engine: Engine, month: str | None = None) -> list[tuple[int, str, str, int]]:
    """(file_id, file_path, checksum, size) of registered files that should be on disk (not deleted by retention)."""
    query = select(files.c.file_id, files.c.file_path, files.c.checksum_sha256, files.c.file_size_bytes).where(
        files.c.deleted_at.is_(None)
    )
    if month is not None:
        query = query.where(files.c.month == month)
    with engine.connect() as conn:
        return [
            (row.file_id, row.file_path, row.checksum_sha256, row.file_size_bytes)
            for row in conn.execute(query.order_by(files.c.file_id))
        ]


def file_states(engine: Engine) -> dict[str, str]:
    """{file_path: status} of every file still on disk, for rebuilding the marker folders."""
    with engine.connect() as conn:
        return {
            row.file_path: row.status
            for row in conn.execute(select(files.c.file_path, files.c.status).where(files.c.deleted_at.is_(None)))
        }


@dataclass(frozen=True)
class CampaignTotals:
    """One campaign's payload files in one month that are still on disk, with their records, bytes and states."""

    campaign_id: str
    files: int
    records: int
    bytes: int
    pending: int
    processing: int
    completed: int
    failed: int
    discarded: int = 0


def campaign_totals(engine: Engine, month: str) -> list[CampaignTotals]:
    """Files, records, bytes and files by status per campaign, over the month's files not deleted by retention."""
    return [
        CampaignTotals(
            t.campaign_id,
            t.pending + t.processing + t.completed + t.failed + t.discarded - t.deleted,
            t.records_on_disk,
            t.bytes_on_disk,
            t.pending,
            t.processing,
            t.completed - (t.deleted - t.discarded_deleted),  # retention deletes settled files only
            t.failed,
            t.discarded - t.discarded_deleted,
        )
        for t in file_totals(engine, month)
        if t.pending + t.processing + t.completed + t.failed + t.discarded > t.deleted
    ]


def file_statuses(engine: Engine, file_ids: Sequence[int]) -> dict[int, str]:
    """{file_id: status} of the given files (unknown ids left out)."""
    if not file_ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(select(files.c.file_id, files.c.status).where(files.c.file_id.in_(list(file_ids)))).all()
    return {row.file_id: row.status for row in rows}


def file_paths(engine: Engine, file_ids: Sequence[int]) -> dict[int, str]:
    """{file_id: file_path} of the given files."""
    if not file_ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(select(files.c.file_id, files.c.file_path).where(files.c.file_id.in_(list(file_ids)))).all()
    return {row.file_id: row.file_path for row in rows}


def processing_paths(engine: Engine) -> list[str]:
    """file_path of every PROCESSING file."""
    with engine.connect() as conn:
        return list(conn.execute(select(files.c.file_path).where(files.c.status == FileStatus.PROCESSING)).scalars())


@dataclass(frozen=True)
class QuarantineReason:
    """Quarantined records whose reasons read the same once their values are taken out."""

    kind: str
    records: int
    example: str


@dataclass(frozen=True)
class MonthQuarantine:
    """A month's quarantine: records and files of its COMPLETED files, and the reasons, most common first."""

    month: str
    records: int
    files: int
    reasons: list[QuarantineReason]


_QUOTED = re.compile(r"'[^']*(?:'|$)|\"[^\"]*(?:\"|$)")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w-])")


def reason_kind(reason: str) -> str:
    """A quarantine reason without the offending value: `zip 'ABCDE' is not ...` -> `zip … is not ...`."""
    return _NUMBER.sub("N", _QUOTED.sub("…", reason)).strip()


def month_quarantine(engine: Engine, month: str) -> MonthQuarantine:
    """The month's quarantined records (of its COMPLETED files), grouped by `reason_kind`."""
    scope = (
        select(quarantined_records.c.reason, quarantined_records.c.file_id)
        .join(files, files.c.file_id == quarantined_records.c.file_id)
        .where(files.c.month == month, files.c.status == FileStatus.COMPLETED)
        .subquery()
    )
    with engine.connect() as conn:
        by_reason = conn.execute(select(scope.c.reason, func.count()).group_by(scope.c.reason)).all()
        file_count = conn.execute(select(func.count(func.distinct(scope.c.file_id)))).scalar_one()
    kinds: dict[str, list[Any]] = {}
    for reason, count in by_reason:
        entry = kinds.setdefault(reason_kind(reason), [0, reason])
        entry[0] += int(count)
    reasons = sorted(
        (QuarantineReason(kind, records, example) for kind, (records, example) in kinds.items()),
        key=lambda item: (-item.records, item.kind),
    )
    return MonthQuarantine(month, sum(r.records for r in reasons), int(file_count), reasons)


# --- Month health: what a month's files say about the month, for the Dagster UI and any other reader ---


def is_settled(files_by_status: Mapping[str, int]) -> bool:
    """True when every registered file of the month is settled (`states.SETTLED`: COMPLETED, or DISCARDED by an
    operator); a month with no file is."""
    return all(status in SETTLED for status, count in files_by_status.items() if count)


@dataclass(frozen=True)
class MonthHealth:
    """A month's registered files by state, what its COMPLETED files delivered, and a change fingerprint."""

    month: str
    files_by_status: Mapping[str, int]
    rows_delivered: int  # sum of success_count over the month's COMPLETED files (rows they delivered)
    records_quarantined: int  # sum of error_count over the same files
    duplicates: int  # files whose bytes equal an earlier original (COMPLETED, nothing to load)
    archived: int  # in a verified retention archive
    deleted: int  # removed from disk by retention on purpose
    attempts: int  # processing claims over all files: moves on every claim, so on every retry
    last_file_id: int  # newest registered file: with `files`, what the month's data version is made of

    @property
    def files(self) -> int:
        return sum(self.files_by_status.values())

    def count(self, status: str) -> int:
        return self.files_by_status.get(status, 0)

    @property
    def settled(self) -> bool:
        return is_settled(self.files_by_status)

    @property
    def quarantined_share(self) -> float:
        """Quarantined records over all records of the month's COMPLETED files (0 when there are none)."""
        seen = self.rows_delivered + self.records_quarantined
        return self.records_quarantined / seen if seen else 0.0


def month_health(engine: Engine, months: Sequence[str] | None = None) -> dict[str, MonthHealth]:
    """{month: MonthHealth} of the given months (every month with a file when None); one grouped query.

    A month without any registered file is absent from the result.
    """
    query = select(
        files.c.month,
        files.c.status,
        func.count().label("files"),
        func.coalesce(
            func.sum(case((files.c.status == FileStatus.COMPLETED, files.c.success_count), else_=0)), 0
        ).label("rows"),
        func.coalesce(func.sum(case((files.c.status == FileStatus.COMPLETED, files.c.error_count), else_=0)), 0).label(
            "errors"
        ),
        func.count(files.c.duplicate_of_file_id).label("duplicates"),
        func.count(files.c.archived_at).label("archived"),
        func.count(files.c.deleted_at).label("deleted"),
        func.coalesce(func.sum(files.c.attempts), 0).label("attempts"),
        func.max(files.c.file_id).label("last_file_id"),
    ).group_by(files.c.month, files.c.status)
    if months is not None:
        if not months:
            return {}
        query = query.where(files.c.month.in_(sorted(set(months))))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        month = totals.setdefault(
            row.month,
            {"by_status": {}, "rows": 0, "errors": 0, "duplicates": 0, "archived": 0, "deleted": 0, "attempts": 0},
        )
        month["by_status"][row.status] = int(row.files)
        for name in ("rows", "errors", "duplicates", "archived", "deleted", "attempts"):
            month[name] += int(getattr(row, name) or 0)
        month["last_file_id"] = max(month.get("last_file_id", 0), int(row.last_file_id or 0))
    return {
        name: MonthHealth(
            month=name,
            files_by_status=dict(sorted(month["by_status"].items())),
            rows_delivered=month["rows"],
            records_quarantined=month["errors"],
            duplicates=month["duplicates"],
            archived=month["archived"],
            deleted=month["deleted"],
            attempts=month["attempts"],
            last_file_id=month["last_file_id"],
        )
        for name, month in sorted(totals.items())
    }


@dataclass(frozen=True)
class FileEvent:
    """One row of `file_status_events`, with the month of its file."""

    event_id: int
    month: str
    actor: str | None
    from_status: str | None
    to_status: str
    at: datetime


def file_events_after(engine: Engine, after_event_id: int, limit: int) -> list[FileEvent]:
    """At most `limit` status events with an id above `after_event_id`, oldest first (a primary-key range read)."""
    query = (
        select(
            file_status_events.c.event_id,
            files.c.month,
            file_status_events.c.actor,
            file_status_events.c.from_status,
            file_status_events.c.to_status,
            file_status_events.c.at,
        )
        .join(files, files.c.file_id == file_status_events.c.file_id)
        .where(file_status_events.c.event_id > after_event_id)
        .order_by(file_status_events.c.event_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [FileEvent(**row._mapping) for row in conn.execute(query)]


def last_file_event_id(engine: Engine) -> int:
    """The newest `file_status_events.event_id` (0 when there is none)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(file_status_events.c.event_id), 0))).scalar_one())


# Above this many rows (by PostgreSQL's own estimate) the table's size is the estimate, not a count(*).
EXACT_COUNT_MAX_ROWS = 5_000_000


ROWS_OF_VIEW = {"properties": "property_records"}


@dataclass(frozen=True)
class TableRowCount:
    rows: int
    method: str  # "count(*)" or "estimate (pg_class.reltuples)"


def table_row_count(engine: Engine, table_name: str = "properties") -> TableRowCount:
    """The table's row count: `SELECT count(*)`, or on PostgreSQL the planner's estimate once it is very large.

    A count(*) of a few million rows takes well under a second; past EXACT_COUNT_MAX_ROWS it reads
    the whole table for seconds, so the estimate (kept current by autovacuum's ANALYZE) is used.
    """
    table = metadata.tables[table_name]
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # A view has no statistics of its own: `properties` has one row per row of property_records.
            counted = ROWS_OF_VIEW.get(table_name, table_name)
            estimate = conn.execute(
                text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:name)"), {"name": counted}
            ).scalar()
            if estimate is not None and estimate > EXACT_COUNT_MAX_ROWS:
                return TableRowCount(int(estimate), "estimate (pg_class.reltuples)")
        return TableRowCount(int(conn.execute(select(func.count()).select_from(table)).scalar_one()), "count(*)")
