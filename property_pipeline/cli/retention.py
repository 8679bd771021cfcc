"""Retention commands: `cleanup` (archive, verify, then delete old months) and `restore` (put a month back)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

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
from property_pipeline.cli.core import print_processing_report
from property_pipeline.cli.replay import print_plan, reprocess_files

if TYPE_CHECKING:
    from property_pipeline.retention import RestoreReport, RetentionPlan, RetentionReport
    from property_pipeline.runtime import Pipeline


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@main.command()
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option(
    "--archive/--no-archive",
    default=None,
    help="Archive before deleting (default: PROPERTY_PIPELINE_ARCHIVE, on). --no-archive deletes for good.",
)
@click.option(
    "--keep-months",
    type=click.IntRange(min=1),
    help="Months kept on disk, the current one included (default: PROPERTY_PIPELINE_RETENTION_MONTHS, 2).",
)
@json_option
@pipeline_command
def cleanup(pipeline: Pipeline, dry_run: bool, archive: bool | None, keep_months: int | None, as_json: bool) -> None:
    """Archive, verify, then delete the settled (COMPLETED or DISCARDED) payload files of months older than the
    kept window."""
    from property_pipeline.retention import apply_retention, plan_retention

    pipeline.read_only = dry_run  # a dry run only looks: it creates nothing (set before the database is opened)
    settings = pipeline.settings
    archive = settings.archive_enabled if archive is None else archive
    plan = plan_retention(pipeline.engine, pipeline.store, keep_months=keep_months or settings.retention_months)
    report = (
        None
        if dry_run
        else apply_retention(pipeline.engine, pipeline.store, plan, archive=archive, on_wait=_say_waiting)
    )
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "archive": archive,
                "plan": plan.to_dict(),
                "result": report.to_dict() if report else None,
            }
        )
    else:
        _print_plan(plan, archive, pipeline.store.archive_location(""))
        if report is None:
            click.echo("dry run: nothing was changed. Run without --dry-run to carry out this plan.")
        else:
            _print_report(report)
    sys.exit(EXIT_FAILED if report is not None and not report.ok else EXIT_OK)


def _say_waiting(month: str) -> None:
    click.echo(f"{month}: waiting for another cleanup or restore of this month to finish", err=True)


def _print_plan(plan: RetentionPlan, archive: bool, archive_dir: str) -> None:
    then = f"archived to {archive_dir}, verified, then deleted" if archive else "deleted WITHOUT an archive"
    click.echo(
        f"keeping {plan.oldest_kept_month} and later ({plan.keep_months} months); "
        f"COMPLETED files of older months are {then}"
    )
    if not plan.months:
        click.echo("no month is older than the kept window: nothing to do")
        return
    click.echo(
        table(
            ["month", "files", "bytes", "skipped"],
            [[m.month, len(m.files), human_bytes(m.bytes), len(m.skipped)] for m in plan.months],
        )
    )
    click.echo(f"total: {plan.files} files, {human_bytes(plan.bytes)}; {plan.skipped} skipped")
    for month in plan.months:
        for skipped in month.skipped:
            which = f" (file {skipped.file_id})" if skipped.file_id is not None else ""
            click.echo(f"skipped {skipped.file_path}{which}: {skipped.reason}")


def _print_report(report: RetentionReport) -> None:
    for month in report.months:
        archived = f"{month.archived} archived into {month.archive_name}; " if month.archive_name else ""
        healed = f", {len(month.healed)} already gone (deletion recorded)" if month.healed else ""
        click.echo(
            f"{month.month}: {archived}{len(month.deleted)} deleted ({human_bytes(month.bytes_deleted)} freed){healed}"
        )
        for failure in month.failures:
            click.echo(f"FAILED {failure.file_path or month.month}: {failure.reason}", err=True)
    click.echo(f"{report.deleted} files deleted, {human_bytes(report.bytes_deleted)} freed")
    if not report.ok:
        click.echo("Some files were kept because of the errors above; fix them and rerun cleanup.", err=True)


@main.command()
@month_option
@click.option("--reprocess", is_flag=True, help="Then load the restored month again (as `reprocess --month`).")
@click.option(
    "--reason",
    default="restored from its archive to be reprocessed",
    show_default=True,
    help="With --reprocess: why (recorded with every file).",
)
@json_option
@pipeline_command
def restore(pipeline: Pipeline, month: str | None, reprocess: bool, reason: str, as_json: bool) -> None:
    """Put a month's archived payload files back on disk, verified byte for byte, so they can be reprocessed."""
    from property_pipeline.processing import replay
    from property_pipeline.retention import restore_month

    if month is None:
        raise PipelineUsageError("say which month to restore: --month YYYY-MM")
    report = restore_month(pipeline.engine, pipeline.store, month, on_wait=_say_waiting)
    if not reprocess or not report.ok:
        if as_json:
            print_json(report.to_dict())
        else:
            _print_restore(report)
            if reprocess:
                click.echo("not reprocessed: the restore did not finish; fix the errors above and run it again")
        sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
    if not as_json:
        _print_restore(report)
    plan = replay.plan_reprocess(pipeline.engine, month=month)
    marked, processing = reprocess_files(pipeline, plan, reason, actor="cli:restore", month=month, workers=None)
    if not as_json:
        print_plan(plan)
        click.echo(f"{len(marked)} files COMPLETED -> PENDING ({reason}), then loaded again:")
    print_processing_report(processing, as_json, restore=report.to_dict(), reprocessed=marked)
    sys.exit(EXIT_FAILED if processing.failed or processing.deferred or plan.needs_restore else EXIT_OK)


def _print_restore(report: RestoreReport) -> None:
    for path in report.restored:
        click.echo(f"restored {path}")
    for failure in report.failures:
        click.echo(f"FAILED {failure.file_path or report.month}: {failure.reason}", err=True)
    click.echo(
        f"{report.month}: {len(report.restored)} restored, {len(report.already_present)} already on disk, "
        f"{len(report.failures)} failed (from {', '.join(report.archives) or 'no archive'})"
    )
