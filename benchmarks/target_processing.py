"""Target 1: `property-pipeline process` on PostgreSQL against a plain COPY and dlt's merge of the same files.

Goals: processing at least 1.0x a plain COPY of the same records into an empty table shaped like
`properties` before migration 0004 (jsonb), at least 1.0x one COPY stream into an empty table exactly like
`properties` now (json with lz4), and at least 6x dlt's merge. Every method gets a new database; their
order rotates per repeat.

A reference with no goal says how far any change to `process` could go on this machine: the least exactly-once
pipeline into this schema (baselines.py, `least_pipeline`), the same claims, transactions and rows without
anything a pipeline could leave out, checked for exactly-once like `process`.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    WIDE_TABLE,
    ServerCpu,
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
from benchmarks.data import dataset
from benchmarks.pipeline import exactly_once_problems, process_command, raw_compression, registered_backlog
from property_pipeline.processing.parallel import default_workers

PROCESS = "process"
PLAIN_COPY = "plain_copy"
LZ4_COPY = "lz4_copy"
SAME_TABLE_COPY = "same_table_copy"
CUT_COPY = "cut_copy"
LEAST = "least_pipeline"
LEAST_UNLINKED = "least_pipeline_without_links"
DLT = "dlt_merge"


def run(mode: str) -> TargetResult:
    sizes = sizes_for(mode)
    data = dataset(sizes.files)
    files = data.as_argument()
    result = TargetResult(
        "processing",
        f"1. Processing on PostgreSQL, {data.records:,} records ({data.files} files)",
        mode,
        setup={"files": data.files, "records": data.records, "megabytes": round(data.size_bytes / 1e6, 1)},
    )
    dlt_installed = importlib.util.find_spec("dlt") is not None
    if not dlt_installed:
        result.notes.append(
            "dlt is not installed: the dlt baseline was skipped. Install the optional extra: "
            ".venv/bin/pip install -c requirements.lock -e '.[bench]'"
        )
    values: dict[str, list[float]] = defaultdict(list)
    extras: dict[str, list[Any]] = defaultdict(list)
    # Per repeat: (client CPU seconds, server CPU seconds) of a method's run (see ServerCpu).
    cpu: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def process() -> float:
        with throwaway_database("process") as url, scratch_folder("process") as logs:
            registered_backlog(url, logs, data)
            checkpoint(url)
            with ServerCpu() as server:
                child, measured = process_command(url, logs)
            cpu[PROCESS].append((child.cpu_seconds, server.seconds))
            problems = exactly_once_problems(url, data.files, data.records)
            result.check(
                f"exactly once after `process` (repeat {len(values[PROCESS]) + 1})", not problems, "; ".join(problems)
            )
            extras["process_wall_seconds"].append(round(measured.wall_seconds, 2))
            extras["process_peak_rss_mb"].append(round(measured.peak_rss_mb, 1))
            extras["raw_compression"].append(raw_compression(url))
            return data.records / measured.seconds

    def copy(name: str, raw_type: str, compression: str, client: str = "orjson") -> Callable[[], float]:
        def measure() -> float:
            with throwaway_database("copy") as url:
                create_wide_table(url)
                arguments = {
                    "db_url": url,
                    "data": files,
                    "table": WIDE_TABLE,
                    "raw_type": raw_type,
                    "compression": compression,
                    "client": client,
                }
                with ServerCpu() as server:
                    child = python_child("benchmarks.baselines", "copy", json.dumps(arguments))
                require_ok(child, f"COPY baseline ({raw_type}, {compression})")
                cpu[name].append((child.cpu_seconds, server.seconds))
                measured = child.json()
                result.check(
                    f"COPY ({raw_type}, {compression}) stored every record",
                    measured["stored"] == data.records,
                    f"{measured['stored']} rows, compression {measured['compression']}",
                )
                extras[f"{raw_type}_{compression}_compression"].append(measured["compression"])
                return data.records / measured["seconds"]

        return measure

    def least_pipeline(name: str, *, link_rows: bool) -> Callable[[], float]:
        def measure() -> float:
            with throwaway_database("least") as url, scratch_folder("least") as logs:
                registered_backlog(url, logs, data)
                checkpoint(url)
                arguments = {
                    "db_url": url,
                    "logs_dir": str(logs),
                    "workers": default_workers("postgresql"),
                    "link_rows": link_rows,
                }
                with ServerCpu() as server:
                    child = python_child("benchmarks.baselines", "least_pipeline", json.dumps(arguments))
                require_ok(child, "least exactly-once pipeline")
                cpu[name].append((child.cpu_seconds, server.seconds))
                problems = exactly_once_problems(url, data.files, data.records, link_rows=link_rows)
                result.check(
                    f"exactly once after the least pipeline{'' if link_rows else ' without link rows'} "
                    f"(repeat {len(values[name]) + 1})",
                    not problems,
                    "; ".join(problems),
                )
                return data.records / child.json()["seconds"]

        return measure

    def dlt_merge() -> float:
        with throwaway_database("dlt", migrate=False) as url, scratch_folder("dlt") as work:
            arguments = {"db_url": url, "data": files, "work_dir": str(work)}
            child = python_child("benchmarks.baselines", "dlt_merge", json.dumps(arguments))
            require_ok(child, "dlt merge baseline")
            measured = child.json()
            result.check("dlt stored every record", measured["stored"] == data.records, f"{measured['stored']} rows")
            extras["dlt_peak_rss_mb"].append(round(child.peak_rss_mb, 1))
            return data.records / measured["seconds"]

    methods: dict[str, Callable[[], float]] = {
        PROCESS: process,
        PLAIN_COPY: copy(PLAIN_COPY, "jsonb", "default"),
        LZ4_COPY: copy(LZ4_COPY, "jsonb", "lz4"),
        SAME_TABLE_COPY: copy(SAME_TABLE_COPY, "json", "lz4"),
        CUT_COPY: copy(CUT_COPY, "json", "lz4", client="msgspec"),
        LEAST: least_pipeline(LEAST, link_rows=True),
        LEAST_UNLINKED: least_pipeline(LEAST_UNLINKED, link_rows=False),
    }
    if dlt_installed:
        methods[DLT] = dlt_merge
    order = list(methods)
    for repeat in range(sizes.repeats):
        for name in order[repeat % len(order) :] + order[: repeat % len(order)]:  # rotate: no method always first
            log(f"processing: repeat {repeat + 1}/{sizes.repeats}: {name}")
            values[name].append(methods[name]())

    result.method(
        PROCESS,
        "property-pipeline process (claim, verify, parse, validate, upsert, links, status; a transaction per file)",
        "rows/s",
        values[PROCESS],
        wall_seconds=extras["process_wall_seconds"],
        peak_rss_mb=extras["process_peak_rss_mb"],
        raw_compression=extras["raw_compression"],
    )
    result.method(
        PLAIN_COPY,
        "plain COPY into an identical empty table, `properties` before migration 0004 "
        "(raw jsonb, server default compression; not idempotent)",
        "rows/s",
        values[PLAIN_COPY],
        compression=extras["jsonb_default_compression"],
    )
    result.method(
        LZ4_COPY,
        "reference: the same COPY with raw jsonb compressed by lz4",
        "rows/s",
        values[LZ4_COPY],
    )
    result.method(
        SAME_TABLE_COPY,
        "one COPY stream into an empty table like `properties` (one table: content and lineage columns, "
        "raw json with lz4, its primary key), the client parsing with orjson",
        "rows/s",
        values[SAME_TABLE_COPY],
    )
    result.method(
        CUT_COPY,
        "reference: the same COPY from a client that cuts each page with msgspec and sends the records' bytes",
        "rows/s",
        values[CUT_COPY],
    )
    result.method(
        LEAST,
        "reference: the least exactly-once pipeline into this schema, as many workers as `process` (claim, checksum, "
        "cut, decode, hash; per file one transaction: content, sightings, links, status; no SQLAlchemy, markers, "
        "heartbeat, field checks or quarantine)",
        "rows/s",
        values[LEAST],
    )
    result.method(
        LEAST_UNLINKED,
        "reference: the same without link rows (the most any other way of keeping the lineage could save; "
        "not a pipeline that keeps its promises)",
        "rows/s",
        values[LEAST_UNLINKED],
    )
    for name in (PROCESS, PLAIN_COPY, LZ4_COPY, SAME_TABLE_COPY, CUT_COPY, LEAST, LEAST_UNLINKED):
        result.methods[name]["client_cpu_seconds"] = [round(client, 2) for client, _server in cpu[name]]
        result.methods[name]["server_cpu_seconds"] = [round(server, 2) for _client, server in cpu[name]]
    result.ratio("process / plain COPY", per_repeat(values[PROCESS], values[PLAIN_COPY]), 1.0)
    if dlt_installed:
        result.method(
            DLT,
            "dlt 1.31 merge on the primary key (defaults)",
            "rows/s",
            values[DLT],
            peak_rss_mb=extras["dlt_peak_rss_mb"],
        )
        result.ratio("process / dlt merge", per_repeat(values[PROCESS], values[DLT]), 6.0)
    # The floor of this round: one COPY stream into an empty table exactly like `properties` (json, lz4).
    result.ratio(
        "process / COPY into a table like `properties`", per_repeat(values[PROCESS], values[SAME_TABLE_COPY]), 1.0
    )
    result.reference("process / jsonb lz4 COPY", values[PROCESS], values[LZ4_COPY])
    result.reference("process / COPY from a msgspec-cut client", values[PROCESS], values[CUT_COPY])
    # Whether the floor is within reach on this machine at all: the least pipeline against the same COPY.
    result.reference(
        "least exactly-once pipeline / COPY into a table like `properties`",
        values[LEAST],
        values[SAME_TABLE_COPY],
        why="the most any `process` could reach here",
    )
    result.reference(
        "least pipeline without link rows / COPY into a table like `properties`",
        values[LEAST_UNLINKED],
        values[SAME_TABLE_COPY],
    )
    result.reference("process / least exactly-once pipeline", values[PROCESS], values[LEAST])
    result.notes.append(
        "CPU seconds, medians (client: the command and its workers, interpreter start included; server: every "
        "PostgreSQL process, sampled): "
        + "; ".join(
            f"{name} client {statistics.median(c for c, _s in cpu[name]):.2f}, "
            f"server {statistics.median(s for _c, s in cpu[name]):.2f}"
            for name in (PROCESS, SAME_TABLE_COPY, CUT_COPY, LEAST)
        )
    )
    return result
