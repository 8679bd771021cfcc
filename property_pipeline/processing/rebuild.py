"""Rebuild: load every registered file into a fresh database, from the payload folder and the archives.

The source database is only read: its status rows say which files exist, what they must hash to,
and where their bytes are (on disk, or inside the verified archive of a month retention deleted).
The target gets status rows of its own that copy the source's registrations, file ids included,
then an ordinary processing run loads them, oldest first:

1. files of deleted months straight from their archives, one pass over each archive, nothing
   written back to disk;
2. the files on disk, with the usual processors (`process_backlog`, any number of workers).

What the target gets of each source file: a duplicate stays a duplicate of the same original
(when the original is in the rebuilt range; otherwise it is its own original); a DISCARDED file
stays DISCARDED (the reason carried over) and is not loaded; every other file is PENDING and is
loaded, whatever its state in the source (a file that failed there fails again, or loads if the
cause is gone). The payload root's markers mirror the source database, so a rebuild writes none.

A rebuild that stopped (a crash, SIGKILL, Ctrl-C) is run again with the same arguments: files
already loaded into the target are kept, the others are loaded. The target must be empty or a
rebuild of the same source; while a rebuild runs it is the target's only writer (a lock says so).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from property_pipeline.db import locks, status
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import file_status_events as events
from property_pipeline.db.schema import properties
from property_pipeline.errors import ConfigurationError
from property_pipeline.processing.parallel import process_backlog
from property_pipeline.processing.processor import FileOutcome, Outcome, PayloadProcessor, ProgressCallback
from property_pipeline.retention.archive import ArchiveError, ManifestEntry, read_members
from property_pipeline.settings import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
)
from property_pipeline.states import FileStatus
from property_pipeline.store.backend import PayloadStore

log = logging.getLogger(__name__)

ACTOR = "rebuild"
LOCK_NAME = "rebuild"
# Status columns copied from the source: the file's identity and where its bytes are.
COPIED = (
    "file_id",
    "file_path",
    "campaign_id",
    "batch_number",
    "month",
    "checksum_sha256",
    "file_size_bytes",
    "captured_at",
    "properties_count",
    "content_unreadable",
    "plain_json",
    "archived_at",
    "deleted_at",
    "archive_name",
)
REGISTER_BATCH = 1_000


class RebuildRefused(ConfigurationError):
    """The target cannot be rebuilt into: it is the source, or holds data that is not a rebuild of the source."""


@dataclass
class RebuildReport:
    registered: int = 0  # status rows created in the target by this run
    carried_discarded: int = 0
    duplicates: int = 0
    from_archives: int = 0  # files loaded straight from an archive
    outcomes: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def completed(self) -> int:
        return sum(1 for o in self.outcomes if o.status == Outcome.COMPLETED)

    @property
    def failed(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == Outcome.FAILED]

    @property
    def records_loaded(self) -> int:
        return sum(o.success_count for o in self.outcomes)

    @property
    def rows_per_second(self) -> float:
        return self.records_loaded / self.seconds if self.seconds > 0 else 0.0


def same_database(source: Engine, target: Engine) -> bool:
    """True when both engines point at one database (one SQLite file, or one server's database)."""
    a, b = source.url, target.url
    if a.get_backend_name() != b.get_backend_name():
        return False
    if a.get_backend_name() == "sqlite":
        return bool(a.database) and Path(a.database or "").resolve() == Path(b.database or "").resolve()
    return (a.host or "localhost", a.port or 5432, a.database) == (b.host or "localhost", b.port or 5432, b.database)


def pending_in_target(target: Engine) -> int:
    with target.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(files).where(files.c.status.in_([FileStatus.PENDING]))
            ).scalar_one()
        )


def rebuild(
    source: Engine,
    target: Engine,
    store: PayloadStore,
    *,
    from_month: str | None = None,
    to_month: str | None = None,
    workers: int = 1,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    statement_timeout_seconds: int = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    on_registered: Callable[[int], None] | None = None,
    on_file: ProgressCallback | None = None,
    on_stop_requested: Callable[[int], None] | None = None,
) -> RebuildReport:
    """Rebuild the source's files of the months in [from_month, to_month] into `target` (schema already current).

    `on_registered(pending)` is told how many files wait to be loaded, before loading starts.
    """
    if same_database(source, target):
        raise RebuildRefused("the target is the source database; rebuild into a new, empty database")
    started = time.perf_counter()
    report = RebuildReport()
    try:
        with locks.exclusive(target, LOCK_NAME, wait=False):
            _register(source, target, report, from_month, to_month)
            status.release_every_claim(target, ACTOR, "the rebuild that claimed it stopped; taken up again")
            if on_registered is not None:
                on_registered(pending_in_target(target))
            processor = PayloadProcessor(
                target,
                store,
                lease_seconds=lease_seconds,
                max_payload_bytes=max_payload_bytes,
                statement_timeout_seconds=statement_timeout_seconds,
                mirror_markers=False,
            )
            _load_from_archives(target, store, processor, report, on_file)
            backlog = process_backlog(
                target,
                store,
                workers=workers,
                lease_seconds=lease_seconds,
                max_payload_bytes=max_payload_bytes,
                statement_timeout_seconds=statement_timeout_seconds,
                on_file=on_file,
                on_stop_requested=on_stop_requested,
                mirror_markers=False,
            )
            report.outcomes += backlog.outcomes
    except locks.LockHeld:
        raise RebuildRefused("another rebuild into this database is running; wait for it to finish") from None
    report.seconds = time.perf_counter() - started
    return report


def _register(
    source: Engine, target: Engine, report: RebuildReport, from_month: str | None, to_month: str | None
) -> None:
    """Copy the source's registrations in range that the target does not have yet; refuse a foreign target."""
    known = _check_target(source, target)
    conditions = []
    if from_month is not None:
        conditions.append(files.c.month >= from_month)
    if to_month is not None:
        conditions.append(files.c.month <= to_month)
    query = (
        select(*(files.c[name] for name in COPIED), files.c.status, files.c.duplicate_of_file_id, files.c.error_details)
        .where(*conditions)
        .order_by(files.c.file_id)
    )
    discard_reasons = _discard_reasons(source)
    batch: list[dict[str, Any]] = []
    taken = set(known)
    with source.connect() as conn:
        for row in conn.execution_options(yield_per=REGISTER_BATCH).execute(query):
            if row.file_id in known:
                continue
            # Every row has the same keys: one INSERT statement for the batch.
            copy: dict[str, Any] = {name: row._mapping[name] for name in COPIED}
            copy.update(
                status=FileStatus.PENDING,
                duplicate_of_file_id=None,
                error_details=None,
                success_count=None,
                error_count=None,
                processing_time_ms=None,
                event_detail=None,
            )
            if row.status == FileStatus.DISCARDED:
                copy["status"] = FileStatus.DISCARDED
                copy["error_details"] = row.error_details
                copy["event_detail"] = f"discarded in the source database: {discard_reasons.get(row.file_id, '')}"
                report.carried_discarded += 1
            elif row.duplicate_of_file_id is not None and row.duplicate_of_file_id in taken:
                copy.update(
                    status=FileStatus.COMPLETED,
                    duplicate_of_file_id=row.duplicate_of_file_id,
                    success_count=0,
                    error_count=0,
                    processing_time_ms=0,
                )
                report.duplicates += 1
            taken.add(row.file_id)
            batch.append(copy)
            if len(batch) >= REGISTER_BATCH:
                report.registered += _insert(target, batch)
                batch = []
    report.registered += _insert(target, batch)


def _insert(target: Engine, batch: Sequence[dict[str, Any]]) -> int:
    with target.begin() as conn:
        status.register_copies(conn, batch, ACTOR, "registered by a rebuild from the source database")
    return len(batch)


def _check_target(source: Engine, target: Engine) -> set[int]:
    """The file ids the target already holds, each the same file as in the source; RebuildRefused otherwise."""
    with target.connect() as conn:
        held = {
            row.file_id: (row.file_path, row.checksum_sha256)
            for row in conn.execute(select(files.c.file_id, files.c.file_path, files.c.checksum_sha256))
        }
        has_rows = conn.execute(select(properties.c.property_id).limit(1)).first() is not None
    if not held:
        if has_rows:
            raise RebuildRefused("the target database holds properties but no files; rebuild into an empty database")
        return set()
    with source.connect() as conn:
        same = {
            row.file_id
            for row in conn.execute(
                select(files.c.file_id, files.c.file_path, files.c.checksum_sha256).where(
                    files.c.file_id.in_(sorted(held))
                )
            )
            if held[row.file_id] == (row.file_path, row.checksum_sha256)
        }
    foreign = sorted(set(held) - same)
    if foreign:
        raise RebuildRefused(
            f"the target database holds {len(foreign)} files that are not the source's (file {foreign[0]}: "
            f"{held[foreign[0]][0]}); rebuild into an empty database, or into the one an earlier rebuild of this "
            "source left"
        )
    return set(held)


def _discard_reasons(source: Engine) -> dict[int, str]:
    """The recorded reason of each DISCARDED file's latest discard."""
    query = (
        select(events.c.file_id, events.c.detail)
        .join(files, files.c.file_id == events.c.file_id)
        .where(files.c.status == FileStatus.DISCARDED, events.c.to_status == FileStatus.DISCARDED)
        .order_by(events.c.event_id)
    )
    with source.connect() as conn:
        return {row.file_id: row.detail or "" for row in conn.execute(query)}


def _load_from_archives(
    target: Engine,
    store: PayloadStore,
    processor: PayloadProcessor,
    report: RebuildReport,
    on_file: ProgressCallback | None,
) -> None:
    """Load the target's PENDING files of deleted months straight from their archives, one pass per archive."""
    query = (
        select(
            files.c.file_id, files.c.file_path, files.c.file_size_bytes, files.c.checksum_sha256, files.c.archive_name
        )
        .where(files.c.status == FileStatus.PENDING, files.c.deleted_at.is_not(None))
        .order_by(files.c.file_id)
    )
    with target.connect() as conn:
        waiting = conn.execute(query).all()
    by_archive: dict[str | None, dict[str, ManifestEntry]] = {}
    ids: dict[str, int] = {}
    for row in waiting:
        entry = ManifestEntry.registered(row.file_id, row.file_path, row.file_size_bytes, row.checksum_sha256)
        by_archive.setdefault(row.archive_name, {})[row.file_path] = entry
        ids[row.file_path] = row.file_id
    worker = processor.worker
    for archive_name, wanted in by_archive.items():
        unread = dict(wanted)
        problem = "it was deleted by retention without an archive: its records are gone"
        if archive_name is not None:
            try:
                for path, body in read_members(store, archive_name, wanted):
                    del unread[path]
                    outcome = _load_one(target, processor, ids[path], body)
                    if outcome is not None:
                        report.from_archives += 1
                        report.outcomes.append(outcome)
                        if on_file is not None:
                            on_file(outcome)
            except ArchiveError as error:
                problem = f"it was deleted by retention and its archive cannot give it back: {error}"
        for path in sorted(unread):  # only when the archive could not give them (read_members says why)
            claimed = status.claim_next_pending(target, worker, processor.lease_seconds, file_ids=[ids[path]])
            if claimed is None:
                continue
            message = f"{path}: {problem}"
            status.mark_failed(target, claimed.file_id, worker, message, processing_time_ms=0)
            outcome = FileOutcome(claimed.file_id, path, Outcome.FAILED, 0, 0, 0, 0, message)
            report.outcomes.append(outcome)
            if on_file is not None:
                on_file(outcome)


def _load_one(target: Engine, processor: PayloadProcessor, file_id: int, body: bytes) -> FileOutcome | None:
    claimed = status.claim_next_pending(target, processor.worker, processor.lease_seconds, file_ids=[file_id])
    if claimed is None:  # loaded meanwhile (nobody else writes here): nothing to do
        return None
    return processor.process_claimed(claimed, body=body)
