"""Several processors in one command: worker processes that claim files from the same status table.

A processor is mostly Python work (parse, validate, encode rows) while the database stores the
previous file, so one process keeps one core busy at best. Each worker here is an ordinary
`PayloadProcessor` with its own claim owner name and its own connections; the claims
(`FOR UPDATE SKIP LOCKED` and compare-and-set) are what keep every file processed once, exactly
as with separate `process` commands. The parent claims nothing: it puts expired and (when asked)
failed files back first, then collects each worker's outcomes as they happen, for the progress
display and one merged report.

Workers are forked, so they start at once and share the parent's imported code; where fork is
not available (or one worker is asked for) the work runs in this process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from property_pipeline.db import status
from property_pipeline.processing.engine import (
    PayloadProcessor,
    ProcessingReport,
    ProgressCallback,
    new_worker_id,
)
from property_pipeline.settings import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_PAYLOAD_BYTES
from property_pipeline.store.layout import PayloadRoot

log = logging.getLogger(__name__)

# More workers than this stop paying on one database server: they contend for its CPU and WAL.
MAX_DEFAULT_WORKERS = 4


class WorkerFailed(RuntimeError):
    """A worker process stopped before the backlog was done (its error, or how it exited).

    `database_error` is the driver's message when a worker lost the database (connection refused or
    lost, statement cancelled): the same cause a single processor raises as OperationalError.
    """

    def __init__(self, message: str, *, database_error: str | None = None) -> None:
        super().__init__(message)
        self.database_error = database_error


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


def process_backlog(
    engine: Engine,
    root: PayloadRoot,
    *,
    workers: int = 1,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    month: str | None = None,
    file_ids: Sequence[int] | None = None,
    include_failed: bool = False,
    limit: int | None = None,
    on_file: ProgressCallback | None = None,
) -> ProcessingReport:
    """Process the PENDING files in scope with `workers` processes; one merged report.

    `limit` (process at most N files) runs in one process: a shared count across workers would
    need a shared claim budget, and a limit is for small, careful runs anyway.
    """
    if workers <= 1 or limit is not None or "fork" not in multiprocessing.get_all_start_methods():
        processor = PayloadProcessor(engine, root, lease_seconds=lease_seconds, max_payload_bytes=max_payload_bytes)
        return processor.run(
            month=month, file_ids=file_ids, include_failed=include_failed, limit=limit, on_file=on_file
        )
    started = time.perf_counter()
    report = ProcessingReport(worker=new_worker_id(), workers=workers)
    report.requeued = status.requeue_expired_claims(engine, report.worker)
    for file_id in report.requeued:
        log.warning("file %s: lease expired, its processor stopped; back to PENDING", file_id)
    if include_failed:
        report.retried = status.retry_failed(engine, report.worker, file_ids=file_ids, month=month, all_failed=True)
    engine.dispose()  # no pooled connection is inherited by a worker
    scope = _Scope(month, file_ids, lease_seconds, max_payload_bytes)
    context = multiprocessing.get_context("fork")
    stop = context.Event()  # set when a worker fails: the others finish their file and claim no more
    running: dict[Connection, multiprocessing.process.BaseProcess] = {}
    try:
        for number in range(workers):
            reader, writer = context.Pipe(duplex=False)
            worker = context.Process(
                target=_work, args=(writer, stop, engine, root, scope), name=f"property-pipeline-worker-{number + 1}"
            )
            worker.start()
            writer.close()  # the parent's copy: the reader sees end-of-file when the worker exits
            running[reader] = worker
        problems, database_error = _collect(running, report, on_file, stop)
    finally:
        stop.set()
        for reader, worker in running.items():
            worker.join()
            reader.close()
    report.seconds = time.perf_counter() - started
    if problems:
        raise WorkerFailed(
            "; ".join(problems) + f" ({report.completed} files completed and {report.failed} failed meanwhile; "
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
) -> tuple[list[str], str | None]:
    """Read every worker's messages until all have exited: the problems of those that did not finish, and
    the first database error among them. The first problem sets `stop` for the others."""
    problems: list[str] = []
    database_error: str | None = None
    finished: set[Connection] = set()
    open_readers = list(running)
    while open_readers:
        for reader in wait(open_readers):
            try:
                kind, payload = reader.recv()  # type: ignore[union-attr]
            except EOFError:
                open_readers.remove(reader)  # type: ignore[arg-type]
                if reader not in finished:
                    stop.set()  # it ended without saying it was done (killed): the others stop too
                continue
            if kind == "file":
                report.outcomes.append(payload)
                if on_file is not None:
                    on_file(payload)
            elif kind == "done":
                finished.add(reader)  # type: ignore[arg-type]
            else:
                stop.set()
                problems.append(f"{running[reader].name}: {payload}")  # type: ignore[index]
                if kind == "database_error" and database_error is None:
                    database_error = payload
    for reader, worker in running.items():
        worker.join()
        if reader not in finished and not any(problem.startswith(f"{worker.name}:") for problem in problems):
            problems.append(f"{worker.name} exited with status {worker.exitcode} before finishing")
    return problems, database_error


def _work(writer: Connection, stop: Any, engine: Engine, root: PayloadRoot, scope: _Scope) -> None:
    """A worker process: an ordinary processor over the same scope, its outcomes sent as they happen."""
    engine.dispose(close=False)  # the parent's connections are the parent's; this process opens its own
    processor = PayloadProcessor(
        engine, root, lease_seconds=scope.lease_seconds, max_payload_bytes=scope.max_payload_bytes
    )
    try:
        processor.run(
            month=scope.month,
            file_ids=scope.file_ids,
            on_file=lambda outcome: writer.send(("file", outcome)),
            should_stop=stop.is_set,
        )
    except OperationalError as error:  # the database went away or cancelled the statement: said as one line
        writer.send(("database_error", str(error.orig) if error.orig is not None else str(error)))
        raise SystemExit(1) from None  # the parent reports it; no traceback on the terminal
    except BaseException as error:  # a process boundary: every error goes to the parent
        if not isinstance(error, KeyboardInterrupt):
            log.exception("worker stopped by an unexpected error")  # a bug: keep its traceback
        writer.send(("error", f"{type(error).__name__}: {error}"))
        raise SystemExit(1) from None
    else:
        writer.send(("done", None))
    finally:
        engine.dispose()
        writer.close()
