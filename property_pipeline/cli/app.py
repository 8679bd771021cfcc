"""The `property-pipeline` command group and what its subcommands share.

Exit status: 0 when everything asked for succeeded, 1 when some file failed or did not
verify (or the database could not be used), 2 for usage and configuration errors, 128 + the
signal's number when SIGTERM or Ctrl-C stopped the command (130 for Ctrl-C). `PipelineGroup` is
the one place where errors become those messages and exit codes.

The command modules import at their top only click and the light modules (settings, errors, layout):
each command imports the core it needs when it runs, so `--help` and `status` start quickly (a test
checks that `--help` loads neither SQLAlchemy, Alembic, requests nor Dagster).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload
from urllib.parse import quote

import click

from property_pipeline.errors import PipelineError
from property_pipeline.settings import Settings
from property_pipeline.store.layout import PayloadPathError, validate_month

if TYPE_CHECKING:
    from sqlalchemy.exc import OperationalError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class PipelineUsageError(click.ClickException):
    exit_code = EXIT_USAGE


def month_option(function: F) -> F:
    return click.option("--month", help="Only this month (YYYY-MM).", callback=check_month)(function)


def check_month(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_month(value)
    except PayloadPathError as error:
        raise click.BadParameter(str(error)) from None


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(function)


@overload
def pipeline_command(function: F) -> F: ...


@overload
def pipeline_command(*, read_only: bool = False) -> Callable[[F], F]: ...


def pipeline_command(function: F | None = None, *, read_only: bool = False) -> F | Callable[[F], F]:
    """Give the command a Pipeline (closed afterwards). `read_only=True` for commands that only look: they create
    nothing, not even an empty database, and say so when nothing is there."""

    def decorate(command: F) -> F:
        @wraps(command)
        @click.pass_obj
        def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> Any:
            from property_pipeline.runtime import Pipeline

            pipeline = Pipeline(settings, read_only=read_only)
            try:
                return command(pipeline, *args, **kwargs)
            finally:
                pipeline.close()

        return cast(F, wrapper)

    return decorate if function is None else decorate(function)


def database_unusable(settings: Settings | None, cause: object, workers: str = "") -> click.ClickException:
    """The one line for a database that refused, dropped or cancelled us (the password never shown)."""
    from sqlalchemy import make_url

    where = "PROPERTY_PIPELINE_DB_URL"
    if settings is not None:
        where = make_url(settings.db_url).render_as_string(hide_password=True)
    cause_text = " ".join(str(cause).split()).rstrip(".")
    return click.ClickException(
        f"cannot use the database at {where}: {cause_text}. Check PROPERTY_PIPELINE_DB_URL and that the server is "
        "running." + (f" Workers: {workers}" if workers else "")
    )


class _OneLine(Exception):
    """A PipelineError on its way to the terminal: its message and the exit status its kind says."""

    def __init__(self, error: PipelineError) -> None:
        super().__init__(str(error).rstrip("."))
        self.exit_code = error.exit_code


def _cause(error: OperationalError) -> object:
    return error.orig if error.orig is not None else error


def _loaded_class(module: str, name: str) -> type[BaseException] | None:
    """An exception class of a module the command has imported, else None: an error of a module nobody
    imported cannot have been raised, so the CLI need not import SQLAlchemy (or the workers) to recognise it."""
    loaded = sys.modules.get(module)
    return cast(type[BaseException] | None, getattr(loaded, name, None))


class PipelineGroup(click.Group):
    """The command group; the one place where errors become one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        settings = ctx.obj if isinstance(ctx.obj, Settings) else None
        try:
            return super().invoke(ctx)
        except PipelineError as error:
            worker_failed = _loaded_class("property_pipeline.processing.parallel", "WorkerFailed")
            database_error = getattr(error, "database_error", None)
            if worker_failed is not None and isinstance(error, worker_failed) and database_error is not None:
                raise database_unusable(settings, database_error, workers=str(error)) from None
            raise _OneLine(error) from None
        except Exception as error:
            operational = _loaded_class("sqlalchemy.exc", "OperationalError")
            if operational is not None and isinstance(error, operational):
                raise database_unusable(settings, _cause(cast("OperationalError", error))) from None
            raise

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _OneLine as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(error.exit_code)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.UsageError as error:
            hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
            click.echo(f"Error: {error.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("interrupted (Ctrl-C): the command stopped", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(EXIT_OK)


def print_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


@click.group(cls=PipelineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail to stderr.")
@click.version_option(package_name="property_pipeline")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Capture property-search API pages as immutable files, then load them into the database exactly once."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)
    ctx.obj = Settings.from_env()
    if ctx.obj.api_key:
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, RedactSecret) for f in handler.filters):
                handler.addFilter(RedactSecret(ctx.obj.api_key))


class RedactSecret(logging.Filter):
    """Replace the API key in every log line, whoever logs it (with -v, urllib3 logs each request's URL)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._forms = {secret, quote(secret, safe="")}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(form in message for form in self._forms):
            for form in self._forms:
                message = message.replace(form, "***")
            record.msg, record.args = message, None
        return True
