"""Target 2: peak RSS of `property-pipeline process` at two backlog sizes (100,000 and 1,000,000 records).

Goals: at most 150 MB, and flat in the backlog size (the larger backlog at most 10% above the smaller).
The peak is the command's own maximum resident set size, from wait4() on that one child process.
"""

from __future__ import annotations

from collections import defaultdict

from benchmarks.common import TargetResult, checkpoint, log, scratch_folder, sizes_for, throwaway_database
from benchmarks.data import dataset
from benchmarks.pipeline import exactly_once_problems, process_command, registered_backlog

RSS_LIMIT_MB = 150.0
FLAT_WITHIN = 1.10


def run(mode: str) -> TargetResult:
    sizes = sizes_for(mode)
    small, large = (dataset(files) for files in sizes.memory_files)
    result = TargetResult(
        "memory",
        f"2. Peak RSS of process: {small.records:,} vs {large.records:,} records",
        mode,
        setup={"records": [small.records, large.records], "files": [small.files, large.files]},
    )
    rss: dict[int, list[float]] = defaultdict(list)
    throughput: dict[int, list[float]] = defaultdict(list)
    for repeat in range(sizes.repeats):
        for data in (small, large) if repeat % 2 == 0 else (large, small):
            log(f"memory: repeat {repeat + 1}/{sizes.repeats}: {data.records:,} records")
            with throwaway_database("memory") as url, scratch_folder("memory") as logs:
                registered_backlog(url, logs, data)
                checkpoint(url)
                _child, measured = process_command(url, logs)
                problems = exactly_once_problems(url, data.files, data.records)
                result.check(f"exactly once at {data.records:,} records", not problems, "; ".join(problems))
                rss[data.records].append(measured.peak_rss_mb)
                throughput[data.records].append(data.records / measured.seconds)
    for data in (small, large):
        result.method(f"rss_{data.records}", f"process peak RSS, {data.records:,} records", "MB", rss[data.records])
    for data in (small, large):
        result.method(
            f"rows_{data.records}", f"process throughput, {data.records:,} records", "rows/s", throughput[data.records]
        )
    result.ratio(f"peak RSS at {large.records:,} records", rss[large.records], RSS_LIMIT_MB, at_most=True, unit="MB")
    result.ratio(
        f"peak RSS {large.records:,} / {small.records:,} records (flat)",
        [big / little for big, little in zip(rss[large.records], rss[small.records], strict=True)],
        FLAT_WITHIN,
        at_most=True,
    )
    return result
