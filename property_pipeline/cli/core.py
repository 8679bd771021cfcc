"""Core commands: schema, registration, processing, status, verification, retry, markers."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from property_pipeline.cli.app import (
    EXIT_FAILED,
    EXIT_OK,
    PipelineUsageError,
    json_option,
    main,
    month_option,
    pipeline_command,
    print_json,
    table,
)
from property_pipeline.settings import Settings

if TYPE_CHECKING:
    from property_pipeline.processing.processor import FileOutcome, ProcessingReport
    from property_pipeline.runtime import Pipeline


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(settings: Settings) -> None:
    """Bring the database to the newest schema (Alembic migrations shipped in the package)."""
    from property_pipeline.db.engine import create_db_engine, upgrade

    engine = create_db_engine(settings.db_url)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"database already at the newest schema ({after})")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


@main.command()
@month_option
@json_option
@pipeline_command
def register(pipeline: Pipeline, month: str | None, as_json: bool) -> None:
    """Register payload files that are on disk but not yet in the database, as PENDING."""
    from property_pipeline.registration import DropInRules, register_unregistered

    report = register_unregistered(
        pipeline.engine, pipeline.store, "cli:register", month, rules=DropInRules.from_settings(pipeline.settings)
    )
    if as_json:
        print_json(
            {
                "registered": [r.file_path for r in report.registered],
                "duplicates": [{"file_path": r.file_path, "duplicate_of": r.duplicate_of} for r in report.duplicates],
                "already_registered": report.already_registered,
                "skipped": [{"path": p, "reason": why} for p, why in report.skipped],
                "held_back": [{"path": p, "reason": why} for p, why in report.held_back],
                "warnings": [{"path": p, "note": note} for p, note in report.warnings],
            }
        )
    else:
        for registration in report.registered:
            click.echo(f"registered  {registration.file_path} (file {registration.file_id}, PENDING)")
        for registration in report.duplicates:
            click.echo(
                f"duplicate   {registration.file_path}: same content as file {registration.duplicate_of}; "
                "recorded, not loaded again"
            )
        for path, note in report.warnings:
            click.echo(f"warning     {path}: {note}", err=True)
        for path, reason in report.held_back:
            click.echo(f"held back   {path}: {reason}", err=True)
        for path, reason in report.skipped:
            click.echo(f"skipped     {path}: {reason}", err=True)
        click.echo(
            f"{len(report.registered)} registered, {len(report.duplicates)} duplicates, "
            f"{len(report.skipped)} skipped, {len(report.held_back)} held back until complete, "
            f"{report.already_registered} already registered"
        )
    sys.exit(EXIT_FAILED if report.skipped else EXIT_OK)


class Progress:
    """A one-line progress display at a terminal, plain log lines otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = self.records = 0
        self.started = datetime.now()
        self.interactive = sys.stderr.isatty()

    def __call__(self, outcome: FileOutcome) -> None:
        self.done += 1
        self.records += outcome.success_count
        elapsed = max((datetime.now() - self.started).total_seconds(), 1e-6)
        rate = self.records / elapsed
        if self.interactive:
            width = 30
            filled = int(width * self.done / self.total) if self.total else width
            bar = "#" * filled + "." * (width - filled)
            click.echo(
                f"\r[{bar}] {self.done}/{self.total} files  {self.records} records  {rate:,.0f} rec/s",
                err=True,
                nl=False,
            )
        else:
            detail = f"{outcome.success_count} loaded, {outcome.error_count} quarantined"
            if outcome.error:
                detail = outcome.error
            click.echo(f"{outcome.status:<9} {outcome.file_path} ({detail})", err=True)

    def stop_requested(self, _signal_number: int) -> None:
        if self.interactive:
            click.echo("\nstopping after the files in hand (press Ctrl-C again to stop at once)", err=True)

    def finish(self) -> None:
        if self.interactive and self.done:
            click.echo("", err=True)
            self.done = 0


@main.command()
@month_option
@click.option("--include-failed", is_flag=True, help="Put FAILED files back to PENDING first, then process them too.")
@click.option("--limit", type=click.IntRange(min=1), help="Process at most N files (in one process).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes claiming files at once (default: PROPERTY_PIPELINE_PROCESS_WORKERS, else one per CPU "
    "up to 4 on PostgreSQL, 1 on SQLite).",
)
@json_option
@pipeline_command
def process(
    pipeline: Pipeline, month: str | None, include_failed: bool, limit: int | None, workers: int | None, as_json: bool
) -> None:
    """Load PENDING files into the database, each exactly once, each in one transaction."""
    from property_pipeline.db.queries import month_statuses
    from property_pipeline.processing.parallel import default_workers, process_backlog

    statuses = month_statuses(pipeline.engine, month)
    total = sum(s.pending + (s.failed if include_failed else 0) for s in statuses)
    progress = Progress(min(total, limit) if limit else total)
    workers = workers or pipeline.settings.process_workers or default_workers(pipeline.engine.dialect.name)
    try:
        report = process_backlog(
            pipeline.engine,
            pipeline.store,
            workers=workers,
            lease_seconds=pipeline.settings.lease_seconds,
            max_payload_bytes=pipeline.settings.max_payload_bytes,
            statement_timeout_seconds=pipeline.settings.statement_timeout_seconds,
            month=month,
            include_failed=include_failed,
            limit=limit,
            on_file=progress,
            on_stop_requested=progress.stop_requested,
        )
    finally:
        progress.finish()
    print_processing_report(report, as_json)
    sys.exit(EXIT_FAILED if report.failed or report.deferred else EXIT_OK)


def print_processing_report(report: ProcessingReport, as_json: bool, **extra: Any) -> None:
    """What a processing run did (process, reprocess, restore --reprocess): a summary line or JSON."""
    if as_json:
        print_json(
            {
                **extra,
                "worker": report.worker,
                "workers": report.workers,
                "files_completed": report.completed,
                "files_failed": report.failed,
                "files_deferred": len(report.deferred),
                "records_loaded": report.records_loaded,
                "records_quarantined": report.records_quarantined,
                "seconds": round(report.seconds, 3),
                "rows_per_second": round(report.rows_per_second, 1),
                "requeued_after_expired_lease": report.requeued,
                "retried": report.retried,
                "failures": [{"file_id": o.file_id, "file_path": o.file_path, "error": o.error} for o in report.errors],
                "deferred": [
                    {"file_id": o.file_id, "file_path": o.file_path, "reason": o.error} for o in report.deferred
                ],
            }
        )
    else:
        deferred = f", {len(report.deferred)} deferred" if report.deferred else ""
        click.echo(
            f"{report.completed} files completed, {report.failed} failed{deferred}; {report.records_loaded} records "
            f"loaded, {report.records_quarantined} quarantined in {report.seconds:.1f}s "
            f"({report.rows_per_second:,.0f} rows/s)"
        )
        for outcome in report.errors:
            click.echo(f"FAILED file {outcome.file_id} {outcome.file_path}: {outcome.error}", err=True)
        for outcome in report.deferred:
            click.echo(f"DEFERRED file {outcome.file_id} {outcome.file_path}: {outcome.error}", err=True)
        if report.errors:
            click.echo(
                "Fix the cause, then: property-pipeline retry --file-id N (or --all-failed); for a file that can "
                "never load: property-pipeline discard --file-id N --reason TEXT",
                err=True,
            )


@main.command()
@month_option
@json_option
@pipeline_command(read_only=True)
def status(pipeline: Pipeline, month: str | None, as_json: bool) -> None:
    """Files by status and month; stuck and failed files with their errors."""
    from property_pipeline.db.queries import month_statuses, problem_files
    from property_pipeline.monitoring.report import build_status_report

    if as_json:
        months = month_statuses(pipeline.engine, month)
        stuck, failed = problem_files(pipeline.engine, month)
        report = build_status_report(pipeline.engine, month=month)
        print_json(
            {
                "months": [{**vars(m), "total": m.total} for m in months],
                "campaigns": [vars(row) for row in report.rows],
                "backlog_files": report.backlog_files,
                "oldest_pending_age_seconds": round(report.oldest_pending_age_seconds, 1),
                "rows_per_second": report.rows_per_second,
                "slowest": [vars(line) for line in report.slowest],
                "stuck": [vars(f) for f in stuck],
                "failed": [vars(f) for f in failed],
            }
        )
        return
    print_status(pipeline, month)


def print_status(pipeline: Pipeline, month: str | None = None) -> None:
    """The status picture as readable tables (also shown at the end of the demo)."""
    from property_pipeline.db.queries import month_statuses, problem_files
    from property_pipeline.monitoring.report import build_status_report, format_age_since

    months = month_statuses(pipeline.engine, month)
    stuck, failed = problem_files(pipeline.engine, month)
    if not months:
        click.echo("no payload files registered yet (capture some, or run `property-pipeline register`)")
        return
    click.echo(
        table(
            [
                "month",
                "pending",
                "processing",
                "completed",
                "failed",
                "discarded",
                "duplicates",
                "loaded",
                "quarantined",
                "oldest pending",
                "archived",
                "deleted",
            ],
            [
                [
                    m.month,
                    m.pending,
                    m.processing,
                    m.completed,
                    m.failed,
                    m.discarded,
                    m.duplicates,
                    m.records_loaded,
                    m.records_quarantined,
                    format_age_since(m.oldest_pending_at),
                    m.archived,
                    m.deleted,
                ]
                for m in months
            ],
        )
    )
    report = build_status_report(pipeline.engine, month=month)
    if len({row.campaign_id for row in report.rows}) > 1 or len(report.rows) != len(months):
        click.echo("\nby campaign")
        click.echo(
            table(
                [
                    "month",
                    "campaign",
                    "pending",
                    "processing",
                    "completed",
                    "failed",
                    "discarded",
                    "loaded",
                    "quarantined",
                ],
                [
                    [
                        r.month,
                        r.campaign_id,
                        r.pending,
                        r.processing,
                        r.completed,
                        r.failed,
                        r.discarded,
                        r.records_loaded,
                        r.records_quarantined,
                    ]
                    for r in report.rows
                ],
            )
        )
    if report.slowest:
        click.echo(f"\nslowest files (overall {report.rows_per_second:,.0f} rows/s)")
        click.echo(
            table(
                ["file", "path", "ms", "records"],
                [[f.file_id, f.file_path, f.processing_time_ms, f.success_count] for f in report.slowest],
            )
        )
    if stuck:
        click.echo(f"\nstuck in PROCESSING past their lease ({len(stuck)}): the next `process` run requeues them")
        click.echo(
            table(
                ["file", "path", "worker", "lease ended"],
                [[f.file_id, f.file_path, f.locked_by, f.locked_until] for f in stuck],
            )
        )
    if failed:
        click.echo(f"\nFAILED ({len(failed)}): fix the cause, then `property-pipeline retry`")
        click.echo(
            table(
                ["file", "path", "attempts", "error"],
                [[f.file_id, f.file_path, f.attempts, (f.error_details or "")[:160]] for f in failed],
            )
        )


@main.command()
@month_option
@json_option
@pipeline_command(read_only=True)
def verify(pipeline: Pipeline, month: str | None, as_json: bool) -> None:
    """Check that every registered file still exists and matches its SHA-256."""
    from property_pipeline.integrity import verify_files

    report = verify_files(pipeline.engine, pipeline.store, month)
    root = pipeline.store.folder
    root_exists = root.payloads.is_dir() if root is not None else True
    if as_json:
        print_json(
            {
                "checked": report.checked,
                "ok": report.ok,
                "data_root_exists": root_exists,
                "problems": [vars(p) for p in report.problems],
            }
        )
    else:
        for problem in report.problems:
            click.echo(f"PROBLEM file {problem.file_id} {problem.file_path}: {problem.problem}", err=True)
        if report.problems and root is not None and not root_exists:
            click.echo(
                f"note: the payload folder {root.payloads} does not exist: check PROPERTY_PIPELINE_LOGS_DIR",
                err=True,
            )
        click.echo(f"{report.checked} files checked, {len(report.problems)} problems")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@main.command()
@click.option(
    "--file-id", "file_ids", type=int, multiple=True, help="A FAILED or DISCARDED file to retry (repeatable)."
)
@month_option
@click.option("--all-failed", is_flag=True, help="Every FAILED file.")
@pipeline_command
def retry(pipeline: Pipeline, file_ids: tuple[int, ...], month: str | None, all_failed: bool) -> None:
    """Put FAILED files back to PENDING (recorded in file_status_events); then run `process`.

    A DISCARDED file comes back only when named by --file-id (a month or --all-failed never undoes a discard).
    """
    from property_pipeline.db.queries import file_statuses
    from property_pipeline.processing.requeue import retry_failed_files

    if not (file_ids or month or all_failed):
        raise PipelineUsageError("say what to retry: --file-id N, --month YYYY-MM or --all-failed")
    before = file_statuses(pipeline.engine, list(file_ids)) if file_ids else {}
    retried = retry_failed_files(
        pipeline.engine,
        pipeline.store,
        "cli:retry",
        file_ids=list(file_ids) or None,
        month=month,
        all_failed=all_failed,
    )
    for file_id in retried:
        click.echo(f"file {file_id}: {before.get(file_id, 'FAILED')} -> PENDING")
    missing = sorted(set(file_ids) - set(retried))
    for file_id in missing:
        click.echo(
            f"file {file_id}: not FAILED or DISCARDED (unknown id, or in another state); left as it is", err=True
        )
    click.echo(f"{len(retried)} files back to PENDING; run `property-pipeline process` to load them")
    sys.exit(EXIT_FAILED if missing else EXIT_OK)


@main.command()
@pipeline_command
def reconcile(pipeline: Pipeline) -> None:
    """Rebuild the pending/ and processed/ marker folders from the database (after a crash)."""
    from property_pipeline.db.queries import file_states
    from property_pipeline.store import markers

    root = pipeline.store.folder
    if root is None:
        click.echo(f"no markers on object storage ({pipeline.store.describe()}): the database is the only record")
        return
    changed = markers.reconcile_markers(root, file_states(pipeline.engine))
    click.echo(f"{changed} markers fixed")
