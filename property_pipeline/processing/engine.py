"""The processing loop: claim a file, verify it, parse it, load it, record the outcome; repeat."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from property_pipeline.db import status
from property_pipeline.db.status import PayloadFile
from property_pipeline.processing.loader import load_records
from property_pipeline.processing.memory import fewer_garbage_collections
from property_pipeline.processing.parse import PayloadFormatError, read_page
from property_pipeline.settings import DEFAULT_MAX_PAYLOAD_BYTES
from property_pipeline.store import markers
from property_pipeline.store.layout import PayloadPathError, PayloadRoot

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """A claim owner name that is unique per process run: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FileProblem(Exception):
    """A file-level problem: the file is marked FAILED with this message and the run goes on."""


@dataclass(frozen=True)
class FileOutcome:
    file_id: int
    file_path: str
    status: str  # COMPLETED, FAILED, or LOST (another worker took it over)
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

    def _count(self, state: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == state)

    @property
    def completed(self) -> int:
        return self._count(status.COMPLETED)

    @property
    def failed(self) -> int:
        return self._count(status.FAILED)

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
        return [outcome for outcome in self.outcomes if outcome.status == status.FAILED]


ProgressCallback = Callable[[FileOutcome], None]


class PayloadProcessor:
    """Processes registered payload files exactly once; any number of processors may run at once."""

    def __init__(
        self,
        engine: Engine,
        root: PayloadRoot,
        *,
        lease_seconds: int = 300,
        worker: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.engine = engine
        self.root = root
        self.lease_seconds = lease_seconds
        self.worker = worker or new_worker_id()
        self.max_payload_bytes = max_payload_bytes

    def run(
        self,
        *,
        month: str | None = None,
        file_ids: Sequence[int] | None = None,
        include_failed: bool = False,
        limit: int | None = None,
        on_file: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ProcessingReport:
        """Process PENDING files in scope (and FAILED ones first put back, when asked) until none is left, `limit`
        files are done, or `should_stop()` says so (asked before each claim)."""
        started = time.perf_counter()
        report = ProcessingReport(worker=self.worker)
        report.requeued = status.requeue_expired_claims(self.engine, self.worker)
        for file_id in report.requeued:
            log.warning("file %s: lease expired, its processor stopped; back to PENDING", file_id)
        if include_failed:
            report.retried = status.retry_failed(
                self.engine, self.worker, file_ids=file_ids, month=month, all_failed=True
            )
        with fewer_garbage_collections():
            while limit is None or len(report.outcomes) < limit:
                if should_stop is not None and should_stop():
                    break
                claimed = status.claim_next_pending(
                    self.engine, self.worker, self.lease_seconds, month=month, file_ids=file_ids
                )
                if claimed is None:
                    break
                outcome = self.process_claimed(claimed)
                report.outcomes.append(outcome)
                if on_file is not None:
                    on_file(outcome)
        report.seconds = time.perf_counter() - started
        return report

    def process_claimed(self, payload: PayloadFile) -> FileOutcome:
        """Load one claimed file in one transaction, or mark it FAILED; markers follow the database."""
        started = time.perf_counter()
        copy = None
        try:
            source = self.root.resolve(payload.file_path)
            if not source.is_file():
                raise FileProblem(
                    f"payload file {payload.file_path} is missing from {self.root.payloads}; "
                    "restore it (property-pipeline restore, or from a backup), then retry"
                )
            size = source.stat().st_size
            if size > self.max_payload_bytes:  # refused before it is copied or read: memory stays bounded
                raise FileProblem(
                    f"payload file {payload.file_path} is {size:,} bytes, above the limit of "
                    f"{self.max_payload_bytes:,} (PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES); it was not read. "
                    "Raise the limit if the file is genuine, then retry"
                )
            copy = markers.processing_copy(self.root, payload.file_id, source)
            # Read once: the bytes that are checked against the checksum are the very bytes parsed.
            body = copy.read_bytes()
            checksum = hashlib.sha256(body).hexdigest()
            if checksum != payload.checksum_sha256:
                raise FileProblem(
                    f"checksum mismatch for {payload.file_path}: registered {payload.checksum_sha256}, "
                    f"now {checksum}; the file changed after capture and was not loaded. "
                    "Restore the original bytes, then retry"
                )
            try:
                page = read_page(body)
            except PayloadFormatError as error:
                raise FileProblem(f"{payload.file_path}: {error}") from None
            del body
            with self.engine.begin() as conn:
                status.hold_claim(conn, payload.file_id, self.worker)
                # Records are validated while they load: the counts are known once load_records returns.
                load_records(conn, payload, page)
                elapsed_ms = int((time.perf_counter() - started) * 1000)
                status.mark_completed(
                    conn,
                    payload.file_id,
                    self.worker,
                    properties_count=page.properties_count,
                    success_count=page.accepted,
                    error_count=len(page.rejected),
                    processing_time_ms=elapsed_ms,
                )
            outcome = FileOutcome(
                payload.file_id,
                payload.file_path,
                status.COMPLETED,
                page.properties_count,
                page.accepted,
                len(page.rejected),
                elapsed_ms,
            )
        except status.LostClaim as error:
            log.warning("%s", error)
            return FileOutcome(payload.file_id, payload.file_path, "LOST", 0, 0, 0, 0, str(error))
        except (FileProblem, PayloadPathError, OSError) as error:
            outcome = self._fail(payload, str(error), started)
        except OperationalError:
            # The database went away mid-file: nothing was committed. Give the file back and stop.
            self._release_quietly(payload, "database connection lost during processing")
            raise
        except DBAPIError as error:
            message = str(error.orig) if error.orig is not None else str(error)
            outcome = self._fail(payload, f"{payload.file_path}: the database refused the data: {message}", started)
        finally:
            if copy is not None:
                markers.drop_processing_copy(copy)
        if outcome.status == "LOST":
            return outcome
        markers.mark_processed(
            self.root,
            payload.file_path,
            {
                "file_id": payload.file_id,
                "status": outcome.status,
                "success_count": outcome.success_count,
                "error_count": outcome.error_count,
                "error": outcome.error,
            },
        )
        return outcome

    def _fail(self, payload: PayloadFile, message: str, started: float) -> FileOutcome:
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        log.error("file %s FAILED: %s", payload.file_id, message)
        if not status.mark_failed(self.engine, payload.file_id, self.worker, message, processing_time_ms=elapsed_ms):
            return FileOutcome(payload.file_id, payload.file_path, "LOST", 0, 0, 0, elapsed_ms, message)
        return FileOutcome(
            payload.file_id, payload.file_path, status.FAILED, payload.properties_count or 0, 0, 0, elapsed_ms, message
        )

    def _release_quietly(self, payload: PayloadFile, reason: str) -> None:
        try:
            status.release_claim(self.engine, payload.file_id, self.worker, reason)
        except DBAPIError:
            log.warning("file %s stays PROCESSING until its lease expires: %s", payload.file_id, reason)
