"""Target 6: two `property-pipeline process --workers 1` commands at once on PostgreSQL against one.

Goals: two processors are not slower than one (time until the backlog is done), and no file is
processed twice (every file claimed once, one COMPLETED transition each).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict

from sqlalchemy import text

from benchmarks.common import (
    REPO,
    TargetResult,
    checkpoint,
    cli_env,
    log,
    scratch_folder,
    sizes_for,
    throwaway_database,
)
from benchmarks.data import dataset
from benchmarks.pipeline import exactly_once_problems, registered_backlog
from property_pipeline.db.engine import create_db_engine


def _processors(db_url: str, logs: str, count: int) -> float:
    """Start `count` processors together; seconds until the last one exits."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **cli_env(db_url, logs)}  # type: ignore[arg-type]
    # One worker each: separate commands coordinating only through the database claims, as on two machines.
    command = [sys.executable, "-m", "property_pipeline", "process", "--json", "--workers", "1"]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(count)
    ]
    for process in processes:
        _out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"a processor exited {process.returncode}: {err.decode()[-2000:]}")
    return time.perf_counter() - started


def _workers_that_completed(db_url: str) -> int:
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(DISTINCT actor) FROM file_status_events WHERE to_status = 'COMPLETED'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def run(mode: str) -> TargetResult:
    sizes = sizes_for(mode)
    data = dataset(sizes.files)
    result = TargetResult(
        "parallel",
        f"6. One vs two processors on PostgreSQL, {data.records:,} records ({data.files} files)",
        mode,
        setup={"files": data.files, "records": data.records},
    )
    values: dict[int, list[float]] = defaultdict(list)
    for repeat in range(sizes.repeats):
        for count in (1, 2) if repeat % 2 == 0 else (2, 1):
            log(f"parallel: repeat {repeat + 1}/{sizes.repeats}: {count} processor(s)")
            with throwaway_database("parallel") as url, scratch_folder("parallel") as logs:
                registered_backlog(url, logs, data)
                checkpoint(url)
                seconds = _processors(url, str(logs), count)
                problems = exactly_once_problems(url, data.files, data.records)
                result.check(
                    f"{count} processor(s): every file processed once (repeat {repeat + 1})",
                    not problems,
                    "; ".join(problems),
                )
                if count == 2 and data.files >= 50:  # with a handful of files one processor may take them all
                    workers = _workers_that_completed(url)
                    result.check("both processors completed files", workers == 2, f"{workers} processors did")
                values[count].append(data.records / seconds)
    result.method("one", "1 processor (until the backlog is done, command start included)", "rows/s", values[1])
    result.method("two", "2 processors at once (until both exit)", "rows/s", values[2])
    result.ratio("2 processors / 1 (throughput)", [a / b for a, b in zip(values[2], values[1], strict=True)], 1.0)
    return result
