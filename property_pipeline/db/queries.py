"""Read-only questions about the status table, shared by the CLI, the Dagster checks and the reports."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, case, func, select, text

from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import file_properties, file_status_events, metadata, quarantined_records, utcnow
from property_pipeline.db.status import COMPLETED, FAILED, PENDING, PROCESSING


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

    @property
    def total(self) -> int:
        return self.pending + self.processing + self.completed + self.failed


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


def _count(state: str):  # type: ignore[no-untyped-def]
    return func.sum(case((files.c.status == state, 1), else_=0))


def month_statuses(engine: Engine, month: str | None = None) -> list[MonthStatus]:
    """Files by status, records loaded and quarantined, and the oldest PENDING file, per month."""
    query = (
        select(
            files.c.month,
            _count(PENDING).label("pending"),
            _count(PROCESSING).label("processing"),
            _count(COMPLETED).label("completed"),
            _count(FAILED).label("failed"),
            func.sum(case((files.c.duplicate_of_file_id.is_not(None), 1), else_=0)).label("duplicates"),
            func.coalesce(func.sum(case((files.c.status == COMPLETED, files.c.success_count), else_=0)), 0).label(
                "loaded"
            ),
            func.coalesce(func.sum(case((files.c.status == COMPLETED, files.c.error_count), else_=0)), 0).label(
                "quarantined"
            ),
            func.min(case((files.c.status == PENDING, files.c.created_at))).label("oldest_pending"),
            func.count(files.c.archived_at).label("archived"),
            func.count(files.c.deleted_at).label("deleted"),
        )
        .group_by(files.c.month)
        .order_by(files.c.month)
    )
    if month is not None:
        query = query.where(files.c.month == month)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    result = []
    for row in rows:
        oldest = row.oldest_pending
        if isinstance(oldest, str):  # SQLite returns MIN() of a text column untyped
            oldest = files.c.created_at.type.process_result_value(oldest, engine.dialect)
        elif oldest is not None and oldest.tzinfo is None:
            oldest = files.c.created_at.type.process_result_value(oldest, engine.dialect)
        result.append(
            MonthStatus(
                row.month,
                int(row.pending or 0),
                int(row.processing or 0),
                int(row.completed or 0),
                int(row.failed or 0),
                int(row.duplicates or 0),
                int(row.loaded or 0),
                int(row.quarantined or 0),
                oldest,
                archived=int(row.archived or 0),
                deleted=int(row.deleted or 0),
            )
        )
    return result


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
    stuck_query = select(*columns).where(files.c.status == PROCESSING, files.c.locked_until < now)
    failed_query = select(*columns).where(files.c.status == FAILED)
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
    """(sum of success_count, link rows, mismatching files) over the COMPLETED files in scope."""
    links = (
        select(file_properties.c.file_id, func.count().label("link_rows"))
        .group_by(file_properties.c.file_id)
        .subquery()
    )
    query = (
        select(
            files.c.file_id,
            files.c.file_path,
            files.c.success_count,
            func.coalesce(links.c.link_rows, 0).label("link_rows"),
        )
        .select_from(files.outerjoin(links, links.c.file_id == files.c.file_id))
        .where(files.c.status == COMPLETED)
    )
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
        return [tuple(row) for row in conn.execute(query.order_by(files.c.file_id))]  # type: ignore[misc]


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


def campaign_totals(engine: Engine, month: str) -> list[CampaignTotals]:
    """Files, records, bytes and files by status per campaign, over the month's files not deleted by retention."""
    query = (
        select(
            files.c.campaign_id,
            func.count().label("files"),
            func.coalesce(func.sum(files.c.properties_count), 0).label("records"),
            func.coalesce(func.sum(files.c.file_size_bytes), 0).label("bytes"),
            _count(PENDING).label("pending"),
            _count(PROCESSING).label("processing"),
            _count(COMPLETED).label("completed"),
            _count(FAILED).label("failed"),
        )
        .where(files.c.month == month, files.c.deleted_at.is_(None))
        .group_by(files.c.campaign_id)
        .order_by(files.c.campaign_id)
    )
    with engine.connect() as conn:
        return [
            CampaignTotals(row.campaign_id, *(int(value or 0) for value in row[1:]))
            for row in conn.execute(query).all()
        ]


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
        return list(conn.execute(select(files.c.file_path).where(files.c.status == PROCESSING)).scalars())


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
        .where(files.c.month == month, files.c.status == COMPLETED)
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

# A file in one of these states needs nothing more; a month is settled when all its files are. Another
# terminal state (an operator discarding a hopeless file, say) becomes settled by adding it here.
SETTLED_STATUSES: frozenset[str] = frozenset({COMPLETED})


def is_settled(files_by_status: Mapping[str, int]) -> bool:
    """True when every registered file of the month is in a settled state (a month with no file is)."""
    return all(status in SETTLED_STATUSES for status, count in files_by_status.items() if count)


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
        func.coalesce(func.sum(case((files.c.status == COMPLETED, files.c.success_count), else_=0)), 0).label("rows"),
        func.coalesce(func.sum(case((files.c.status == COMPLETED, files.c.error_count), else_=0)), 0).label("errors"),
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
            estimate = conn.execute(
                text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:name)"), {"name": table_name}
            ).scalar()
            if estimate is not None and estimate > EXACT_COUNT_MAX_ROWS:
                return TableRowCount(int(estimate), "estimate (pg_class.reltuples)")
        return TableRowCount(int(conn.execute(select(func.count()).select_from(table)).scalar_one()), "count(*)")
