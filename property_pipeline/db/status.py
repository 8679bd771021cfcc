"""The status-table transitions. The only module that writes `batch_file_status.status`.

    register ──▶ PENDING ──claim──▶ PROCESSING ──▶ COMPLETED (same transaction as the data)
                    ▲                    │     └──▶ FAILED ──retry──▶ PENDING
                    └── lease expired ───┘

Every transition is guarded by the state it leaves (compare-and-set) and leaves a row in
`file_status_events`, so concurrent processors can never both own a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import file_status_events as events
from property_pipeline.db.schema import utcnow

PENDING, PROCESSING, COMPLETED, FAILED = "PENDING", "PROCESSING", "COMPLETED", "FAILED"
MAX_ERROR_CHARS = 4000


class LostClaim(RuntimeError):
    """This worker no longer owns the file (its lease expired and another worker took it)."""


@dataclass(frozen=True)
class PayloadFile:
    """A registered payload file as the processor sees it."""

    file_id: int
    file_path: str
    campaign_id: str
    batch_number: int
    month: str
    status: str
    checksum_sha256: str
    file_size_bytes: int
    captured_at: datetime
    properties_count: int | None
    attempts: int


@dataclass(frozen=True)
class NewPayloadFile:
    """What registration knows about a file before it has a row."""

    file_path: str
    campaign_id: str
    batch_number: int
    month: str
    checksum_sha256: str
    file_size_bytes: int
    captured_at: datetime
    properties_count: int | None


@dataclass(frozen=True)
class Registration:
    file_id: int
    file_path: str
    status: str
    created: bool
    duplicate_of: int | None = None


_FILE_COLUMNS = (
    files.c.file_id,
    files.c.file_path,
    files.c.campaign_id,
    files.c.batch_number,
    files.c.month,
    files.c.status,
    files.c.checksum_sha256,
    files.c.file_size_bytes,
    files.c.captured_at,
    files.c.properties_count,
    files.c.attempts,
)


def _payload_file(row: object) -> PayloadFile:
    return PayloadFile(**row._mapping)  # type: ignore[attr-defined]


def _record_events(
    conn: Connection, file_ids: Iterable[int], from_status: str | None, to_status: str, actor: str, detail: str | None
) -> None:
    at = utcnow()
    rows = [
        {
            "file_id": file_id,
            "at": at,
            "from_status": from_status,
            "to_status": to_status,
            "actor": actor[:128],
            "detail": detail,
        }
        for file_id in file_ids
    ]
    if rows:
        conn.execute(insert(events), rows)


def _insert_ignoring_conflict(conn: Connection):  # type: ignore[no-untyped-def]
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(files)
    if dialect == "sqlite":
        return sqlite.insert(files)
    raise NotImplementedError(f"database {dialect!r} is not supported (use SQLite or PostgreSQL)")


def register_files(conn: Connection, candidates: Sequence[NewPayloadFile], actor: str) -> list[Registration]:
    """Register files as PENDING in the caller's transaction; idempotent per `file_path`.

    A file whose SHA-256 equals an already registered file is recorded as COMPLETED with
    `duplicate_of_file_id` set and nothing to load, so its records are never loaded twice.
    """
    if not candidates:
        return []
    paths = [c.file_path for c in candidates]
    existing = {
        row.file_path: row
        for row in conn.execute(
            select(files.c.file_id, files.c.file_path, files.c.status).where(files.c.file_path.in_(paths))
        )
    }
    checksums = {c.checksum_sha256 for c in candidates}
    originals: dict[str, int] = {
        row.checksum_sha256: row.file_id
        for row in conn.execute(
            select(files.c.checksum_sha256, func.min(files.c.file_id).label("file_id"))
            .where(files.c.checksum_sha256.in_(checksums), files.c.duplicate_of_file_id.is_(None))
            .group_by(files.c.checksum_sha256)
        )
    }
    results: list[Registration] = []
    now = utcnow()
    for candidate in candidates:
        known = existing.get(candidate.file_path)
        if known is not None:
            results.append(Registration(known.file_id, known.file_path, known.status, created=False))
            continue
        duplicate_of = originals.get(candidate.checksum_sha256)
        values = {
            "file_path": candidate.file_path,
            "campaign_id": candidate.campaign_id,
            "batch_number": candidate.batch_number,
            "month": candidate.month,
            "checksum_sha256": candidate.checksum_sha256,
            "file_size_bytes": candidate.file_size_bytes,
            "captured_at": candidate.captured_at,
            "properties_count": candidate.properties_count,
            "created_at": now,
            "status": PENDING,
        }
        if duplicate_of is not None:
            values.update(
                status=COMPLETED,
                duplicate_of_file_id=duplicate_of,
                processed_at=now,
                success_count=0,
                error_count=0,
                processing_time_ms=0,
                error_details=None,
            )
        statement = (
            _insert_ignoring_conflict(conn)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["file_path"])
            .returning(files.c.file_id)
        )
        file_id = conn.execute(statement).scalar()
        if file_id is None:  # another registrar won the race for this path
            row = conn.execute(
                select(files.c.file_id, files.c.status).where(files.c.file_path == candidate.file_path)
            ).one()
            results.append(Registration(row.file_id, candidate.file_path, row.status, created=False))
            continue
        detail = f"duplicate of file {duplicate_of}: same SHA-256, nothing to load" if duplicate_of else None
        _record_events(conn, [file_id], None, values["status"], actor, detail)
        if duplicate_of is None:
            originals[candidate.checksum_sha256] = file_id
        results.append(Registration(file_id, candidate.file_path, values["status"], True, duplicate_of))
    return results


def claim_next_pending(
    engine: Engine,
    worker: str,
    lease_seconds: int,
    *,
    month: str | None = None,
    file_ids: Sequence[int] | None = None,
) -> PayloadFile | None:
    """Atomically move the oldest PENDING file (in scope) to PROCESSING for `worker`; None when none is left.

    PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait on each other's row.
    SQLite: the transaction starts with BEGIN IMMEDIATE, which serializes claims.
    """
    conditions = [files.c.status == PENDING]
    if month is not None:
        conditions.append(files.c.month == month)
    if file_ids is not None:
        conditions.append(files.c.file_id.in_(list(file_ids)))
    candidate = (
        select(files.c.file_id)
        .where(*conditions)
        .order_by(files.c.file_id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(
            update(files)
            .where(files.c.file_id == candidate, files.c.status == PENDING)
            .values(
                status=PROCESSING,
                locked_by=worker,
                locked_until=now + timedelta(seconds=lease_seconds),
                attempts=files.c.attempts + 1,
            )
            .returning(*_FILE_COLUMNS)
        ).first()
        if row is None:
            return None
        _record_events(conn, [row.file_id], PENDING, PROCESSING, worker, None)
        return _payload_file(row)


def extend_lease(engine: Engine, file_id: int, worker: str, lease_seconds: int) -> bool:
    """Heartbeat: push the lease forward; False when the claim was lost."""
    with engine.begin() as conn:
        result = conn.execute(
            update(files)
            .where(files.c.file_id == file_id, files.c.status == PROCESSING, files.c.locked_by == worker)
            .values(locked_until=utcnow() + timedelta(seconds=lease_seconds))
        )
        return result.rowcount == 1


def hold_claim(conn: Connection, file_id: int, worker: str) -> None:
    """Inside the data transaction: lock the status row and check this worker still owns it."""
    owned = conn.execute(
        select(files.c.file_id)
        .where(files.c.file_id == file_id, files.c.status == PROCESSING, files.c.locked_by == worker)
        .with_for_update()
    ).first()
    if owned is None:
        raise LostClaim(f"file {file_id} is no longer claimed by {worker} (lease expired and it was requeued)")


def mark_completed(
    conn: Connection,
    file_id: int,
    worker: str,
    *,
    properties_count: int,
    success_count: int,
    error_count: int,
    processing_time_ms: int,
) -> None:
    """PROCESSING → COMPLETED, in the same transaction as the file's data."""
    result = conn.execute(
        update(files)
        .where(files.c.file_id == file_id, files.c.status == PROCESSING, files.c.locked_by == worker)
        .values(
            status=COMPLETED,
            processed_at=utcnow(),
            properties_count=properties_count,
            success_count=success_count,
            error_count=error_count,
            processing_time_ms=processing_time_ms,
            error_details=None,
            locked_by=None,
            locked_until=None,
        )
    )
    if result.rowcount != 1:
        raise LostClaim(f"file {file_id} is no longer claimed by {worker}")
    detail = f"{success_count} loaded, {error_count} quarantined" if error_count else f"{success_count} loaded"
    _record_events(conn, [file_id], PROCESSING, COMPLETED, worker, detail)


def mark_failed(
    engine: Engine,
    file_id: int,
    worker: str,
    error: str,
    *,
    processing_time_ms: int,
    properties_count: int | None = None,
) -> bool:
    """PROCESSING → FAILED with a readable error; none of the file's data is committed.

    Returns False when the claim was lost (another worker owns the file now).
    """
    error = error[:MAX_ERROR_CHARS]
    with engine.begin() as conn:
        result = conn.execute(
            update(files)
            .where(files.c.file_id == file_id, files.c.status == PROCESSING, files.c.locked_by == worker)
            .values(
                status=FAILED,
                processed_at=utcnow(),
                error_details=error,
                success_count=0,
                error_count=0,
                processing_time_ms=processing_time_ms,
                properties_count=func.coalesce(properties_count, files.c.properties_count),
                locked_by=None,
                locked_until=None,
            )
        )
        if result.rowcount != 1:
            return False
        _record_events(conn, [file_id], PROCESSING, FAILED, worker, error)
        return True


def release_claim(engine: Engine, file_id: int, worker: str, reason: str) -> bool:
    """PROCESSING → PENDING when this worker gives a file back unfinished (for example the database went away)."""
    with engine.begin() as conn:
        result = conn.execute(
            update(files)
            .where(files.c.file_id == file_id, files.c.status == PROCESSING, files.c.locked_by == worker)
            .values(status=PENDING, locked_by=None, locked_until=None)
        )
        if result.rowcount != 1:
            return False
        _record_events(conn, [file_id], PROCESSING, PENDING, worker, reason)
        return True


def requeue_expired_claims(engine: Engine, actor: str, now: datetime | None = None) -> list[int]:
    """PROCESSING files whose lease has expired (their processor died) go back to PENDING."""
    now = now or utcnow()
    with engine.begin() as conn:
        rows = conn.execute(
            update(files)
            .where(files.c.status == PROCESSING, files.c.locked_until < now)
            .values(status=PENDING, locked_by=None, locked_until=None)
            .returning(files.c.file_id)
        ).all()
        requeued = sorted(row.file_id for row in rows)
        _record_events(conn, requeued, PROCESSING, PENDING, actor, "lease expired: processor stopped without finishing")
        return requeued


def retry_failed(
    engine: Engine,
    actor: str,
    *,
    file_ids: Sequence[int] | None = None,
    month: str | None = None,
    all_failed: bool = False,
) -> list[int]:
    """FAILED → PENDING for the chosen files (the last error stays in `error_details` until the next outcome)."""
    if file_ids is None and month is None and not all_failed:
        raise ValueError("say which failed files to retry: file ids, a month, or all")
    conditions = [files.c.status == FAILED]
    if file_ids is not None:
        conditions.append(files.c.file_id.in_(list(file_ids)))
    if month is not None:
        conditions.append(files.c.month == month)
    with engine.begin() as conn:
        rows = conn.execute(
            update(files).where(and_(*conditions)).values(status=PENDING).returning(files.c.file_id)
        ).all()
        retried = sorted(row.file_id for row in rows)
        _record_events(conn, retried, FAILED, PENDING, actor, "retry requested")
        return retried


# Retention never changes `status`: it only records where a COMPLETED file's bytes are.


def record_archived(conn: Connection, file_ids: Sequence[int], archive_name: str) -> int:
    """In the caller's transaction: these COMPLETED files are inside the verified archive `archive_name`."""
    result = conn.execute(
        update(files)
        .where(files.c.file_id.in_(list(file_ids)), files.c.status == COMPLETED)
        .values(archived_at=utcnow(), archive_name=archive_name)
    )
    return result.rowcount


def record_deleted(engine: Engine, file_id: int) -> bool:
    """Retention removed a COMPLETED file from disk; the first deletion time is kept (False if already set)."""
    with engine.begin() as conn:
        result = conn.execute(
            update(files)
            .where(files.c.file_id == file_id, files.c.status == COMPLETED, files.c.deleted_at.is_(None))
            .values(deleted_at=utcnow())
        )
        return result.rowcount == 1


def record_restored(engine: Engine, file_ids: Sequence[int]) -> int:
    """`restore` put the files back on disk: clear `deleted_at`, keep `archived_at`/`archive_name` as history."""
    with engine.begin() as conn:
        result = conn.execute(
            update(files)
            .where(files.c.file_id.in_(list(file_ids)), files.c.deleted_at.is_not(None))
            .values(deleted_at=None)
        )
        return result.rowcount
