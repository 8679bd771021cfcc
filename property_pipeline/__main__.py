"""`python -m property_pipeline` is the same as the `property-pipeline` command (whose entry point is `run`).

This module imports nothing before `run` starts but what the interpreter has already loaded (os, sys): a Ctrl-C
that lands while the command starts must find `run`'s handler in place, not an import of ours.
"""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

_INTERRUPTED_LINE = "interrupted (Ctrl-C): the command stopped"


def run() -> None:
    """Run the command as this process. A Ctrl-C is one line and exit status 130 wherever it lands: while the
    command's modules are still being imported (here) or once it runs (the command group says the line)."""
    try:
        from property_pipeline.cli import main
        from property_pipeline.cli.app import EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(_INTERRUPTED_LINE, file=sys.stderr)
        _end_process(130)  # EXIT_INTERRUPTED, whose module could not be imported
    try:
        main(prog_name="property-pipeline")
    except SystemExit as stopped:
        if stopped.code == EXIT_INTERRUPTED:
            _end_process(EXIT_INTERRUPTED)
        raise


def _end_process(status: int) -> "NoReturn":
    """End the process with `status` now, after flushing what it wrote.

    Not `sys.exit`: when a Ctrl-C lands in code that a module builds with `exec` (dataclasses, namedtuple and
    SQLAlchemy do while they are imported), CPython (3.11 here) records that KeyboardInterrupt as unhandled even
    though the command caught it, and under `python -m` ends the process by SIGINT after finalising, instead of
    with the status given to `sys.exit`. By now the interrupted work has unwound (transactions rolled back,
    files closed, worker processes joined): flushing the output and the log handlers is what is left to do.
    """
    logging = sys.modules.get("logging")  # not imported: no handler to flush
    if logging is not None:
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status)


if __name__ == "__main__":
    run()
