"""Running the real pipeline for a benchmark: a registered backlog, `property-pipeline process`, and the checks.

`process` always runs as the real command in a child process (`python -m property_pipeline process
--json`), so its peak RSS is its own and its timing is the one the command reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from benchmarks.common import ChildRun, cli_env, python_child, require_ok
from benchmarks.data import Dataset
from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.queries import row_count_mismatches
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot


def registered_backlog(db_url: str, logs_dir: Path, data: Dataset) -> None:
    """Put the dataset's files in the data root and register them as PENDING (not timed)."""
    data.install(logs_dir)
    engine = create_db_engine(db_url)
    try:
        report = register_unregistered(engine, PayloadRoot(logs_dir), "bench-setup")
    finally:
        engine.dispose()
    if len(report.registered) != data.files:
        raise RuntimeError(f"registered {len(report.registered)} of {data.files} files: {report.skipped[:3]}")


@dataclass(frozen=True)
class ProcessRun:
    seconds: float  # as `process --json` reports it: from its first claim to its last outcome
    wall_seconds: float  # the whole command, interpreter start included
    peak_rss_mb: float
    report: dict[str, Any]


def process_command(
    db_url: str, logs_dir: Path, *, workers: int | None = None, sample_memory: bool = False
) -> tuple[ChildRun, ProcessRun]:
    """`property-pipeline process --json` as a user runs it (its default workers unless `workers` is given)."""
    arguments = ["process", "--json", *(["--workers", str(workers)] if workers else [])]
    run = python_child("property_pipeline", *arguments, env=cli_env(db_url, logs_dir), sample_memory=sample_memory)
    require_ok(run, "property-pipeline process")
    report = run.json()
    return run, ProcessRun(report["seconds"], run.wall_seconds, run.peak_rss_mb, report)


def exactly_once_problems(db_url: str, files: int, records: int, *, link_rows: bool = True) -> list[str]:
    """What is wrong with the database after processing `files` files of `records` distinct valid records.

    `link_rows=False`: for a reference load that writes none on purpose, whose link rows are not checked."""
    problems: list[str] = []
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:

            def scalar(sql: str) -> int:
                return int(conn.execute(text(sql)).scalar_one() or 0)

            statuses = dict(conn.execute(text("SELECT status, count(*) FROM batch_file_status GROUP BY status")).all())
            if statuses != {"COMPLETED": files}:
                problems.append(f"file statuses {statuses}, expected {files} COMPLETED")
            if (claimed_twice := scalar("SELECT count(*) FROM batch_file_status WHERE attempts <> 1")) != 0:
                problems.append(f"{claimed_twice} files were claimed more than once")
            for table in ("properties", "file_properties") if link_rows else ("properties",):
                if (rows := scalar(f"SELECT count(*) FROM {table}")) != records:
                    problems.append(f"{table} holds {rows} rows, expected {records}")
            if (loaded := scalar("SELECT sum(success_count) FROM batch_file_status")) != records:
                problems.append(f"sum of success_count is {loaded}, expected {records}")
            completions = scalar("SELECT count(*) FROM file_status_events WHERE to_status = 'COMPLETED'")
            if completions != files:
                problems.append(f"{completions} COMPLETED transitions recorded for {files} files")
            unlinked = scalar(
                "SELECT count(*) FROM properties p LEFT JOIN file_properties l "
                "ON l.file_id = p.source_file_id AND l.property_id = p.property_id WHERE l.file_id IS NULL"
            )
            if unlinked and link_rows:
                problems.append(f"{unlinked} properties have no link row to the file they came from")
            if engine.dialect.name == "postgresql":
                mismatched = scalar("SELECT count(*) FROM properties WHERE raw ->> 'id' <> property_id")
                if mismatched:
                    problems.append(f"{mismatched} properties whose raw record has another id")
        _expected, _actual, mismatches = row_count_mismatches(engine)
        if mismatches and link_rows:
            problems.append(f"row-count check: {len(mismatches)} files whose link rows differ from success_count")
    finally:
        engine.dispose()
    return problems


def raw_compression(db_url: str) -> str | None:
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT pg_column_compression(raw) FROM properties LIMIT 1")).scalar()
    finally:
        engine.dispose()


# --- timed children: `python -m benchmarks.pipeline <what> '<json arguments>'` prints {"seconds": ...} ---------


def _register(arguments: dict[str, Any]) -> dict[str, Any]:
    """`register` of every unregistered file (what `property-pipeline register` runs), timed inside."""
    engine = create_db_engine(arguments["db_url"])
    with engine.connect() as conn:  # connect first: the timing is registration's, not the connection's
        conn.execute(text("SELECT 1"))
    started = time.perf_counter()
    report = register_unregistered(engine, PayloadRoot(arguments["logs_dir"]), "bench")
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "registered": len(report.registered), "skipped": len(report.skipped)}


def _sensor_tick(arguments: dict[str, Any]) -> dict[str, Any]:
    """One tick of the registration sensor's core: scan from the cursor, register what is new.

    Without `scan_new_files` (a tree before the sensor), a tick is `register_unregistered`: a full scan.
    """
    from property_pipeline import registration

    engine = create_db_engine(arguments["db_url"])
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    root = PayloadRoot(arguments["logs_dir"])
    started = time.perf_counter()
    if hasattr(registration, "scan_new_files"):
        scan = registration.scan_new_files(
            engine, root, arguments["since_ns"], max_files=arguments["max_files"], settled_before_ns=time.time_ns()
        )
        report = registration.register_paths(engine, root, scan.paths, actor="bench-sensor")
        core = "scan_new_files + register_paths"
    else:
        report = registration.register_unregistered(engine, root, "bench-sensor")
        core = "register_unregistered"
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "registered": len(report.registered), "core": core}


def _capture(arguments: dict[str, Any]) -> dict[str, Any]:
    """`capture_campaign` of `pages` pages from the sandbox, timed inside (same client as the command)."""
    from property_pipeline.api.client import PropertySearchClient
    from property_pipeline.capture import Campaign, capture_campaign

    engine = create_db_engine(arguments["db_url"])
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    root = PayloadRoot(arguments["logs_dir"])
    root.ensure_folders()
    campaign = Campaign("bench-capture", arguments["criteria"])
    with PropertySearchClient(arguments["base_url"], page_size=400) as client:
        started = time.perf_counter()
        report = capture_campaign(engine, root, client, campaign, max_pages=arguments["pages"])
        seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "pages": report.pages, "bytes": report.bytes, "duplicates": report.duplicates}


if __name__ == "__main__":
    import json
    import sys

    children = {"register": _register, "sensor_tick": _sensor_tick, "capture": _capture}
    print(json.dumps(children[sys.argv[1]](json.loads(sys.argv[2]))))
