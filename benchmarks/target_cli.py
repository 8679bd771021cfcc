"""CLI start-up: `property-pipeline --help` and `property-pipeline status` on an empty SQLite database.

Each is the whole process as a user starts it (the installed `property-pipeline` script), run 5 times
(medians), alternating with `python -c pass` in the same run: the interpreter's own start, the
floor no command can go below, and `python -c "import sqlalchemy"`: the floor of any command that
reads the database. Goal (the issue's, absolute): each command in at most 0.5 s. The database is
migrated before (not timed); `status` still opens it and checks its schema revision.

The children run with Python's bytecode cache, as an installed package starts: without it (this
machine's sessions set PYTHONDONTWRITEBYTECODE=1) every start compiles the package's own modules
again, which no installed copy does.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.common import TargetResult, cli_env, log, run_child, scratch_folder
from property_pipeline.db.engine import create_db_engine, upgrade

RUNS = {"full": 5, "quick": 1}
EMPTY_STATUS = "no payload files registered yet"


def _command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m property_pipeline`."""
    script = Path(sys.executable).parent / "property-pipeline"
    return [str(script)] if script.exists() else [sys.executable, "-m", "property_pipeline"]


def run(mode: str) -> TargetResult:
    runs = RUNS[mode]
    result = TargetResult(
        "cli", "CLI start-up: --help and status on an empty SQLite database", mode, setup={"runs": runs}
    )
    values: dict[str, list[float]] = defaultdict(list)
    with scratch_folder("cli") as folder:
        url = f"sqlite:///{folder / 'pipeline.db'}"
        engine = create_db_engine(url)
        upgrade(engine)
        engine.dispose()
        env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
        env.update(cli_env(url, folder / "logs"))
        commands = {
            "python": [sys.executable, "-c", "pass"],
            "sqlalchemy": [sys.executable, "-c", "import sqlalchemy"],
            "help": [*_command(), "--help"],
            "status": [*_command(), "status"],
        }
        for arguments in commands.values():  # once, not timed: the bytecode cache is written
            run_child(arguments, env=env, cwd=folder)
        for repeat in range(runs):
            log(f"cli: run {repeat + 1}/{runs}")
            for name, arguments in commands.items():
                child = run_child(arguments, env=env, cwd=folder)
                result.check(
                    f"{' '.join(arguments[-2:])} exited 0 (run {repeat + 1})",
                    child.returncode == 0,
                    child.stderr[-500:],
                )
                if name == "status":
                    result.check(f"status of the empty database (run {repeat + 1})", EMPTY_STATUS in child.stdout)
                values[name].append(child.wall_seconds)
    result.method("python", "python -c pass (the interpreter's start)", "s", values["python"])
    result.method(
        "sqlalchemy",
        'python -c "import sqlalchemy" (the floor of a command that reads the database)',
        "s",
        values["sqlalchemy"],
    )
    result.method("help", "property-pipeline --help", "s", values["help"])
    result.method("status", "property-pipeline status, empty SQLite database", "s", values["status"])
    result.ratio("property-pipeline --help (whole process)", values["help"], 0.5, at_most=True, unit="s")
    result.ratio("property-pipeline status (whole process)", values["status"], 0.5, at_most=True, unit="s")
    for name in ("help", "status"):
        over = statistics.median(values[name]) - statistics.median(values["python"])
        result.notes.append(f"{name}: {over:.2f} s above the interpreter's own start (medians)")
    return result
