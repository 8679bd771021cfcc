"""Target 2: peak memory of `property-pipeline process` at two backlog sizes (100,000 and 1,000,000 records).

The command runs as a user runs it, with its default worker processes (one per CPU on PostgreSQL), so
its memory is that of a process tree, sampled every 50 ms:
- the goal: the tree's peak summed PSS (each shared page split between the processes sharing it, so
  the sum is the memory the command holds) at most 150 MB, and flat in the backlog size (the larger
  backlog at most 10% above the smaller);
- also reported, without a goal: the tree's peak summed RSS (the forked workers' shared code counted
  once per process, an overstatement), and the largest single process's peak RSS (exact, from wait4).
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
        f"2. Peak memory of process: {small.records:,} vs {large.records:,} records",
        mode,
        setup={"records": [small.records, large.records], "files": [small.files, large.files]},
    )
    rss: dict[int, list[float]] = defaultdict(list)
    tree_rss: dict[int, list[float]] = defaultdict(list)
    largest: dict[int, list[float]] = defaultdict(list)
    processes: list[int] = []
    throughput: dict[int, list[float]] = defaultdict(list)
    for repeat in range(sizes.repeats):
        for data in (small, large) if repeat % 2 == 0 else (large, small):
            log(f"memory: repeat {repeat + 1}/{sizes.repeats}: {data.records:,} records")
            with throwaway_database("memory") as url, scratch_folder("memory") as logs:
                registered_backlog(url, logs, data)
                checkpoint(url)
                child, measured = process_command(url, logs, sample_memory=True)
                problems = exactly_once_problems(url, data.files, data.records)
                result.check(f"exactly once at {data.records:,} records", not problems, "; ".join(problems))
                rss[data.records].append(child.peak_tree_pss_mb)
                tree_rss[data.records].append(child.peak_tree_rss_mb)
                largest[data.records].append(measured.peak_rss_mb)
                processes.append(child.peak_processes)
                throughput[data.records].append(data.records / measured.seconds)
    result.setup["processes"] = max(processes)
    for data in (small, large):
        result.method(
            f"pss_{data.records}",
            f"process: peak memory (summed PSS of its {max(processes)} processes), {data.records:,} records",
            "MB",
            rss[data.records],
        )
    for data in (small, large):
        result.method(
            f"tree_rss_{data.records}",
            f"reference: peak summed RSS of those processes, {data.records:,} records",
            "MB",
            tree_rss[data.records],
        )
        result.method(
            f"largest_rss_{data.records}",
            f"reference: largest single process's peak RSS, {data.records:,} records",
            "MB",
            largest[data.records],
        )
    for data in (small, large):
        result.method(
            f"rows_{data.records}", f"process throughput, {data.records:,} records", "rows/s", throughput[data.records]
        )
    result.ratio(f"peak memory at {large.records:,} records", rss[large.records], RSS_LIMIT_MB, at_most=True, unit="MB")
    result.ratio(
        f"peak memory {large.records:,} / {small.records:,} records (flat)",
        [big / little for big, little in zip(rss[large.records], rss[small.records], strict=True)],
        FLAT_WITHIN,
        at_most=True,
    )
    return result
