"""Several processors in one command: worker processes that claim files from the same status table.

A processor is mostly Python work (parse, validate, encode rows) while the database stores the
previous file, so one process keeps one core busy at best. Each worker here is an ordinary
`PayloadProcessor` with its own claim owner name and its own connections; the claims
(`FOR UPDATE SKIP LOCKED` and compare-and-set) are what keep every file processed once, exactly
as with separate `process` commands. The parent claims nothing: it puts expired and (when asked)
failed files back first, then collects each worker's outcomes as they happen, for the progress
display and one merged report.

Stopping: the workers never outlive the command. Each asks the kernel for SIGTERM when its parent
dies (SIGKILL included) and checks that its parent is still the one that forked it; on SIGTERM or
Ctrl-C a worker finishes the file it holds (or gives it back) and claims no more. The parent turns
SIGTERM and Ctrl-C into `ProcessingInterrupted`, after its workers have stopped.

Workers are forked, so they start at once and share the parent's imported code; where fork is
not available (or one worker is asked for) the work runs in this process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from property_pipeline.errors import ProcessingError
from property_pipeline.processing.processor import (
    PayloadProcessor,
    ProcessingReport,
    ProgressCallback,
    new_worker_id,
)
from property_pipeline.processing.requeue import prepare_backlog
from property_pipeline.settings import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
)
from property_pipeline.store.backend import PayloadStore

log = logging.getLogger(__name__)

# More workers than this stop paying on one database server: they contend for its CPU and WAL.
MAX_DEFAULT_WORKERS = 4
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkerFailed(ProcessingError):
    """A worker process stopped before the backlog was done (its error, or how it exited).

    `database_error` is the driver's message when a worker lost the database (connection refused or
    lost, statement cancelled): the same cause a single processor raises as OperationalError.
    """

    def __init__(self, message: str, *, database_error: str | None = None) -> None:
        super().__init__(message)
        self.database_error = database_error


class ProcessingInterrupted(ProcessingError):
    """SIGTERM or Ctrl-C stopped the run; every claimed file was finished or given back first."""

    def __init__(self, signal_number: int, report: ProcessingReport) -> None:
        super().__init__(
            f"interrupted by {signal.Signals(signal_number).name}: {report.completed} files completed and "
            f"{report.failed} failed before it; every file in hand was finished or given back to PENDING. "
            "Run `property-pipeline process` to go on"
        )
        self.signal_number = signal_number
        self.report = report
        self.exit_code = 128 + signal_number


def default_workers(dialect: str) -> int:
    """One worker per CPU (at most MAX_DEFAULT_WORKERS) on PostgreSQL; one on SQLite, which has one writer."""
    if dialect != "postgresql":
        return 1
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


@dataclass(frozen=True)
class _Scope:
    month: str | None
    file_ids: Sequence[int] | None
    lease_seconds: int
    max_payload_bytes: int
    statement_timeout_seconds: int
    mirror_markers: bool


class _StopRequest:
    """The first SIGTERM or SIGINT asks for a stop after the file in hand; a second one raises at once."""

    def __init__(self, on_first: Callable[[int], None] | None = None) -> None:
        self.signal_number: int | None = None
        self._on_first = on_first

    def __call__(self, signal_number: int, _frame: FrameType | None) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt
        self.signal_number = signal_number
        if self._on_first is not None:
            self._on_first(signal_number)

    def requested(self) -> bool:
        return self.signal_number is not None


@contextmanager
def _handling(handler: Any) -> Iterator[None]:
    """SIGTERM and SIGINT go to `handler` inside the block (main thread only); the old handlers come back after."""
    try:
        previous = {number: signal.signal(number, handler) for number in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: the host (a Dagster run worker) handles signals
        yield
        return
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def process_backlog(
    engine: Engine,
    store: PayloadStore,
    *,
    workers: int = 1,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    statement_timeout_seconds: int = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    month: str | None = None,
    file_ids: Sequence[int] | None = None,
    include_failed: bool = False,
    limit: int | None = None,
    on_file: ProgressCallback | None = None,
    on_stop_requested: Callable[[int], None] | None = None,
    mirror_markers: bool = True,
) -> ProcessingReport:
    """Process the PENDING files in scope with `workers` processes; one merged report.

    `limit` (process at most N files) runs in one process: a shared count across workers would
    need a shared claim budget, and a limit is for small, careful runs anyway. SIGTERM or Ctrl-C
    stop the run after the files in hand (`on_stop_requested` is told) and raise ProcessingInterrupted.
    `mirror_markers=False` for a database the root's markers do not mirror (see PayloadProcessor).
    """
    stop_request = _StopRequest(on_stop_requested)
    if workers <= 1 or limit is not None or "fork" not in multiprocessing.get_all_start_methods():
        processor = PayloadProcessor(
            engine,
            store,
            lease_seconds=lease_seconds,
            max_payload_bytes=max_payload_bytes,
            statement_timeout_seconds=statement_timeout_seconds,
            mirror_markers=mirror_markers,
        )
        with _handling(stop_request):
            report = processor.run(
                month=month,
                file_ids=file_ids,
                include_failed=include_failed,
                limit=limit,
                on_file=on_file,
                should_stop=stop_request.requested,
            )
    else:
        scope = _Scope(month, file_ids, lease_seconds, max_payload_bytes, statement_timeout_seconds, mirror_markers)
        with _handling(stop_request):
            report = _with_workers(engine, store, workers, scope, include_failed, on_file, stop_request)
    if stop_request.signal_number is not None:
        raise ProcessingInterrupted(stop_request.signal_number, report)
    return report


def _with_workers(
    engine: Engine,
    store: PayloadStore,
    workers: int,
    scope: _Scope,
    include_failed: bool,
    on_file: ProgressCallback | None,
    stop_request: _StopRequest,
) -> ProcessingReport:
    started = time.perf_counter()
    report = ProcessingReport(worker=new_worker_id(), workers=workers)
    report.requeued, report.retried = prepare_backlog(
        engine,
        store,
        report.worker,
        month=scope.month,
        file_ids=scope.file_ids,
        include_failed=include_failed,
        mirror_markers=scope.mirror_markers,
    )
    engine.dispose()  # no pooled connection is inherited by a worker
    context = multiprocessing.get_context("fork")
    stop = context.Event()  # set when a worker fails or a stop is requested: the others finish their file
    running: dict[Connection, multiprocessing.process.BaseProcess] = {}
    try:
        for number in range(workers):
            reader, writer = context.Pipe(duplex=False)
            siblings = list(running)  # the other workers' pipes: a worker closes its inherited copies
            worker = context.Process(
                target=_work,
                args=(writer, siblings, os.getpid(), stop, engine, store, scope),
                name=f"property-pipeline-worker-{number + 1}",
            )
            worker.start()
            writer.close()  # the parent's copy: the reader sees end-of-file when the worker exits
            running[reader] = worker
        problems, database_error = _collect(running, report, on_file, stop, stop_request)
    finally:
        stop.set()
        for reader, process in running.items():
            process.join()
            reader.close()
    report.seconds = time.perf_counter() - started
    if problems and not stop_request.requested():
        raise WorkerFailed(
            "processing stopped: "
            + "; ".join(problems)
            + f" ({report.completed} files completed and {report.failed} failed meanwhile; "
            "the other workers stopped after their file. A file a worker held when it died stays PROCESSING "
            "until its lease expires, then the next run takes it)",
            database_error=database_error,
        )
    return report


def _collect(
    running: dict[Connection, multiprocessing.process.BaseProcess],
    report: ProcessingReport,
    on_file: ProgressCallback | None,
    stop: Any,
    stop_request: _StopRequest,
) -> tuple[list[str], str | None]:
    """Read every worker's messages until all have exited: the problems of those that did not finish, and
    the first database error among them. The first problem, or a stop request, sets `stop` for the others."""
    problems: list[str] = []
    database_error: str | None = None
    finished: set[Connection] = set()
    open_readers = list(running)
    while open_readers:
        if stop_request.requested():
            stop.set()
        for reader in wait(open_readers, timeout=0.5):
            assert isinstance(reader, Connection)
            try:
                kind, payload = reader.recv()
            except EOFError:
                open_readers.remove(reader)
                if reader not in finished:
                    stop.set()  # it ended without saying it was done (killed): the others stop too
                continue
            if kind == "file":
                report.outcomes.append(payload)
                if on_file is not None:
                    on_file(payload)
            elif kind == "done":
                finished.add(reader)
            else:
                stop.set()
                problems.append(f"{running[reader].name}: {payload}")
                if kind == "database_error" and database_error is None:
                    database_error = payload
    for reader, worker in running.items():
        worker.join()
        if reader not in finished and not any(problem.startswith(f"{worker.name}:") for problem in problems):
            problems.append(f"{worker.name} exited with status {worker.exitcode} before finishing")
    return problems, database_error


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux); if it already died, stop now."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        try:
            ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # not Linux: the parent check in should_stop still applies
            pass
    if os.getppid() != parent_pid:
        raise SystemExit(1)


def _work(
    writer: Connection,
    siblings: list[Connection],
    parent_pid: int,
    stop: Any,
    engine: Engine,
    store: PayloadStore,
    scope: _Scope,
) -> None:
    """A worker process: an ordinary processor over the same scope, its outcomes sent as they happen."""
    for sibling in siblings:
        sibling.close()  # only the parent reads the pipes: with its end gone, a send fails instead of blocking
    stop_request = _StopRequest()
    signal.signal(signal.SIGTERM, stop_request)
    signal.signal(signal.SIGINT, stop_request)  # Ctrl-C reaches the whole group: finish the file in hand
    _die_with_parent(parent_pid)
    engine.dispose(close=False)  # the parent's connections are the parent's; this process opens its own
    processor = PayloadProcessor(
        engine,
        store,
        lease_seconds=scope.lease_seconds,
        max_payload_bytes=scope.max_payload_bytes,
        statement_timeout_seconds=scope.statement_timeout_seconds,
        mirror_markers=scope.mirror_markers,
    )

    def should_stop() -> bool:
        return stop.is_set() or stop_request.requested() or os.getppid() != parent_pid

    try:
        processor.run(
            month=scope.month,
            file_ids=scope.file_ids,
            on_file=lambda outcome: writer.send(("file", outcome)),
            should_stop=should_stop,
            prepare=False,
        )
    except OperationalError as error:  # the database went away or cancelled the statement: said as one line
        _send(writer, ("database_error", str(error.orig) if error.orig is not None else str(error)))
        raise SystemExit(1) from None  # the parent reports it; no traceback on the terminal
    except (BrokenPipeError, KeyboardInterrupt):  # the parent is gone, or a second Ctrl-C: the claim was given back
        raise SystemExit(1) from None
    except BaseException as error:  # a process boundary: every error goes to the parent
        log.exception("worker stopped by an unexpected error")  # a bug: keep its traceback
        _send(writer, ("error", f"{type(error).__name__}: {error}"))
        raise SystemExit(1) from None
    else:
        _send(writer, ("done", None))
    finally:
        engine.dispose()
        writer.close()


def _send(writer: Connection, message: tuple[str, Any]) -> None:
    try:
        writer.send(message)
    except (BrokenPipeError, OSError):
        pass  # the parent is gone: nobody to tell
