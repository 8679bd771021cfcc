"""Replay commands: reprocess completed files, discard hopeless ones, rebuild a database, digest its content."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from property_pipeline.cli.app import (
    EXIT_FAILED,
    EXIT_OK,
    PipelineUsageError,
    check_month,
    json_option,
    main,
    month_option,
    pipeline_command,
    print_json,
    table,
)
from property_pipeline.cli.core import Progress, print_processing_report
from property_pipeline.settings import Settings

if TYPE_CHECKING:
    from property_pipeline.digest import Digest
    from property_pipeline.processing import replay
    from property_pipeline.processing.processor import ProcessingReport
    from property_pipeline.runtime import Pipeline

workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes loading files at once (default as for `process`).",
)


def _say_waiting(month: str) -> None:
    click.echo(f"{month}: another command (cleanup or restore) holds this month; waiting for it", err=True)


def _reason(reason: str) -> str:
    if not reason.strip():
        raise PipelineUsageError("--reason must say why: it is recorded with every file")
    return reason.strip()


def reprocess_files(
    pipeline: Pipeline,
    plan: replay.ReprocessPlan,
    reason: str,
    *,
    actor: str,
    month: str | None,
    workers: int | None,
) -> tuple[list[int], ProcessingReport]:
    """COMPLETED → PENDING for the plan's files, then load them again (the ordinary processing path)."""
    from property_pipeline.processing import replay
    from property_pipeline.processing.parallel import default_workers, process_backlog

    marked = replay.mark_for_reprocessing(pipeline.engine, pipeline.store, actor, plan, reason, on_wait=_say_waiting)
    # A month's files are processed by month (files already PENDING there load too); files named by id, by id.
    in_scope = [file_id for file_id, _ in plan.to_reprocess] + [
        file_id for file_id, _, state in plan.not_completed if state == "PENDING"
    ]
    progress = Progress(len(in_scope))
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
            file_ids=None if month is not None else sorted(in_scope),
            on_file=progress,
            on_stop_requested=progress.stop_requested,
        )
    finally:
        progress.finish()
    return marked, report


def print_plan(plan: replay.ReprocessPlan) -> None:
    for file_id, path in plan.needs_restore:
        click.echo(
            f"file {file_id} {path}: deleted by retention; restore its month first "
            "(property-pipeline restore --month M --reprocess)",
            err=True,
        )
    for file_id, path, state in plan.not_completed:
        click.echo(f"file {file_id} {path}: {state}, not COMPLETED: nothing to reprocess", err=True)
    if plan.duplicates:
        click.echo(f"{plan.duplicates} duplicates (same bytes as another file): nothing of their own to load")


@main.command()
@month_option
@click.option("--campaign", help="Only this campaign's files of --month.")
@click.option("--file-id", "file_ids", type=int, multiple=True, help="A COMPLETED file to reprocess (repeatable).")
@click.option("--reason", required=True, help="Why (recorded with every file, in file_status_events).")
@click.option("--dry-run", is_flag=True, help="Say which files would be reprocessed; change nothing.")
@workers_option
@json_option
@pipeline_command
def reprocess(
    pipeline: Pipeline,
    month: str | None,
    campaign: str | None,
    file_ids: tuple[int, ...],
    reason: str,
    dry_run: bool,
    workers: int | None,
    as_json: bool,
) -> None:
    """Load COMPLETED files again from the raw payload files (after a rule, mapping or bug was fixed).

    Each file goes COMPLETED -> PENDING (recorded, with the reason), then loads as on a first load: its
    links and quarantine are replaced in the same transaction, and newest wins (an older file never
    overwrites what a later capture delivered).
    """
    from property_pipeline.processing import replay

    if campaign is not None and month is None:
        raise PipelineUsageError("--campaign needs --month: say which month of the campaign to reprocess")
    if bool(month) == bool(file_ids):
        raise PipelineUsageError("say what to reprocess: --month YYYY-MM (optionally --campaign ID) or --file-id N")
    reason = _reason(reason)
    plan = replay.plan_reprocess(pipeline.engine, month=month, campaign=campaign, file_ids=list(file_ids) or None)
    unknown = (
        sorted(
            set(file_ids)
            - {i for i, _ in plan.to_reprocess}
            - {i for i, _ in plan.needs_restore}
            - {i for i, _, _ in plan.not_completed}
        )
        if file_ids
        else []
    )
    for file_id in unknown:
        click.echo(f"file {file_id}: not registered, or a duplicate: nothing to reprocess", err=True)
    if dry_run:
        if as_json:
            print_json({**asdict(plan), "unknown": unknown})
        else:
            print_plan(plan)
            for file_id, path in plan.to_reprocess:
                click.echo(f"would reprocess file {file_id} {path}")
            click.echo(f"{len(plan.to_reprocess)} files would be reprocessed; {len(plan.needs_restore)} need restore")
        sys.exit(EXIT_OK)
    if not as_json:
        print_plan(plan)
    scope_month = month if campaign is None else None
    marked, report = reprocess_files(pipeline, plan, reason, actor="cli:reprocess", month=scope_month, workers=workers)
    if not as_json:
        click.echo(f"{len(marked)} files COMPLETED -> PENDING ({reason}), then loaded again:")
    print_processing_report(
        report, as_json, reprocessed=marked, needs_restore=[i for i, _ in plan.needs_restore], unknown=unknown
    )
    trouble = report.failed or report.deferred or plan.needs_restore or unknown
    sys.exit(EXIT_FAILED if trouble else EXIT_OK)


@main.command()
@click.option("--file-id", "file_ids", type=int, multiple=True, required=True, help="A FAILED file (repeatable).")
@click.option("--reason", required=True, help="Why it will never load (recorded with the file).")
@pipeline_command
def discard(pipeline: Pipeline, file_ids: tuple[int, ...], reason: str) -> None:
    """Give up on FAILED files that can never load (FAILED -> DISCARDED, with the reason).

    A discarded file is never loaded, stays on disk until retention archives it like any other, and
    counts as settled: its month passes its checks and stops alerting. `retry --file-id N` takes it back.
    """
    from property_pipeline.processing import replay

    reason = _reason(reason)
    discarded = replay.discard(pipeline.engine, pipeline.store, "cli:discard", list(file_ids), reason)
    for file_id in discarded:
        click.echo(f"file {file_id}: FAILED -> DISCARDED ({reason})")
    missing = sorted(set(file_ids) - set(discarded))
    for file_id in missing:
        click.echo(f"file {file_id}: not FAILED (unknown id, or in another state); left as it is", err=True)
    click.echo(f"{len(discarded)} files discarded; `property-pipeline retry --file-id N` takes one back")
    sys.exit(EXIT_FAILED if missing else EXIT_OK)


@main.command()
@click.option("--into", "into_url", required=True, help="The database to build (an SQLAlchemy URL); new or empty.")
@click.option("--from-month", callback=check_month, help="First month to rebuild (YYYY-MM); default: the first.")
@click.option("--to-month", callback=check_month, help="Last month to rebuild (YYYY-MM); default: the last.")
@workers_option
@json_option
@click.pass_obj
def rebuild(
    settings: Settings,
    into_url: str,
    from_month: str | None,
    to_month: str | None,
    workers: int | None,
    as_json: bool,
) -> None:
    """Load every registered file into a new database, from the payload folder and, for months retention
    deleted, straight from their verified archives. The configured database is only read.

    Stopped part way (Ctrl-C, a crash): run the same command again; it carries on.
    """
    from property_pipeline.db.engine import create_db_engine, ensure_schema, open_existing_database
    from property_pipeline.processing.parallel import default_workers
    from property_pipeline.processing.rebuild import rebuild as rebuild_into
    from property_pipeline.store.choose import open_payload_store

    source = open_existing_database(settings.db_url)
    target = create_db_engine(into_url)
    try:
        ensure_schema(target)
        progress = Progress(0)

        def registered(pending: int) -> None:
            progress.total = pending
            if not as_json:
                click.echo(f"{pending} files to load into {target.url.render_as_string(hide_password=True)}", err=True)

        workers = workers or settings.process_workers or default_workers(target.dialect.name)
        try:
            report = rebuild_into(
                source,
                target,
                open_payload_store(settings.payloads_url, settings.logs_dir),
                from_month=from_month,
                to_month=to_month,
                workers=workers,
                lease_seconds=settings.lease_seconds,
                max_payload_bytes=settings.max_payload_bytes,
                statement_timeout_seconds=settings.statement_timeout_seconds,
                on_registered=registered,
                on_file=progress,
                on_stop_requested=progress.stop_requested,
            )
        finally:
            progress.finish()
    finally:
        source.dispose()
        target.dispose()
    if as_json:
        print_json(
            {
                "registered": report.registered,
                "duplicates": report.duplicates,
                "discarded_carried_over": report.carried_discarded,
                "files_completed": report.completed,
                "files_failed": len(report.failed),
                "files_from_archives": report.from_archives,
                "records_loaded": report.records_loaded,
                "seconds": round(report.seconds, 3),
                "rows_per_second": round(report.rows_per_second, 1),
                "failures": [{"file_id": o.file_id, "file_path": o.file_path, "error": o.error} for o in report.failed],
            }
        )
    else:
        click.echo(
            f"{report.registered} files registered ({report.duplicates} duplicates, {report.carried_discarded} "
            f"discarded as in the source); {report.completed} loaded ({report.from_archives} from archives), "
            f"{len(report.failed)} failed; {report.records_loaded} records in {report.seconds:.1f}s "
            f"({report.rows_per_second:,.0f} rows/s)"
        )
        for outcome in report.failed:
            click.echo(f"FAILED file {outcome.file_id} {outcome.file_path}: {outcome.error}", err=True)
        click.echo("Compare: property-pipeline digest (here and with PROPERTY_PIPELINE_DB_URL set to the new one)")
    sys.exit(EXIT_FAILED if report.failed else EXIT_OK)


@main.command()
@month_option
@json_option
@pipeline_command(read_only=True)
def digest(pipeline: Pipeline, month: str | None, as_json: bool) -> None:
    """A canonical SHA-256 of the loaded data (every typed column and `raw`, by property id) and of each month.

    Two databases loaded from the same files agree, whatever the order of processing or reprocessing.
    Covered: every `properties` column except load times, with the source file's path instead of its id;
    every quarantined record. See docs/replay.md.
    """
    from property_pipeline.digest import compute_digest

    result = compute_digest(pipeline.engine, month)
    if as_json:
        print_json({**asdict(result), "sha256": result.sha256})
        return
    _print_digest(result, month)


def _print_digest(result: Digest, month: str | None) -> None:
    scope = f" of {month}" if month else ""
    click.echo(f"database{scope}  {result.sha256}")
    click.echo(f"properties{scope}  {result.rows} rows  {result.rows_sha256}")
    click.echo(f"quarantine{scope}  {result.quarantined} records  {result.quarantine_sha256}")
    if result.months:
        click.echo("")
        click.echo(
            table(
                ["month", "rows", "rows sha256", "quarantined", "quarantine sha256"],
                [[m.month, m.rows, m.rows_sha256, m.quarantined, m.quarantine_sha256] for m in result.months],
            )
        )
