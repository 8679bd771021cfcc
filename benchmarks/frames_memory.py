"""Memory of reading `properties` as a DataFrame: peak RSS while 1,000,000 rows are read from PostgreSQL.

    python -m benchmarks.frames_memory                 # 1,000,000 rows (about 6 minutes on 2 cores)
    python -m benchmarks.frames_memory --rows 100000   # a quicker look

A throwaway PostgreSQL database gets `--rows` properties delivered by COMPLETED files of one month
(400 per file, as capture writes them). Their values and raw records are those of the sandbox API
(a pool of its records, each given a new id), typed by the pipeline's own validator, and written
with COPY: the table is what processing would have left, without taking the minutes processing
takes. Then `read_properties` reads the month in a fresh child process, four times: with and
without `raw`, with text as Arrow strings (pandas' default when pyarrow is installed) and as Python
strings (without pyarrow). Each child reports its RSS before the read, its peak RSS (the kernel's
high-water mark), the DataFrame's own size (`memory_usage(deep=True)`) and the time taken.

The figure per million rows is (peak - before) scaled to 1,000,000 rows. Then `property-pipeline
export` writes the month to CSV and to Parquet (no raw), each in a child process whose peak RSS
(from wait4) is reported: an export holds one chunk (Parquet: one row group), not the month.

Not a test: nothing is asserted; results are printed and written to
benchmarks/results/frames-memory-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from benchmarks.common import (
    RESULTS_DIR,
    cli_env,
    log,
    machine_facts,
    python_child,
    require_ok,
    scratch_folder,
    server_facts,
)
from benchmarks.common import throwaway_database as throwaway
from property_pipeline.api.sandbox import generate_record
from property_pipeline.processing.records import COLUMNS, RecordRejected, validate_record
from property_pipeline.store.layout import PayloadName

MONTH = "2026-11"
PER_FILE = 400
TEMPLATES = 4000
SEED = 20261101
CAPTURED = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
CASES = (
    ("arrow strings, no raw", "pyarrow", False),
    ("arrow strings, with raw", "pyarrow", True),
    ("python strings, no raw", "python", False),
    ("python strings, with raw", "python", True),
)


def _templates() -> list[tuple[dict[str, Any], tuple[Any, ...]]]:
    """Sandbox records that pass the contract, with their typed values."""
    pool = []
    for index in range(TEMPLATES):
        record = generate_record(index, SEED)
        try:
            pool.append((record, validate_record(record).values))
        except RecordRejected:
            continue  # the sandbox breaks every 97th record on purpose
    return pool


def fill(url: str, rows: int) -> None:
    """`rows` properties, each delivered by one COMPLETED file of MONTH (400 per file)."""
    pool = _templates()
    files = -(-rows // PER_FILE)
    started = time.perf_counter()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        with conn.cursor() as cursor:
            with cursor.copy(
                "COPY batch_file_status (file_id, file_path, campaign_id, batch_number, month, status, "
                "checksum_sha256, file_size_bytes, captured_at, created_at, processed_at, properties_count, "
                "success_count, error_count) FROM STDIN"
            ) as copy:
                for file_id in range(1, files + 1):
                    at = CAPTURED + timedelta(seconds=file_id)
                    name = PayloadName("bench", file_id, at).file_name
                    identity = (file_id, f"{MONTH}/{name}", "bench", file_id, MONTH, "COMPLETED", "0" * 64)
                    copy.write_row((*identity, 800_000, at, at, at, PER_FILE, PER_FILE, 0))
            columns = ", ".join(("property_id", *COLUMNS, "raw", "source_file_id", "campaign_id"))
            with cursor.copy(
                f"COPY properties ({columns}, captured_at, first_seen_at, last_seen_at) FROM STDIN"
            ) as copy:
                for row in range(rows):
                    record, values = pool[row % len(pool)]
                    property_id = f"B-{row:07d}"
                    file_id = row // PER_FILE + 1
                    at = CAPTURED + timedelta(seconds=file_id)
                    raw = orjson.dumps({**record, "id": property_id}).decode()
                    copy.write_row((property_id, *values, raw, file_id, "bench", at, at, at))
                    if row and row % 200_000 == 0:
                        log(f"fill: {row:,} rows")
            with cursor.copy("COPY file_properties (file_id, property_id) FROM STDIN") as copy:
                for row in range(rows):
                    copy.write_row((row // PER_FILE + 1, f"B-{row:07d}"))
        conn.commit()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    log(f"fill: {rows:,} rows in {time.perf_counter() - started:.0f}s")


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(url: str, storage: str, include_raw: bool, chunk_rows: int | None = None) -> dict[str, Any]:
    """One read in this fresh process: RSS before, peak RSS, the DataFrame's size and the time."""
    import pandas as pd

    pd.set_option("mode.string_storage", storage)  # before frames builds its dtypes
    from property_pipeline.db.engine import create_db_engine
    from property_pipeline.frames import CHUNK_ROWS, read_properties

    chunk_rows = chunk_rows or CHUNK_ROWS

    engine = create_db_engine(url)
    # Everything but the rows before "before": the connection, pandas' arrays, pyarrow when it is used.
    read_properties(engine, "1999-01", include_raw=include_raw)
    before = _rss_mb("VmRSS")
    started = time.perf_counter()
    frame = read_properties(engine, MONTH, include_raw=include_raw, chunk_rows=chunk_rows)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rows": len(frame),
        "text_storage": str(frame["city"].dtype.storage),
        "raw": include_raw,
        "chunk_rows": chunk_rows,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "rss_after_mb": round(_rss_mb("VmRSS"), 1),
        "frame_mb": round(frame.memory_usage(deep=True).sum() / 2**20, 1),
        "seconds": round(seconds, 2),
    }


def _exports(url: str) -> list[dict[str, Any]]:
    """`property-pipeline export` of the month to CSV and Parquet, each in its own process: peak RSS, size, time."""
    measured = []
    with scratch_folder("frames-export") as folder:
        for fmt in ("csv", "parquet"):
            output = folder / f"month.{fmt}"
            arguments = ("export", "--month", MONTH, "--format", fmt, "--output", str(output))
            run = python_child("property_pipeline", *arguments, env=cli_env(url, folder / "logs"))
            require_ok(run, f"export --format {fmt}")
            entry = {"format": fmt, "peak_rss_mb": round(run.peak_rss_mb, 1), "bytes": output.stat().st_size}
            entry["seconds"] = round(run.wall_seconds, 1)
            measured.append(entry)
            log(f"export {fmt}: {entry}")
            output.unlink()
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        options = json.loads(args.child)
        print(json.dumps(child(options["url"], options["storage"], options["raw"], options.get("chunk_rows"))))
        return 0
    results: list[dict[str, Any]] = []
    with throwaway("frames") as url:
        fill(url, args.rows)
        for label, storage, include_raw in CASES:
            run = python_child(
                "benchmarks.frames_memory", "--child", json.dumps({"url": url, "storage": storage, "raw": include_raw})
            )
            require_ok(run, f"read ({label})")
            measured = json.loads(run.stdout)
            if measured["rows"] != args.rows:
                raise RuntimeError(f"{label}: read {measured['rows']} rows, expected {args.rows}")
            scale = 1_000_000 / args.rows
            measured["label"] = label
            measured["read_mb_per_million_rows"] = round((measured["peak_rss_mb"] - measured["rss_before_mb"]) * scale)
            measured["frame_mb_per_million_rows"] = round(measured["frame_mb"] * scale)
            results.append(measured)
            log(f"{label}: {measured}")
        exports = _exports(url)
    lines = [
        f"read_properties, {args.rows:,} rows from PostgreSQL (one month, 400 rows per file)",
        "| case | RSS before | peak RSS | DataFrame | peak - before per 1M rows | seconds |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['label']} | {r['rss_before_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | {r['frame_mb']:.0f} MB "
        f"| {r['read_mb_per_million_rows']:,} MB | {r['seconds']:.1f} |"
        for r in results
    ]
    lines += ["", "| export | peak RSS | file | seconds |", "|---|---|---|---|"]
    lines += [
        f"| {e['format']} | {e['peak_rss_mb']:.0f} MB | {e['bytes'] / 2**20:,.0f} MB | {e['seconds']:.1f} |"
        for e in exports
    ]
    table = "\n".join(lines)
    print(table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output = RESULTS_DIR / f"frames-memory-{time.strftime('%Y%m%dT%H%M%S')}.json"
    output.write_text(
        json.dumps(
            {
                "rows": args.rows,
                "results": results,
                "exports": exports,
                "table": table,
                "machine": machine_facts(),
                **server_facts(),
            },
            indent=2,
        )
    )
    log(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
