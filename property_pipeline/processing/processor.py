"""The processing loop: claim a file, verify it, parse it, load it, record the outcome; repeat."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import BinaryIO

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from property_pipeline.db import status
from property_pipeline.db.status import PayloadFile
from property_pipeline.errors import ProcessingError
from property_pipeline.processing import replay
from property_pipeline.processing.loader import load_records
from property_pipeline.processing.memory import fewer_garbage_collections
from property_pipeline.processing.parse import PayloadFormatError, PayloadPage, read_page
from property_pipeline.processing.requeue import prepare_backlog
from property_pipeline.settings import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
)
from property_pipeline.states import FileStatus
from property_pipeline.store import markers
from property_pipeline.store.backend import PayloadStore, PayloadTooLarge
from property_pipeline.store.layout import PayloadPathError

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What became of one claimed file: the file's new state (COMPLETED, FAILED), or why it has none from this
    processor (LOST, DEFERRED). Not a file state: a file is never LOST or DEFERRED in the status table."""

    COMPLETED = FileStatus.COMPLETED.value
    FAILED = FileStatus.FAILED.value
    LOST = "LOST"  # another worker owns the file now: this one's lease had expired
    DEFERRED = "DEFERRED"  # given back to PENDING: other processors' locks on its properties did not clear in time


# A file's transaction waits at most this long for a lock another processor holds, and is tried this
# many times (with a growing, jittered pause) before the file is given back for a later run.
LOCK_TIMEOUT_SECONDS = 10
CONFLICT_ATTEMPTS = 4
# SQLSTATEs of a transaction that lost to a concurrent one: deadlock, serialization failure, lock timeout.
CONFLICT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
# The heartbeat renews a claim this many times per lease, so that one late renewal never loses it.
RENEWALS_PER_LEASE = 3


def new_worker_id() -> str:
    """A claim owner name that is unique per process run: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FileProblem(ProcessingError):
    """A file-level problem: the file is marked FAILED with this message and the run goes on."""


class ConflictsPersisted(ProcessingError):
    """The file's transaction kept losing to concurrent transactions; the file goes back to PENDING."""


@dataclass(frozen=True)
class FileOutcome:
    file_id: int
    file_path: str
    status: Outcome
    properties_count: int
    success_count: int
    error_count: int
    processing_time_ms: int
    error: str | None = None


@dataclass
class ProcessingReport:
    worker: str
    workers: int = 1  # processes that claimed files (see processing/parallel.py)
    requeued: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    outcomes: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def _count(self, state: Outcome) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == state)

    @property
    def completed(self) -> int:
        return self._count(Outcome.COMPLETED)

    @property
    def failed(self) -> int:
        return self._count(Outcome.FAILED)

    @property
    def deferred(self) -> list[FileOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == Outcome.DEFERRED]

    @property
    def records_loaded(self) -> int:
        return sum(outcome.success_count for outcome in self.outcomes)

    @property
    def records_quarantined(self) -> int:
        return sum(outcome.error_count for outcome in self.outcomes)

    @property
    def rows_per_second(self) -> float:
        return self.records_loaded / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> list[FileOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == Outcome.FAILED]


ProgressCallback = Callable[[FileOutcome], None]


class _Heartbeat:
    """Renews a claim's lease from a thread while its file is processed, so a long load never loses its claim.

    A renewal that finds the file no longer claimed by this worker stops the heartbeat; the data
    transaction then fails on its own check of the claim (LostClaim). While the data transaction holds
    the status row, a renewal waits for it (and renews nothing once the file is done), which is harmless:
    nobody requeues a row that a transaction holds.
    """

    def __init__(self, engine: Engine, file_id: int, worker: str, lease_seconds: int) -> None:
        self._engine, self._file_id, self._worker, self._lease = engine, file_id, worker, lease_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat-{file_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self._lease / RENEWALS_PER_LEASE):
            try:
                if not status.extend_lease(self._engine, self._file_id, self._worker, self._lease):
                    return  # finished, or taken over: nothing left to renew
            except DBAPIError as error:  # the database is away: the load itself will say so
                log.warning("file %s: could not renew its lease: %s", self._file_id, error.orig)

    def stop(self) -> None:
        self._stopped.set()


def _elapsed_ms(started: float) -> int:
    """Milliseconds since `started`, rounded up: a file that took 0.3 ms took 1 ms, not none (rates stay finite)."""
    return math.ceil((time.perf_counter() - started) * 1000)


def is_conflict(error: OperationalError) -> bool:
    """True when the database aborted the transaction because of a concurrent one (worth trying again)."""
    return getattr(error.orig, "sqlstate", None) in CONFLICT_SQLSTATES


@dataclass(frozen=True)
class _ReadPage:
    """A payload read, checksummed and validated ahead of its claim (see _ReadAhead)."""

    file_id: int
    checksum_sha256: str
    size_bytes: int
    page: PayloadPage


class _ReadAhead:
    """Reads, checksums and validates the file the next claim will most likely take, while the current file's
    transaction commits.

    SQLite's commit (writing the file's pages to the write-ahead log) releases the GIL, so the next file's
    JSON parse and validation run on the other core meanwhile: each file then costs its load plus the
    longer of its commit and the next file's parse, not their sum. It is only a guess, made without a
    claim or a lock: the processor uses the result only when the file it then claims is the one read
    (the same id, size and registered checksum), and reads the file itself otherwise. Any problem met
    ahead (a missing file, bad JSON) is left for the normal path to meet and report.
    """

    def __init__(
        self, processor: PayloadProcessor, month: str | None, file_ids: Sequence[int] | None, excluding: Sequence[int]
    ) -> None:
        self._processor = processor
        self._month = month
        self._file_ids = file_ids
        self._excluding = list(excluding)
        self._thread: threading.Thread | None = None
        self._result: _ReadPage | None = None

    def start(self) -> None:
        """Begin reading (idempotent: a transaction retried after a conflict calls it again)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="read-ahead", daemon=True)
            self._thread.start()

    def result(self) -> _ReadPage | None:
        """The page read ahead (waiting for it), or None when nothing was read."""
        if self._thread is None:
            return None
        self._thread.join()
        return self._result

    def _read(self) -> None:
        try:
            guess = status.peek_next_pending(
                self._processor.engine, month=self._month, file_ids=self._file_ids, excluding=self._excluding
            )
            if guess is None or guess.file_size_bytes > self._processor.max_payload_bytes:
                return
            with self._processor.store.open_payload(guess.file_path, self._processor.max_payload_bytes) as handle:
                body = handle.read()
            checksum = hashlib.sha256(body).hexdigest()
            # Registration's verdict holds for the bytes it hashed only.
            page = read_page(body, plain=guess.plain_json is True and checksum == guess.checksum_sha256)
            page.validate_all()
            self._result = _ReadPage(guess.file_id, checksum, len(body), page)
        except Exception:  # a guess: whatever went wrong, the normal path meets it and reports it
            log.debug("reading ahead failed; the file is read when it is claimed", exc_info=True)


class PayloadProcessor:
    """Processes registered payload files exactly once; any number of processors may run at once."""

    def __init__(
        self,
        engine: Engine,
        store: PayloadStore,
        *,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
        worker: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        statement_timeout_seconds: int = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
        mirror_markers: bool = True,
    ) -> None:
        """`mirror_markers=False` leaves the payload root's marker folders alone (no `pending/`/`processed/`
        markers, no processing copy): for a processor whose database is not the one those markers mirror,
        such as a rebuild into a fresh database."""
        self.engine = engine
        self.store = store
        self.lease_seconds = lease_seconds
        self.worker = worker or new_worker_id()
        self.max_payload_bytes = max_payload_bytes
        self.statement_timeout_seconds = statement_timeout_seconds
        self.mirror_markers = mirror_markers
        self._random = random.Random()  # noqa: S311 - retry jitter, not secrets
        self._held: Connection | None = None  # the connection of a run in progress (see `run`)
        # The last file's properties were all new (see load_records). Not assumed for the first file: a wrong
        # guess inserts a whole file's rows before it is undone, a lookup that finds nothing costs a statement.
        self._expect_new = False

    def run(
        self,
        *,
        month: str | None = None,
        file_ids: Sequence[int] | None = None,
        include_failed: bool = False,
        limit: int | None = None,
        on_file: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        prepare: bool = True,
    ) -> ProcessingReport:
        """Process PENDING files in scope (and FAILED ones first put back, when asked) until none is left, `limit`
        files are done, or `should_stop()` says so (asked before each claim). `prepare=False` skips putting
        expired and failed files back (a parent process did it for its workers)."""
        started = time.perf_counter()
        report = ProcessingReport(worker=self.worker)
        if prepare:
            report.requeued, report.retried = prepare_backlog(
                self.engine,
                self.store,
                self.worker,
                month=month,
                file_ids=file_ids,
                include_failed=include_failed,
                mirror_markers=self.mirror_markers,
            )
        deferred: list[int] = []  # given back during this run: not claimed again by it
        # SQLite has one writer, and its commits leave a core free for reading the next file meanwhile.
        read_ahead = self.engine.dialect.name == "sqlite"
        # One connection for the run's claims and loads: one checkout and one liveness check, not two per file.
        with self.engine.connect() as held, fewer_garbage_collections():
            self._held = held
            try:
                self._run_claims(report, deferred, read_ahead, month, file_ids, limit, on_file, should_stop)
            finally:
                self._held = None
        report.seconds = time.perf_counter() - started
        return report

    def _run_claims(
        self,
        report: ProcessingReport,
        deferred: list[int],
        read_ahead: bool,
        month: str | None,
        file_ids: Sequence[int] | None,
        limit: int | None,
        on_file: ProgressCallback | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        """Claim and process files until none is left in scope, `limit` is reached, or `should_stop()`."""
        ahead: _ReadPage | None = None
        while limit is None or len(report.outcomes) < limit:
            if should_stop is not None and should_stop():
                break
            claimed = status.claim_next_pending(
                self._held or self.engine,
                self.worker,
                self.lease_seconds,
                month=month,
                file_ids=file_ids,
                excluding=deferred,
            )
            if claimed is None:
                break
            reader = (
                _ReadAhead(self, month, file_ids, [*deferred, claimed.file_id])
                if read_ahead and (limit is None or len(report.outcomes) + 1 < limit)
                else None
            )
            try:
                outcome = self.process_claimed(
                    claimed,
                    read_ahead=ahead if ahead is not None and ahead.file_id == claimed.file_id else None,
                    before_commit=reader.start if reader is not None else None,
                )
            finally:
                ahead = reader.result() if reader is not None else None
            if outcome.status == Outcome.DEFERRED:
                deferred.append(outcome.file_id)
            report.outcomes.append(outcome)
            if on_file is not None:
                on_file(outcome)

    def process_claimed(
        self,
        payload: PayloadFile,
        body: bytes | None = None,
        *,
        read_ahead: _ReadPage | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> FileOutcome:
        """Load one claimed file in one transaction, or mark it FAILED; markers follow the database.

        `body` is the file's content when the caller already holds it (a rebuild reading a deleted month
        straight from its archive); it is checked against the registered SHA-256 like bytes read from disk.
        `read_ahead` is the file as read ahead of its claim (used only if it matches the claimed file);
        `before_commit` is called inside the file's transaction, just before it commits.
        An interruption (Ctrl-C, a signal turned into an exception) gives the claim back before it
        propagates, so the file is PENDING again at once instead of after its lease.
        """
        started = time.perf_counter()
        copy = None
        heartbeat = _Heartbeat(self.engine, payload.file_id, self.worker, self.lease_seconds)
        if read_ahead is not None and (
            read_ahead.checksum_sha256 != payload.checksum_sha256 or read_ahead.size_bytes != payload.file_size_bytes
        ):
            read_ahead = None  # not the bytes registered: the normal path reads the file and says so
        try:
            if body is not None:
                self._check_size(payload, len(body))
                outcome = self._load(payload, io.BytesIO(body), started, before_commit=before_commit)
            elif read_ahead is not None:
                root = self.store.folder
                if self.mirror_markers and root is not None:
                    copy = markers.processing_copy(root, payload.file_id, root.resolve(payload.file_path))
                # The bytes were read and checked already; a retried transaction reads them again from disk.
                outcome = self._load(payload, None, started, page=read_ahead.page, before_commit=before_commit)
            else:
                size = self.store.payload_size(payload.file_path)
                if size is None:
                    raise FileProblem(
                        f"payload file {payload.file_path} is missing from {self.store.describe()}; "
                        "restore it (property-pipeline restore, or from a backup), then retry"
                    )
                self._check_size(payload, size)  # before it is read: memory stays bounded
                root = self.store.folder
                # Held open before `processing/` gets its name for the file: that name may be tidied away,
                # and retention may delete the original meanwhile, never the bytes read.
                with self.store.open_payload(payload.file_path, self.max_payload_bytes) as handle:
                    if self.mirror_markers and root is not None:
                        copy = markers.processing_copy(root, payload.file_id, root.resolve(payload.file_path))
                    outcome = self._load(payload, handle, started, before_commit=before_commit)
        except status.LostClaim as error:
            log.warning("%s", error)
            return FileOutcome(payload.file_id, payload.file_path, Outcome.LOST, 0, 0, 0, 0, str(error))
        except PayloadTooLarge as error:
            outcome = self._fail(payload, str(self._too_large(payload, error.size)), started)
        except (FileProblem, PayloadPathError, OSError) as error:  # PayloadMissing, PayloadStoreUnavailable too
            outcome = self._fail(payload, str(error), started)
        except ConflictsPersisted as error:
            self._release_quietly(payload, str(error))
            log.warning("file %s deferred: %s", payload.file_id, error)
            return FileOutcome(payload.file_id, payload.file_path, Outcome.DEFERRED, 0, 0, 0, 0, str(error))
        except OperationalError:
            # The database went away mid-file: nothing was committed. Give the file back and stop.
            self._release_quietly(payload, "database connection lost during processing")
            raise
        except DBAPIError as error:
            message = str(error.orig) if error.orig is not None else str(error)
            outcome = self._fail(payload, f"{payload.file_path}: the database refused the data: {message}", started)
        except BaseException:
            self._release_quietly(payload, "processing interrupted")
            raise
        finally:
            heartbeat.stop()
            if copy is not None:
                markers.drop_processing_copy(copy)
        if self.mirror_markers:
            self.store.follow(
                payload.file_path,
                FileStatus(outcome.status),  # COMPLETED or FAILED here: the file's new state
                file_id=payload.file_id,
                success_count=outcome.success_count,
                error_count=outcome.error_count,
                error=outcome.error,
            )
        return outcome

    def _check_size(self, payload: PayloadFile, size: int) -> None:
        if size > self.max_payload_bytes:
            raise self._too_large(payload, size)

    def _too_large(self, payload: PayloadFile, size: int) -> FileProblem:
        return FileProblem(
            f"payload file {payload.file_path} is {size:,} bytes, above the limit of "
            f"{self.max_payload_bytes:,} (PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES); it was not read. "
            "Raise the limit if the file is genuine, then retry"
        )

    def _load(
        self,
        payload: PayloadFile,
        handle: BinaryIO | None,
        started: float,
        *,
        page: PayloadPage | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> FileOutcome:
        """Verify, parse and load the file in one transaction; a transaction that loses to a concurrent one is
        rolled back and tried again (the file read again) a bounded number of times. `page`: the file already
        read and verified (its first attempt uses it; `handle` None means: open the file for a retry)."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            if page is None or attempt > 1:
                if handle is None:
                    with self.store.open_payload(payload.file_path, self.max_payload_bytes) as fresh:
                        page = self._read(payload, fresh)
                else:
                    page = self._read(payload, handle)
            try:
                with status.transaction(self._held or self.engine) as conn:
                    status.hold_claim(conn, payload.file_id, self.worker, bounds=self._wait_bounds())
                    # Records are validated while they load: the counts are known once load_records returns.
                    loaded = load_records(conn, payload, page, expect_new=self._expect_new)
                    # A reload whose page no longer delivers some properties: they get their other sources.
                    replay.give_new_sources(conn, payload.file_id, loaded.dropped, replay.page_reader(self.store))
                    elapsed_ms = _elapsed_ms(started)
                    status.mark_completed(
                        conn,
                        payload.file_id,
                        self.worker,
                        properties_count=page.properties_count,
                        success_count=page.accepted,
                        error_count=len(page.rejected),
                        processing_time_ms=elapsed_ms,
                    )
                    if before_commit is not None:
                        before_commit()
            except OperationalError as error:
                if not is_conflict(error):
                    raise
                if attempt == CONFLICT_ATTEMPTS:
                    raise ConflictsPersisted(
                        f"{payload.file_path}: its transaction lost {attempt} times to concurrent processors "
                        f"({error.orig}); nothing of it was loaded and it is PENDING again for the next run"
                    ) from None
                pause = self._random.uniform(0, 0.2 * 2**attempt)
                log.info("file %s: %s; trying again in %.2fs", payload.file_id, error.orig, pause)
                time.sleep(pause)
                continue
            # Files come in runs (a first capture, then its re-capture a month later): the next is likely alike.
            self._expect_new = loaded.all_new
            return FileOutcome(
                payload.file_id,
                payload.file_path,
                Outcome.COMPLETED,
                page.properties_count,
                page.accepted,
                len(page.rejected),
                elapsed_ms,
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _read(self, payload: PayloadFile, handle: BinaryIO) -> PayloadPage:
        # Read once per attempt: the bytes checked against the checksum are the very bytes parsed.
        handle.seek(0)
        body = handle.read()
        checksum = hashlib.sha256(body).hexdigest()
        if checksum != payload.checksum_sha256:
            raise FileProblem(
                f"checksum mismatch for {payload.file_path}: registered {payload.checksum_sha256}, "
                f"now {checksum}; the file changed after capture and was not loaded. "
                "Restore the original bytes, then retry"
            )
        try:
            return read_page(body, plain=payload.plain_json is True)  # the bytes registration judged: checked above
        except PayloadFormatError as error:
            raise FileProblem(f"{payload.file_path}: {error}") from None

    def _wait_bounds(self) -> status.WaitBounds:
        """PostgreSQL: the file's transaction waits at most LOCK_TIMEOUT_SECONDS for a lock, and its session is
        ended by the server if it sits idle inside the transaction for a lease (a suspended processor: a live one
        never pauses between its statements) or runs one statement past `statement_timeout_seconds`, so that
        its row locks never hold the other processors up for good."""
        return status.WaitBounds(
            lock_timeout=f"{LOCK_TIMEOUT_SECONDS}s",
            idle_in_transaction_session_timeout=f"{self.lease_seconds}s",
            statement_timeout=f"{self.statement_timeout_seconds}s",
        )

    def _fail(self, payload: PayloadFile, message: str, started: float) -> FileOutcome:
        elapsed_ms = _elapsed_ms(started)
        log.error("file %s FAILED: %s", payload.file_id, message)
        if not self._mark_failed(payload, message, elapsed_ms):
            return FileOutcome(payload.file_id, payload.file_path, Outcome.LOST, 0, 0, 0, elapsed_ms, message)
        return FileOutcome(
            payload.file_id,
            payload.file_path,
            Outcome.FAILED,
            payload.properties_count or 0,
            0,
            0,
            elapsed_ms,
            message,
        )

    def _mark_failed(self, payload: PayloadFile, message: str, elapsed_ms: int) -> bool:
        """FAILED, in one transaction with removing what an earlier load of the file left (a reload that failed):
        a FAILED file has no data. False when the claim was lost."""
        if payload.attempts <= 1:
            return status.mark_failed(self.engine, payload.file_id, self.worker, message, processing_time_ms=elapsed_ms)
        try:
            with self.engine.begin() as conn:
                status.hold_claim(conn, payload.file_id, self.worker)
                dropped = replay.unload(conn, payload.file_id)
                replay.give_new_sources(conn, payload.file_id, dropped, replay.page_reader(self.store))
                return status.mark_failed_in(conn, payload.file_id, self.worker, message, processing_time_ms=elapsed_ms)
        except status.LostClaim:
            return False
        except replay.SourceUnavailable as error:
            note = f"{message} (its earlier data stays loaded: {error})"
            return status.mark_failed(self.engine, payload.file_id, self.worker, note, processing_time_ms=elapsed_ms)

    def _release_quietly(self, payload: PayloadFile, reason: str) -> None:
        try:
            status.release_claim(self.engine, payload.file_id, self.worker, reason)
        except DBAPIError:
            log.warning("file %s stays PROCESSING until its lease expires: %s", payload.file_id, reason)
