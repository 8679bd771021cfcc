"""`property-pipeline export`: a month's properties (or its quarantined records) to CSV, JSON lines or Parquet.

pandas is imported when the command runs, not when the CLI loads: the other commands (`process`,
`register`, ...) stay as small and quick to start as they were.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from property_pipeline.cli.app import PipelineUsageError, main, pipeline_command
from property_pipeline.store.layout import PayloadPathError, validate_month

if TYPE_CHECKING:
    from property_pipeline.exports import ExportReport
    from property_pipeline.frames import FrameStream
    from property_pipeline.runtime import Pipeline

FORMATS = ("csv", "jsonl", "parquet")  # as property_pipeline.exports.FORMATS (a test keeps them equal)
Format = Literal["csv", "jsonl", "parquet"]


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class _RowProgress:
    """A one-line progress bar on stderr at a terminal; nothing otherwise (the summary line says it all)."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what = total, what
        self.interactive = stderr_is_terminal()
        self.shown = False

    def __call__(self, rows: int) -> None:
        if not self.interactive:
            return
        width = 30
        filled = int(width * rows / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        click.echo(f"\r[{bar}] {rows:,}/{self.total:,} {self.what}", err=True, nl=False)
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            click.echo("", err=True)


def _month(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return validate_month(value)
    except PayloadPathError as error:
        raise click.BadParameter(str(error)) from None


@main.command()
@click.option("--month", required=True, callback=_month, help="The month to export (YYYY-MM).")
@click.option("--campaign", help="Only what this campaign's files delivered.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="File format.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    required=True,
    help="File to write (replaced atomically if it exists; its folder must exist).",
)
@click.option("--quarantine", is_flag=True, help="Export the month's quarantined records instead.")
@click.option("--raw", "include_raw", is_flag=True, help="Add the raw record (JSON text) of each property.")
@pipeline_command(read_only=True)
def export(
    pipeline: Pipeline,
    month: str,
    campaign: str | None,
    fmt: Format,
    output: Path,
    quarantine: bool,
    include_raw: bool,
) -> None:
    """Write a month's properties (the columns of the DataFrame) or quarantined records to a file."""
    from property_pipeline.exports import require_pyarrow
    from property_pipeline.frames import stream_properties, stream_quarantine

    if fmt == "parquet":
        require_pyarrow()  # ParquetUnavailable, a configuration error: exit 2 with the install command
    if not output.parent.is_dir():
        raise PipelineUsageError(f"the folder of {output} does not exist; create it first")
    what = "quarantined records" if quarantine else "properties"
    if quarantine:
        opened = stream_quarantine(pipeline.engine, month, campaign=campaign)
    else:
        opened = stream_properties(pipeline.engine, month, campaign=campaign, include_raw=include_raw)
    with opened as stream:
        report = _write(stream, fmt, output, what)
    scope = f"{month}" + (f", campaign {campaign}" if campaign else "")
    click.echo(
        f"exported {report.rows:,} {what} of {scope} to {report.path} "
        f"({fmt}, {report.bytes:,} bytes) in {report.seconds:.1f}s"
    )


def _write(stream: FrameStream, fmt: Format, output: Path, what: str) -> ExportReport:
    from property_pipeline.exports import export_frames

    progress = _RowProgress(stream.total, what)
    try:
        return export_frames(stream, stream.dtypes, fmt, output, on_rows=progress)
    except OSError as error:
        reason = error.strerror or error
        raise click.ClickException(f"could not write {output}: {reason}; nothing was written there") from None
    finally:
        progress.finish()
