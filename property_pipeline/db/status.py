"""The status-table transitions. The only module that writes `batch_file_status.status`.

    register ──▶ PENDING ──claim──▶ PROCESSING ──▶ COMPLETED (same transaction as the data)
                  ▲ ▲ ▲                  │  │    └─────────────reprocess──────────────┐
                  │ │ └── lease expired ─┘  └──▶ FAILED ──discard──▶ DISCARDED        │
                  │ └──────────── retry ───────────┘                      │           │
                  ├──────────────────────── retry --file-id ──────────────┘           │
                  └───────────────────────────────────────────────────────────────────┘

Every transition is guarded by the state it leaves (compare-and-set) and leaves a row in
`file_status_events`, so concurrent processors can never both own a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Engine, Row, Select, and_, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import ReturningUpdate

from property_pipeline.db.engine import SQLITE_DEFERRED
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import file_status_events as events
from property_pipeline.db.schema import utcnow
from property_pipeline.errors import ProcessingError
from property_pipeline.states import SETTLED, FileStatus

MAX_ERROR_CHARS = 4000


class LostClaim(ProcessingError):
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
    plain_json: bool | None = None  # the page decodes as plain JSON, as registration found (None: not known)


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
    content_unreadable: bool = False  # empty or not a page: never recorded as a duplicate
    plain_json: bool | None = None  # the page decodes as plain JSON (orjson reads it); None: not known


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
    files.c.plain_json,
)


def _payload_file(row: Row[*tuple[Any, ...]]) -> PayloadFile:
    return PayloadFile(**row._mapping)


_INSERT_EVENT = insert(events)


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
        conn.execute(_INSERT_EVENT, rows)


def register_files(conn: Connection, candidates: Sequence[NewPayloadFile], actor: str) -> list[Registration]:
    """Register files as PENDING in the caller's transaction, one Registration per candidate, in order.

    Idempotent per `file_path`. One original per content is the database's rule (a unique index on
    the checksum of originals): a file whose bytes equal a registered original is recorded as
    COMPLETED with `duplicate_of_file_id` set and nothing to load, so its records never load twice,
    whoever registers at the same time. A file that was empty or not a page (`content_unreadable`)
    is always its own original. A few statements per call, not per file.
    """
    first_of_path: dict[str, NewPayloadFile] = {}
    for candidate in candidates:
        first_of_path.setdefault(candidate.file_path, candidate)
    registered = _registrations_by_path(conn, list(first_of_path))
    unknown = [candidate for path, candidate in first_of_path.items() if path not in registered]
    now = utcnow()
    # Every unknown file is offered as an original; within the call, the first of each content wins.
    created = _insert(conn, _originals_statement(conn.dialect.name), [_row(c, now) for c in unknown])
    # The others lost on their content (an original of the same bytes exists, maybe committed a
    # moment ago by another registrar) or on their path (registered meanwhile by someone else).
    lost = [candidate for candidate in unknown if candidate.file_path not in created]
    originals = _originals_of(conn, {c.checksum_sha256 for c in lost if not c.content_unreadable})
    duplicates = [
        _row(c, now, duplicate_of=originals[c.checksum_sha256]) for c in lost if c.checksum_sha256 in originals
    ]
    created.update(_insert(conn, _duplicates_statement(conn.dialect.name), duplicates))
    _record_registrations(conn, list(created.values()), actor, now)
    missing = [path for path in first_of_path if path not in registered and path not in created]
    registered.update(_registrations_by_path(conn, missing))  # registered by a racing registrar
    unaccounted = [path for path in missing if path not in registered]
    if unaccounted:  # neither inserted nor registered: nothing but a concurrent deletion of rows can do this
        raise RuntimeError(f"registration of {unaccounted[:3]} conflicted with rows that are gone; run it again")
    return [created.get(c.file_path) or registered[c.file_path] for c in candidates]


def _registrations_by_path(conn: Connection, paths: Sequence[str]) -> dict[str, Registration]:
    """{file_path: Registration(created=False)} of the paths already registered."""
    if not paths:
        return {}
    query = select(files.c.file_id, files.c.file_path, files.c.status, files.c.duplicate_of_file_id).where(
        files.c.file_path.in_(paths)
    )
    return {
        row.file_path: Registration(row.file_id, row.file_path, row.status, False, row.duplicate_of_file_id)
        for row in conn.execute(query)
    }


def _originals_of(conn: Connection, checksums: set[str]) -> dict[str, int]:
    """{checksum: file_id} of the registered original of each content."""
    if not checksums:
        return {}
    query = select(files.c.checksum_sha256, files.c.file_id).where(
        files.c.checksum_sha256.in_(sorted(checksums)),
        files.c.duplicate_of_file_id.is_(None),
        files.c.content_unreadable.is_(False),
    )
    return {row.checksum_sha256: row.file_id for row in conn.execute(query)}


def _row(candidate: NewPayloadFile, now: datetime, *, duplicate_of: int | None = None) -> dict[str, object]:
    row: dict[str, object] = {
        "file_path": candidate.file_path,
        "campaign_id": candidate.campaign_id,
        "batch_number": candidate.batch_number,
        "month": candidate.month,
        "checksum_sha256": candidate.checksum_sha256,
        "file_size_bytes": candidate.file_size_bytes,
        "captured_at": candidate.captured_at,
        "properties_count": candidate.properties_count,
        "content_unreadable": candidate.content_unreadable,
        "plain_json": candidate.plain_json,
        "created_at": now,
        "status": FileStatus.PENDING,
    }
    if duplicate_of is not None:
        row.update(
            status=FileStatus.COMPLETED,
            duplicate_of_file_id=duplicate_of,
            processed_at=now,
            success_count=0,
            error_count=0,
            processing_time_ms=0,
        )
    return row


def _insert(conn: Connection, statement: Any, rows: Sequence[dict[str, object]]) -> dict[str, Registration]:
    """Run an INSERT ... ON CONFLICT DO NOTHING RETURNING over the rows; the registrations it created."""
    if not rows:
        return {}
    by_path = {row["file_path"]: row for row in rows}
    return {
        inserted.file_path: Registration(
            inserted.file_id,
            inserted.file_path,
            str(by_path[inserted.file_path]["status"]),
            True,
            cast(int | None, by_path[inserted.file_path].get("duplicate_of_file_id")),
        )
        for inserted in conn.execute(statement, list(rows))
    }


def _dialect_insert(dialect: str) -> Any:
    insert_into = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert_into is None:
        raise NotImplementedError(f"database {dialect!r} is not supported (use SQLite or PostgreSQL)")
    return insert_into(files)


@cache
def _originals_statement(dialect: str) -> Any:
    # No conflict target: a row is skipped when its path is registered or an original has its content.
    return _dialect_insert(dialect).on_conflict_do_nothing().returning(files.c.file_path, files.c.file_id)


@cache
def _duplicates_statement(dialect: str) -> Any:
    return (
        _dialect_insert(dialect)
        .on_conflict_do_nothing(index_elements=["file_path"])
        .returning(files.c.file_path, files.c.file_id)
    )


def _record_registrations(conn: Connection, created: Sequence[Registration], actor: str, now: datetime) -> None:
    rows = [
        {
            "file_id": registration.file_id,
            "at": now,
            "from_status": None,
            "to_status": registration.status,
            "actor": actor[:128],
            "detail": (
                f"duplicate of file {registration.duplicate_of}: same SHA-256, nothing to load"
                if registration.duplicate_of
                else None
            ),
        }
        for registration in created
    ]
    if rows:
        conn.execute(_INSERT_EVENT, rows)


# The statements of the per-file transitions are built once: building a statement costs the
# processor more than the database takes to run it (they run twice per file).


def _next_pending(by_month: bool, by_file_ids: bool, excluding: bool) -> Select[tuple[int]]:
    """The PENDING file a claim takes next: the lowest file id in scope."""
    conditions = [files.c.status == FileStatus.PENDING]
    if by_month:
        conditions.append(files.c.month == bindparam("scope_month"))
    if by_file_ids:
        conditions.append(files.c.file_id.in_(bindparam("scope_file_ids", expanding=True)))
    if excluding:
        conditions.append(files.c.file_id.not_in(bindparam("scope_excluded", expanding=True)))
    return select(files.c.file_id).where(*conditions).order_by(files.c.file_id).limit(1)


@cache
def _peek_statement(by_month: bool, by_file_ids: bool, excluding: bool) -> Select[Any]:
    candidate = _next_pending(by_month, by_file_ids, excluding).scalar_subquery()
    return select(*_FILE_COLUMNS).where(files.c.file_id == candidate)


@cache
def _claim_statement(by_month: bool, by_file_ids: bool, excluding: bool) -> ReturningUpdate[Any]:
    candidate = _next_pending(by_month, by_file_ids, excluding).with_for_update(skip_locked=True).scalar_subquery()
    return (
        update(files)
        .where(files.c.file_id == candidate, files.c.status == FileStatus.PENDING)
        .values(
            status=FileStatus.PROCESSING,
            locked_by=bindparam("claim_worker"),
            locked_until=bindparam("claim_until"),
            attempts=files.c.attempts + 1,
        )
        .returning(*_FILE_COLUMNS)
    )


@contextmanager
def transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A transaction on `bind`: a pooled connection of an Engine, or a Connection a caller holds for many (a
    processor's run: one checkout and one liveness check for all its claims and loads)."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    else:
        with bind.begin():
            yield bind


def claim_next_pending(
    engine: Engine | Connection,
    worker: str,
    lease_seconds: int,
    *,
    month: str | None = None,
    file_ids: Sequence[int] | None = None,
    excluding: Sequence[int] = (),
) -> PayloadFile | None:
    """Atomically move the oldest PENDING file (in scope, not in `excluding`) to PROCESSING for `worker`; None when
    none is left.

    PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait on each other's row.
    SQLite: the transaction starts with BEGIN IMMEDIATE, which serializes claims.
    """
    parameters: dict[str, object] = {
        "claim_worker": worker,
        "claim_until": utcnow() + timedelta(seconds=lease_seconds),
        **_scope_parameters(month, file_ids, excluding),
    }
    with transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            # The claim need not wait for its WAL to reach disk: a server crash that loses it also
            # ends this processor's connection, so the file is just PENDING again and nothing of it
            # was loaded. The file's data transaction commits synchronously, flushing the claim too.
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        statement = _claim_statement(month is not None, file_ids is not None, bool(excluding))
        row = conn.execute(statement, parameters).first()
        if row is None:
            return None
        _record_events(conn, [row.file_id], FileStatus.PENDING, FileStatus.PROCESSING, worker, None)
        return _payload_file(row)


def _scope_parameters(month: str | None, file_ids: Sequence[int] | None, excluding: Sequence[int]) -> dict[str, object]:
    parameters: dict[str, object] = {}
    if month is not None:
        parameters["scope_month"] = month
    if file_ids is not None:
        parameters["scope_file_ids"] = list(file_ids)
    if excluding:
        parameters["scope_excluded"] = list(excluding)
    return parameters


def peek_next_pending(
    engine: Engine, *, month: str | None = None, file_ids: Sequence[int] | None = None, excluding: Sequence[int] = ()
) -> PayloadFile | None:
    """The file `claim_next_pending` would take now, read without claiming or locking it (another processor may
    take it first: a guess, for reading ahead). On SQLite a plain read, which a writer does not block."""
    statement = _peek_statement(month is not None, file_ids is not None, bool(excluding))
    with engine.connect().execution_options(**{SQLITE_DEFERRED: True}) as conn:
        row = conn.execute(statement, _scope_parameters(month, file_ids, excluding)).first()
    return None if row is None else _payload_file(row)


def extend_lease(engine: Engine, file_id: int, worker: str, lease_seconds: int) -> bool:
    """Heartbeat: push the lease forward; False when the claim was lost."""
    with engine.begin() as conn:
        result = conn.execute(
            update(files)
            .where(files.c.file_id == file_id, files.c.status == FileStatus.PROCESSING, files.c.locked_by == worker)
            .values(locked_until=utcnow() + timedelta(seconds=lease_seconds))
        )
        return result.rowcount == 1


_HOLD = (
    select(files.c.file_id)
    .where(
        files.c.file_id == bindparam("hold_file_id"),
        files.c.status == FileStatus.PROCESSING,
        files.c.locked_by == bindparam("hold_worker"),
    )
    .with_for_update()
)


@dataclass(frozen=True)
class WaitBounds:
    """PostgreSQL settings that bound how long a transaction may wait or idle (`SET LOCAL` values, e.g. '10s')."""

    lock_timeout: str
    idle_in_transaction_session_timeout: str
    statement_timeout: str


# The bounds set and the status row locked in one statement (one round trip per file); the settings come first in
# the select list, so the lock's wait is bounded too.
_PG_HOLD_WITHIN_BOUNDS = (
    "SELECT set_config('lock_timeout', %(lock)s, true), "
    "set_config('idle_in_transaction_session_timeout', %(idle)s, true), "
    "set_config('statement_timeout', %(statement)s, true), "
    "(SELECT file_id FROM batch_file_status WHERE file_id = %(file_id)s AND status = %(status)s "
    "AND locked_by = %(worker)s FOR UPDATE)"
)


def hold_claim(conn: Connection, file_id: int, worker: str, *, bounds: WaitBounds | None = None) -> None:
    """Inside the data transaction: lock the status row and check this worker still owns it. PostgreSQL: `bounds`
    are set for the rest of the transaction first."""
    if bounds is not None and conn.dialect.name == "postgresql":
        parameters = {
            "lock": bounds.lock_timeout,
            "idle": bounds.idle_in_transaction_session_timeout,
            "statement": bounds.statement_timeout,
            "file_id": file_id,
            "status": FileStatus.PROCESSING.value,
            "worker": worker,
        }
        owned = conn.exec_driver_sql(_PG_HOLD_WITHIN_BOUNDS, parameters).one()[3]
    else:
        owned = conn.execute(_HOLD, {"hold_file_id": file_id, "hold_worker": worker}).first()
    if owned is None:
        raise LostClaim(f"file {file_id} is no longer claimed by {worker} (lease expired and it was requeued)")


_COMPLETE = (
    update(files)
    .where(
        files.c.file_id == bindparam("done_file_id"),
        files.c.status == FileStatus.PROCESSING,
        files.c.locked_by == bindparam("done_worker"),
    )
    .values(
        status=FileStatus.COMPLETED,
        processed_at=bindparam("done_at"),
        properties_count=bindparam("done_properties"),
        success_count=bindparam("done_success"),
        error_count=bindparam("done_errors"),
        processing_time_ms=bindparam("done_ms"),
        error_details=None,
        locked_by=None,
        locked_until=None,
    )
)


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
        _COMPLETE,
        {
            "done_file_id": file_id,
            "done_worker": worker,
            "done_at": utcnow(),
            "done_properties": properties_count,
            "done_success": success_count,
            "done_errors": error_count,
            "done_ms": processing_time_ms,
        },
    )
    if result.rowcount != 1:
        raise LostClaim(f"file {file_id} is no longer claimed by {worker}")
    detail = f"{success_count} loaded, {error_count} quarantined" if error_count else f"{success_count} loaded"
    _record_events(conn, [file_id], FileStatus.PROCESSING, FileStatus.COMPLETED, worker, detail)


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
    with engine.begin() as conn:
        return mark_failed_in(
            conn, file_id, worker, error, processing_time_ms=processing_time_ms, properties_count=properties_count
        )


def mark_failed_in(
    conn: Connection,
    file_id: int,
    worker: str,
    error: str,
    *,
    processing_time_ms: int,
    properties_count: int | None = None,
) -> bool:
    """PROCESSING → FAILED in the caller's transaction (which also removes the data of a file that had been
    loaded before, see processing/replay.py). False when the claim was lost."""
    error = error[:MAX_ERROR_CHARS]
    result = conn.execute(
        update(files)
        .where(files.c.file_id == file_id, files.c.status == FileStatus.PROCESSING, files.c.locked_by == worker)
        .values(
            status=FileStatus.FAILED,
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
    _record_events(conn, [file_id], FileStatus.PROCESSING, FileStatus.FAILED, worker, error)
    return True


def release_claim(engine: Engine, file_id: int, worker: str, reason: str) -> bool:
    """PROCESSING → PENDING when this worker gives a file back unfinished (for example the database went away)."""
    with engine.begin() as conn:
        result = conn.execute(
            update(files)
            .where(files.c.file_id == file_id, files.c.status == FileStatus.PROCESSING, files.c.locked_by == worker)
            .values(status=FileStatus.PENDING, locked_by=None, locked_until=None)
        )
        if result.rowcount != 1:
            return False
        _record_events(conn, [file_id], FileStatus.PROCESSING, FileStatus.PENDING, worker, reason)
        return True


def requeue_expired_claims(engine: Engine, actor: str, now: datetime | None = None) -> list[int]:
    """PROCESSING files whose lease has expired (their processor died) go back to PENDING.

    A row still locked by an open transaction is skipped, not waited for: its processor is alive
    (suspended, or slow) inside the file's data transaction; it is requeued once that session ends.
    """
    now = now or utcnow()
    expired = (
        select(files.c.file_id)
        .where(files.c.status == FileStatus.PROCESSING, files.c.locked_until < now)
        .with_for_update(skip_locked=True)
    )
    with engine.begin() as conn:
        rows = conn.execute(
            update(files)
            .where(files.c.file_id.in_(expired), files.c.status == FileStatus.PROCESSING)
            .values(status=FileStatus.PENDING, locked_by=None, locked_until=None)
            .returning(files.c.file_id)
        ).all()
        requeued = sorted(row.file_id for row in rows)
        _record_events(
            conn,
            requeued,
            FileStatus.PROCESSING,
            FileStatus.PENDING,
            actor,
            "lease expired: processor stopped without finishing",
        )
        return requeued


def release_every_claim(engine: Engine, actor: str, reason: str) -> list[int]:
    """Every PROCESSING file back to PENDING at once, whatever its lease: only for a database that one command
    owns alone (a rebuild's target, under its lock), where a claim left behind is a stopped run's."""
    with engine.begin() as conn:
        rows = conn.execute(
            update(files)
            .where(files.c.status == FileStatus.PROCESSING)
            .values(status=FileStatus.PENDING, locked_by=None, locked_until=None)
            .returning(files.c.file_id)
        ).all()
        released = sorted(row.file_id for row in rows)
        _record_events(conn, released, FileStatus.PROCESSING, FileStatus.PENDING, actor, reason)
        return released


def register_copies(conn: Connection, rows: Sequence[dict[str, Any]], actor: str, detail: str) -> None:
    """Insert status rows that copy another database's registrations (a rebuild), keeping their file ids; each
    row's `status` is PENDING, a duplicate's COMPLETED or a discarded file's DISCARDED (its event says why)."""
    if not rows:
        return
    now = utcnow()
    conn.execute(
        insert(files),
        [
            {
                **{key: value for key, value in row.items() if key != "event_detail"},
                "created_at": now,
                "attempts": 0,
            }
            for row in rows
        ],
    )
    conn.execute(
        _INSERT_EVENT,
        [
            {
                "file_id": row["file_id"],
                "at": now,
                "from_status": None,
                "to_status": row["status"],
                "actor": actor[:128],
                "detail": row.get("event_detail") or detail,
            }
            for row in rows
        ],
    )
    if conn.dialect.name == "postgresql":  # ids were given: the sequence must not hand them out again
        conn.execute(
            select(
                func.setval(
                    func.pg_get_serial_sequence(files.name, files.c.file_id.name),
                    select(func.max(files.c.file_id)).scalar_subquery(),
                )
            )
        )


def retry_failed(
    engine: Engine,
    actor: str,
    *,
    file_ids: Sequence[int] | None = None,
    month: str | None = None,
    all_failed: bool = False,
) -> list[int]:
    """FAILED → PENDING for the chosen files (the last error stays in `error_details` until the next outcome).

    Files named by id are taken back from DISCARDED too; a month or "all failed" never undoes a discard.
    """
    if file_ids is None and month is None and not all_failed:
        raise ValueError("say which failed files to retry: file ids, a month, or all")
    retried: list[int] = []
    with engine.begin() as conn:
        for from_status in (FileStatus.FAILED, FileStatus.DISCARDED):
            if from_status == FileStatus.DISCARDED and file_ids is None:
                continue
            conditions = [files.c.status == from_status]
            if file_ids is not None:
                conditions.append(files.c.file_id.in_(list(file_ids)))
            if month is not None:
                conditions.append(files.c.month == month)
            rows = conn.execute(
                update(files)
                .where(and_(*conditions))
                .values(status=FileStatus.PENDING, pending_since=utcnow())
                .returning(files.c.file_id)
            ).all()
            moved = sorted(row.file_id for row in rows)
            detail = "retry requested" if from_status == FileStatus.FAILED else "discard taken back: retry requested"
            _record_events(conn, moved, from_status, FileStatus.PENDING, actor, detail)
            retried += moved
    return sorted(retried)


def discard_failed(engine: Engine, actor: str, file_ids: Sequence[int], reason: str) -> list[int]:
    """FAILED → DISCARDED for the given files, with the reason: an operator gave up on them. Never loaded;
    settled for the month's checks and alerts; `retry_failed(file_ids=...)` takes it back."""
    with engine.begin() as conn:
        rows = conn.execute(
            update(files)
            .where(files.c.file_id.in_(list(file_ids)), files.c.status == FileStatus.FAILED)
            .values(status=FileStatus.DISCARDED)
            .returning(files.c.file_id)
        ).all()
        discarded = sorted(row.file_id for row in rows)
        _record_events(conn, discarded, FileStatus.FAILED, FileStatus.DISCARDED, actor, f"discarded: {reason}")
        return discarded


def mark_for_reprocessing(engine: Engine, actor: str, file_ids: Sequence[int], reason: str) -> list[int]:
    """COMPLETED → PENDING for the given files, with the reason, so that they load again.

    Duplicates (nothing to load) and files retention deleted (restore them first) stay as they are. A
    file's previous data stays until its reload replaces it, in the reload's own transaction.
    """
    with engine.begin() as conn:
        rows = conn.execute(
            update(files)
            .where(
                files.c.file_id.in_(list(file_ids)),
                files.c.status == FileStatus.COMPLETED,
                files.c.duplicate_of_file_id.is_(None),
                files.c.deleted_at.is_(None),
            )
            .values(status=FileStatus.PENDING, pending_since=utcnow())
            .returning(files.c.file_id)
        ).all()
        marked = sorted(row.file_id for row in rows)
        _record_events(conn, marked, FileStatus.COMPLETED, FileStatus.PENDING, actor, f"reprocess: {reason}")
        return marked


# Retention never changes `status`: it only records where a settled (COMPLETED or DISCARDED) file's bytes
# are. Each change still leaves a row in `file_status_events` (from and to the same state), so a reader
# of the events (the Dagster month sensor) sees that the month's files moved.
RETENTION_ACTOR = "retention"


def _record_same_state(conn: Connection, rows: Sequence[Row[Any]], detail: str) -> None:
    """One event per (file_id, status) row, from and to that state: retention moved bytes, not states."""
    for state in sorted({row.status for row in rows}):
        _record_events(
            conn, [row.file_id for row in rows if row.status == state], state, state, RETENTION_ACTOR, detail
        )


def record_archived(conn: Connection, file_ids: Sequence[int], archive_name: str) -> int:
    """In the caller's transaction: these settled files are inside the verified archive `archive_name`."""
    rows = conn.execute(
        update(files)
        .where(files.c.file_id.in_(list(file_ids)), files.c.status.in_(sorted(SETTLED)))
        .values(archived_at=utcnow(), archive_name=archive_name)
        .returning(files.c.file_id, files.c.status)
    ).all()
    _record_same_state(conn, sorted(rows, key=lambda row: row.file_id), f"archived in {archive_name}")
    return len(rows)


def record_deleted(engine: Engine, file_id: int) -> bool:
    """Retention removed a settled file from disk; the first deletion time is kept (False if already set)."""
    with engine.begin() as conn:
        rows = conn.execute(
            update(files)
            .where(files.c.file_id == file_id, files.c.status.in_(sorted(SETTLED)), files.c.deleted_at.is_(None))
            .values(deleted_at=utcnow())
            .returning(files.c.file_id, files.c.status)
        ).all()
        _record_same_state(conn, rows, "deleted from disk by retention")
        return len(rows) == 1


def record_restored(engine: Engine, file_ids: Sequence[int]) -> int:
    """`restore` put the files back on disk: clear `deleted_at`, keep `archived_at`/`archive_name` as history."""
    with engine.begin() as conn:
        rows = conn.execute(
            update(files)
            .where(files.c.file_id.in_(list(file_ids)), files.c.deleted_at.is_not(None))
            .values(deleted_at=None)
            .returning(files.c.file_id, files.c.status)
        ).all()
        _record_same_state(conn, sorted(rows, key=lambda row: row.file_id), "restored from its archive")
        return len(rows)
