"""Replay throughput on PostgreSQL: a first load, a reprocess of the same month, a rebuild into a new database.

Goal: reprocess and rebuild at the speed of a first load (ratio 1.0). All three are the real command
in a child process, timed as each reports it (from its first claim to its last outcome), over the same
files in the same repeat; the digest of the rebuilt database must equal the source's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from benchmarks.common import (
    TargetResult,
    checkpoint,
    cli_env,
    log,
    per_repeat,
    python_child,
    require_ok,
    scratch_folder,
    sizes_for,
    throwaway_database,
)
from benchmarks.data import dataset
from benchmarks.pipeline import exactly_once_problems, process_command, registered_backlog
from property_pipeline.db.engine import create_db_engine
from property_pipeline.digest import compute_digest

FIRST_LOAD = "first_load"
REPROCESS = "reprocess"
REBUILD = "rebuild"


def _digest(url: str) -> str:
    engine = create_db_engine(url)
    try:
        return compute_digest(engine).sha256
    finally:
        engine.dispose()


def run(mode: str) -> TargetResult:
    sizes = sizes_for(mode)
    data = dataset(sizes.files)
    result = TargetResult(
        "replay",
        f"7. Replay on PostgreSQL, {data.records:,} records ({data.files} files): reprocess and rebuild",
        mode,
        setup={"files": data.files, "records": data.records, "megabytes": round(data.size_bytes / 1e6, 1)},
    )
    values: dict[str, list[float]] = defaultdict(list)
    extras: dict[str, list[Any]] = defaultdict(list)
    for repeat in range(sizes.repeats):
        log(f"replay: repeat {repeat + 1}/{sizes.repeats}")
        with (
            throwaway_database("replay") as url,
            throwaway_database("rebuilt") as rebuilt,
            scratch_folder("replay") as logs,
        ):
            registered_backlog(url, logs, data)
            checkpoint(url)
            _child, first = process_command(url, logs)
            values[FIRST_LOAD].append(data.records / first.seconds)
            loaded = _digest(url)

            checkpoint(url)
            again = python_child(
                "property_pipeline",
                "reprocess",
                "--month",
                data.month,
                "--reason",
                "benchmark",
                "--json",
                env=cli_env(url, logs),
            )
            require_ok(again, "property-pipeline reprocess")
            reprocessed = again.json()
            result.check(
                f"reprocess reloaded every file (repeat {repeat + 1})",
                len(reprocessed["reprocessed"]) == data.files and reprocessed["records_loaded"] == data.records,
                f"{len(reprocessed['reprocessed'])} files, {reprocessed['records_loaded']} records",
            )
            result.check(f"reprocess left the digest as it was (repeat {repeat + 1})", _digest(url) == loaded)
            values[REPROCESS].append(data.records / reprocessed["seconds"])
            extras["reprocess_wall_seconds"].append(round(again.wall_seconds, 2))

            checkpoint(url)
            copy = python_child("property_pipeline", "rebuild", "--into", rebuilt, "--json", env=cli_env(url, logs))
            require_ok(copy, "property-pipeline rebuild")
            report = copy.json()
            problems = exactly_once_problems(rebuilt, data.files, data.records)
            result.check(
                f"exactly once in the rebuilt database (repeat {repeat + 1})", not problems, "; ".join(problems)
            )
            result.check(f"rebuilt digest equals the source's (repeat {repeat + 1})", _digest(rebuilt) == loaded)
            values[REBUILD].append(data.records / report["seconds"])
            extras["rebuild_wall_seconds"].append(round(copy.wall_seconds, 2))
    result.method(FIRST_LOAD, "property-pipeline process of the registered backlog", "rows/s", values[FIRST_LOAD])
    result.method(
        REPROCESS,
        "property-pipeline reprocess --month of the same files (mark, then reload: links and quarantine replaced, "
        "every row rewritten)",
        "rows/s",
        values[REPROCESS],
        wall_seconds=extras["reprocess_wall_seconds"],
    )
    result.method(
        REBUILD,
        "property-pipeline rebuild --into a new database (register copies, then load)",
        "rows/s",
        values[REBUILD],
        wall_seconds=extras["rebuild_wall_seconds"],
    )
    result.ratio("reprocess / first load", per_repeat(values[REPROCESS], values[FIRST_LOAD]), 1.0)
    result.ratio("rebuild / first load", per_repeat(values[REBUILD], values[FIRST_LOAD]), 1.0)
    return result
