"""Re-capture on PostgreSQL (the steady state): the same campaign captured again a month later and processed.

The second month's files carry the same ids as the first month's, 80% of the records byte-identical and
20% with new values. Each method starts from a database where `process` loaded the first month (not
timed), then loads the second month:

- `process`: `property-pipeline process` of the second month, timed as it reports itself;
- the floor: COPY of the same records into a temporary staging table, then one
  `INSERT ... ON CONFLICT DO UPDATE` of every column into the same loaded data in one table like
  `properties` (the view's rows, content and lineage in one row, as a plain loader keeps them).

Goal: process at least 2.0x the floor. Besides the time, the target reports what the load wrote: the
row versions of the wide content rows and of the narrow sighting rows (`pg_stat_user_tables`: inserts
plus updates) and the WAL written
between the WAL positions before and after, counted record by record for this database with
pg_waldump (the server's whole WAL when pg_waldump cannot read it: then the server must be idle).
A third run per repeat, a second month with nothing changed, gives the WAL an unchanged record
costs; the mixed month then gives a changed record's. Goals: no new version of the wide content row for
an unchanged record, and its WAL at most 10% of a changed record's.

A reference with no goal, the least exactly-once pipeline into this schema (baselines.py, `least_pipeline` with
`recapture`), says how far any change to `process` could go on this machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import (
    WIDE_TABLE,
    TargetResult,
    checkpoint,
    create_wide_table,
    log,
    per_repeat,
    python_child,
    require_ok,
    scratch_folder,
    sizes_for,
    throwaway_database,
)
from benchmarks.data import Dataset, dataset, recaptured
from benchmarks.pipeline import process_command, registered_backlog
from property_pipeline.db.engine import create_db_engine
from property_pipeline.processing.parallel import default_workers
from property_pipeline.registration import DropInRules, register_unregistered
from property_pipeline.store.folder import PayloadRoot

PROCESS = "process"
FLOOR = "staged_upsert"
LEAST = "least_pipeline"
COPY_VIEW_INTO_WIDE_TABLE = f"INSERT INTO {WIDE_TABLE} SELECT * FROM properties"
EMPTY_PIPELINE_TABLES = "TRUNCATE property_records, property_sightings, file_properties"
VACUUM_ANALYZE = "VACUUM ANALYZE "
PIPELINE_TABLES = ("property_records", "property_sightings", "file_properties", "batch_file_status")
CHANGED_EVERY = 5  # every 5th record has new values: 20%


@dataclass(frozen=True)
class Written:
    """What one load wrote: WAL bytes, new row versions of the content rows (`property_records`, or the floor's
    one-table `properties`) and of the narrow sighting rows, and link rows."""

    wal_bytes: int
    property_versions: int  # content rows: inserts plus updates
    hot_updates: int
    sighting_versions: int
    sighting_hot_updates: int
    link_rows: int
    wal_of_this_database: bool  # counted by pg_waldump; False: the whole server's WAL


def _counters(url: str) -> tuple[str, dict[str, tuple[int, int, int]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
        tables = {
            name: (int(inserted), int(updated), int(hot))
            for name, inserted, updated, hot in conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relname IN ('property_records', 'property_sightings', 'file_properties', %s)",
                (WIDE_TABLE,),
            )
        }
    return lsn, tables


_BLOCK_REFERENCE = re.compile(r"blkref #\d+: rel \d+/(\d+)/\d+")
_RECORD = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*(\d+)")


def _pg_waldump(server_version: str) -> str | None:
    major = server_version.split(".")[0]
    for candidate in (shutil.which("pg_waldump"), f"/usr/lib/postgresql/{major}/bin/pg_waldump"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _database_wal_bytes(url: str, start: str, end: str) -> int | None:
    """The WAL that this database's changes wrote between two positions, record by record (pg_waldump):
    other databases on the same server (other tests, other sessions) write WAL too. A record counts for
    the database its blocks belong to, or, without blocks (a commit), for the database its transaction
    wrote to. None when pg_waldump or the WAL files cannot be read here."""
    with psycopg.connect(url, autocommit=True) as conn:
        oid = str(conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0])  # type: ignore[index]
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        data_directory = str(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
    waldump = _pg_waldump(version)
    if waldump is None:
        return None
    try:
        dump = subprocess.run(
            [waldump, "-p", str(Path(data_directory) / "pg_wal"), "-s", start, "-e", end],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if dump.returncode != 0 and not dump.stdout:
        return None
    ours = 0
    transactions: set[str] = set()
    for line in dump.stdout.splitlines():
        record = _RECORD.search(line)
        if record is None:
            continue
        size, transaction = int(record.group(1)), record.group(2)
        databases = set(_BLOCK_REFERENCE.findall(line))
        if oid in databases:
            ours += size
            if transaction != "0":
                transactions.add(transaction)
        elif not databases and transaction in transactions:
            ours += size
    return ours


def _written(url: str, before: tuple[str, dict[str, tuple[int, int, int]]]) -> Written:
    after = _counters(url)
    wal = _database_wal_bytes(url, before[0], after[0])
    counted = wal is not None
    if wal is None:  # the server's whole WAL: right only on an otherwise idle server
        with psycopg.connect(url, autocommit=True) as conn:
            wal = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (after[0], before[0])).fetchone()[0]  # type: ignore[index]

    def delta(table: str, column: int) -> int:
        return after[1].get(table, (0, 0, 0))[column] - before[1].get(table, (0, 0, 0))[column]

    content = ("property_records", WIDE_TABLE)
    return Written(
        wal_bytes=int(wal),
        property_versions=sum(delta(table, 0) + delta(table, 1) for table in content),
        hot_updates=sum(delta(table, 2) for table in content),
        sighting_versions=delta("property_sightings", 0) + delta("property_sightings", 1),
        sighting_hot_updates=delta("property_sightings", 2),
        link_rows=delta("file_properties", 0),
        wal_of_this_database=counted,
    )


def _scalar(url: str, sql: str, parameters: tuple[Any, ...] = ()) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(sql, parameters).fetchone()[0] or 0)  # type: ignore[index]


def _first_month_loaded(url: str, logs: Path, first: Dataset) -> None:
    registered_backlog(url, logs, first)
    process_command(url, logs)


def _as_one_table(url: str) -> None:
    """The floor's starting point: the first month as `process` loaded it, in one table like `properties` (the
    view's rows), the pipeline's own tables emptied so that the floor has the server to itself."""
    create_wide_table(url)
    with psycopg.connect(url) as conn:
        conn.execute(COPY_VIEW_INTO_WIDE_TABLE)
        conn.execute(EMPTY_PIPELINE_TABLES)
    _vacuumed(url, (WIDE_TABLE,))


def _vacuumed(url: str, tables: tuple[str, ...]) -> None:
    """A month after the first load, autovacuum has visited the tables (this machine's server runs without it):
    both methods start from vacuumed, analyzed tables."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(VACUUM_ANALYZE + ", ".join(tables))


def _second_month_ready(url: str, logs: Path, first: Dataset, month: Dataset) -> None:
    """The first month loaded by `process`, the second registered, the tables vacuumed, a checkpoint (not timed)."""
    _first_month_loaded(url, logs, first)
    _register(url, logs, month)
    _vacuumed(url, PIPELINE_TABLES)
    checkpoint(url)


def _register(url: str, logs: Path, month: Dataset) -> None:
    month.install(logs)
    engine = create_db_engine(url)
    try:
        # The data's capture times are fixed (seeded files): a re-capture a month after them may lie in this
        # clock's future, which registration refuses for real drop-ins.
        rules = DropInRules(clock_skew_seconds=float(400 * 24 * 3600))
        report = register_unregistered(engine, PayloadRoot(logs), "bench-setup", rules=rules)
    finally:
        engine.dispose()
    if len(report.registered) != month.files:
        raise RuntimeError(f"registered {len(report.registered)} of {month.files} re-captured files")


def run(mode: str) -> TargetResult:
    sizes = sizes_for(mode)
    first = dataset(sizes.files)
    mixed = recaptured(first, changed_every=CHANGED_EVERY)
    unchanged = recaptured(first, changed_every=0)
    records = first.records
    changed = sum(1 for _file in range(first.files) for index in range(first.per_file) if index % CHANGED_EVERY == 0)
    result = TargetResult(
        "recapture",
        f"8. Re-capture on PostgreSQL: {records:,} records seen again a month later, "
        f"{records - changed:,} byte-identical and {changed:,} changed",
        mode,
        setup={"files": first.files, "records": records, "changed": changed, "unchanged": records - changed},
    )
    values: dict[str, list[float]] = defaultdict(list)
    written: dict[str, list[Written]] = defaultdict(list)

    def seen_again(url: str, month: Dataset, label: str, repeat: int) -> None:
        """Every property linked to both months, and the changed records' new values loaded."""
        links = _scalar(url, "SELECT count(*) FROM file_properties")
        linked = _scalar(
            url,
            "SELECT count(DISTINCT l.property_id) FROM file_properties l "
            "JOIN batch_file_status f ON f.file_id = l.file_id WHERE f.month = %s",
            (month.month,),
        )
        result.check(
            f"{label}: every property linked to both months and seen again (repeat {repeat})",
            links == 2 * records and linked == records,
            f"{links} link rows, {linked} properties linked to {month.month}",
        )
        if month is mixed:
            newest = _scalar(
                url,
                "SELECT count(*) FROM properties p JOIN batch_file_status f ON f.file_id = p.source_file_id "
                "WHERE f.month = %s",
                (month.month,),
            )
            result.check(
                f"{label}: the changed records hold the new values (repeat {repeat})",
                newest >= changed,
                f"{newest} properties from {month.month}",
            )

    def process(month: Dataset, label: str) -> Callable[[], float]:
        def measure() -> float:
            with throwaway_database("recapture") as url, scratch_folder("recapture") as logs:
                _second_month_ready(url, logs, first, month)
                before = _counters(url)
                _child, measured = process_command(url, logs)
                written[label].append(_written(url, before))
                seen_again(url, month, label, len(written[label]))
                return records / measured.seconds

        return measure

    def least_pipeline() -> float:
        with throwaway_database("recapture_least") as url, scratch_folder("recapture_least") as logs:
            _second_month_ready(url, logs, first, mixed)
            arguments = {
                "db_url": url,
                "logs_dir": str(logs),
                "workers": default_workers("postgresql"),
                "recapture": True,
            }
            child = python_child("benchmarks.baselines", "least_pipeline", json.dumps(arguments))
            require_ok(child, "least exactly-once pipeline (re-capture)")
            seen_again(url, mixed, LEAST, len(values[LEAST]) + 1)
            return records / child.json()["seconds"]

    def floor() -> float:
        with throwaway_database("recapture_floor") as url, scratch_folder("recapture_floor") as logs:
            _first_month_loaded(url, logs, first)
            _as_one_table(url)
            checkpoint(url)
            before = _counters(url)
            arguments = {
                "db_url": url,
                "data": mixed.as_argument(),
                "first_file_id": first.files + 1,
                "table": WIDE_TABLE,
            }
            child = python_child("benchmarks.baselines", "staged_upsert", json.dumps(arguments))
            require_ok(child, "staged upsert baseline")
            measured = child.json()
            written[FLOOR].append(_written(url, before))
            result.check("the staged upsert merged every record", measured["merged"] == records)
            return records / measured["seconds"]

    methods: dict[str, Callable[[], float]] = {
        PROCESS: process(mixed, PROCESS),
        FLOOR: floor,
        LEAST: least_pipeline,
    }
    order = list(methods)
    for repeat in range(sizes.repeats):
        for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
            log(f"recapture: repeat {repeat + 1}/{sizes.repeats}: {name}")
            values[name].append(methods[name]())
        log(f"recapture: repeat {repeat + 1}/{sizes.repeats}: nothing changed (for the WAL of an unchanged record)")
        process(unchanged, "unchanged")()

    mixed_runs, floor_runs, unchanged_runs = written[PROCESS], written[FLOOR], written["unchanged"]
    per_unchanged = [run.wal_bytes / records for run in unchanged_runs]
    per_changed = [
        max(run.wal_bytes - unchanged_bytes * (records - changed), 0) / changed
        for run, unchanged_bytes in zip(mixed_runs, per_unchanged, strict=True)
    ]
    result.method(
        PROCESS,
        "property-pipeline process of the second month (claim, verify, parse, validate, newest wins, links, status)",
        "rows/s",
        values[PROCESS],
        wal_megabytes=[round(run.wal_bytes / 1e6, 1) for run in mixed_runs],
        content_row_versions=[run.property_versions for run in mixed_runs],
        content_hot_updates=[run.hot_updates for run in mixed_runs],
        sighting_row_versions=[run.sighting_versions for run in mixed_runs],
        sighting_hot_updates=[run.sighting_hot_updates for run in mixed_runs],
        link_rows=[run.link_rows for run in mixed_runs],
    )
    result.method(
        FLOOR,
        "COPY into a temporary staging table, then INSERT ... ON CONFLICT DO UPDATE of every column, one transaction",
        "rows/s",
        values[FLOOR],
        wal_megabytes=[round(run.wal_bytes / 1e6, 1) for run in floor_runs],
        content_row_versions=[run.property_versions for run in floor_runs],
    )
    result.method(
        LEAST,
        "reference: the least exactly-once pipeline into this schema, as many workers as `process` (claim, "
        "checksum, cut, hash; unchanged records move their sighting, changed ones are decoded and replaced; links, "
        "status; no SQLAlchemy, markers, heartbeat, field checks, newest-wins test or concurrency checks)",
        "rows/s",
        values[LEAST],
    )
    result.method(
        "wal_unchanged",
        "process: WAL per unchanged record (a second month with nothing changed: its WAL / records)",
        "bytes",
        per_unchanged,
    )
    result.method(
        "wal_changed",
        "process: WAL per changed record (the mixed month's WAL less the unchanged records' share, / changed)",
        "bytes",
        per_changed,
    )
    result.method(
        "versions_unchanged",
        "process: new versions of the wide content row per unchanged record (nothing-changed month)",
        "versions",
        [run.property_versions / records for run in unchanged_runs],
    )
    result.method(
        "sighting_versions_unchanged",
        "process: new versions of the narrow sighting row per unchanged record (its last sighting moves)",
        "versions",
        [run.sighting_versions / records for run in unchanged_runs],
        hot_updates=[run.sighting_hot_updates for run in unchanged_runs],
    )
    every_run = [*mixed_runs, *floor_runs, *unchanged_runs]
    result.notes.append(
        "WAL counted for the benchmark's own database with pg_waldump"
        if all(run.wal_of_this_database for run in every_run)
        else "pg_waldump could not read the WAL: the WAL figures are the whole server's"
    )
    result.ratio("re-capture: process / staged upsert", per_repeat(values[PROCESS], values[FLOOR]), 2.0)
    result.reference(
        "least exactly-once pipeline / staged upsert",
        values[LEAST],
        values[FLOOR],
        why="the most any `process` could reach here",
    )
    result.reference("process / least exactly-once pipeline", values[PROCESS], values[LEAST])
    result.ratio(
        "WAL per unchanged record / per changed record",
        [
            unchanged_bytes / max(changed_bytes, 1.0)
            for unchanged_bytes, changed_bytes in zip(per_unchanged, per_changed, strict=True)
        ],
        0.10,
        at_most=True,
    )
    result.ratio(
        "content row versions per unchanged record",
        [run.property_versions / records for run in unchanged_runs],
        0.0,
        at_most=True,
        unit="versions",
    )
    return result
