"""What every benchmark target shares: sizes per mode, throwaway databases, child processes, medians."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, text

from property_pipeline.db.engine import create_db_engine, upgrade

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
ADMIN_URL = os.environ.get("PROPERTY_PIPELINE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPEATS = 3


@dataclass(frozen=True)
class Sizes:
    """How big each comparison is in a mode."""

    files: int  # payload files of 400 records for processing, SQLite and parallel processors
    memory_files: tuple[int, int]  # the two backlog sizes whose peak RSS must be the same
    register_files: int
    history_files: int  # files already registered before a sensor tick
    tick_new_files: int
    capture_pages: int
    repeats: int


MODES = {
    "full": Sizes(
        files=250,
        memory_files=(250, 2500),
        register_files=2500,
        history_files=50_000,
        tick_new_files=100,
        capture_pages=100,
        repeats=REPEATS,
    ),
    "quick": Sizes(
        files=4,
        memory_files=(2, 8),
        register_files=8,
        history_files=300,
        tick_new_files=4,
        capture_pages=3,
        repeats=1,
    ),
}


def sizes_for(mode: str) -> Sizes:
    """The sizes of a mode; PROPERTY_PIPELINE_BENCH_REPEATS overrides the number of repeats."""
    sizes = MODES[mode]
    repeats = os.environ.get("PROPERTY_PIPELINE_BENCH_REPEATS")
    return replace(sizes, repeats=int(repeats)) if repeats else sizes


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- statistics --------------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of the repeats (the values themselves kept for the JSON)."""
    return {
        "values": [round(value, 6) for value in values],
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def per_repeat(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Ratios of values measured in the same repeats, repeat by repeat."""
    return [numerator / denominator for numerator, denominator in zip(numerators, denominators, strict=True)]


@dataclass
class TargetResult:
    """One target's measurements, ratios (per repeat, then summarised), checks and notes, as JSON."""

    target: str
    title: str
    mode: str
    setup: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def method(self, name: str, label: str, unit: str, values: Sequence[float], **extra: Any) -> None:
        self.methods[name] = {"label": label, "unit": unit, **summary(values), **extra}

    def ratio(
        self, label: str, values: Sequence[float], goal: float, *, at_most: bool = False, unit: str = "x"
    ) -> None:
        """A goal on values per repeat (a ratio unless `unit` says otherwise): met when the median is at least
        `goal` (at most, with `at_most`)."""
        stats = summary(values)
        met = stats["median"] <= goal if at_most else stats["median"] >= goal
        goal_text = f"{'<=' if at_most else '>='} {goal:g}" + ("" if unit == "x" else f" {unit}")
        self.ratios.append({"label": label, **stats, "unit": unit, "goal": goal_text, "met": met})

    def reference(
        self, label: str, numerators: Sequence[float], denominators: Sequence[float], *, why: str = ""
    ) -> None:
        """A ratio without a goal, per repeat, as a note: `label (reference, no goal[: why]): r1, r2, ...`."""
        ratios = ", ".join(f"{ratio:.2f}" for ratio in per_repeat(numerators, denominators))
        self.notes.append(f"{label} (reference, no goal{': ' + why if why else ''}): {ratios}")

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "title": self.title,
            "mode": self.mode,
            "setup": self.setup,
            "methods": self.methods,
            "ratios": self.ratios,
            "checks": self.checks,
            "notes": self.notes,
        }


# --- databases ---------------------------------------------------------------------------------------


def _admin() -> psycopg.Connection:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10)


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def throwaway_database(label: str, *, migrate: bool = True) -> Iterator[str]:
    """A new PostgreSQL database `pp_bench_<label>_<pid>_<random>` (migrated to head), dropped afterwards."""
    name = f"pp_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = database_url(name)
    try:
        if migrate:
            engine = create_db_engine(url)
            try:
                upgrade(engine)
            finally:
                engine.dispose()
        yield url
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The floors load into one table shaped as `properties` reads: the content columns of `property_records` (same types,
# compression, primary key) and the lineage columns of the view, in one row. That is the table a plain loader
# would have, and what the floors name ("a table identical to `properties`"). Kept in the same database
# as the pipeline's tables, so both pay the same server.
WIDE_TABLE_PG = (
    "CREATE TABLE {table} (LIKE property_records INCLUDING ALL, source_file_id bigint NOT NULL, "
    "campaign_id varchar(64) NOT NULL, captured_at timestamptz NOT NULL, first_seen_at timestamptz NOT NULL, "
    "last_seen_at timestamptz NOT NULL)"
)
WIDE_TABLE = "bench_properties"


def create_wide_table(url: str, table: str = WIDE_TABLE) -> None:
    """Create the floors' one-table `properties` (see WIDE_TABLE_PG) in a migrated database, empty."""
    engine = create_db_engine(url)
    try:
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(text(WIDE_TABLE_PG.format(table=table)))
            return
        from sqlalchemy import Column, MetaData, Table

        from property_pipeline.db.schema import properties, property_records

        def copied(column: Column[Any]) -> Column[Any]:
            return Column(column.name, column.type, primary_key=column.primary_key, nullable=column.nullable)

        lineage = [copied(column) for column in properties.c if column.name not in property_records.c]
        Table(table, MetaData(), *(copied(column) for column in property_records.c), *lineage).create(engine)
    finally:
        engine.dispose()


def server_facts() -> dict[str, Any]:
    with _admin() as admin:
        version = admin.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings = dict(
            admin.execute(
                # current_setting: the value as people write it ('128MB'); `setting || unit` read '16384' pages of
                # '8kB' as '163848kB'.
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                "('shared_buffers', 'synchronous_commit', 'fsync', 'max_wal_size', 'default_toast_compression', "
                "'wal_level', 'full_page_writes', 'autovacuum')"
            ).fetchall()
        )
    return {"postgresql": version, "settings": settings}


def checkpoint(url: str) -> None:
    """Flush dirty buffers before a measurement, so no method pays for the previous one's checkpoint."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


# --- folders and child processes ---------------------------------------------------------------------


@contextmanager
def scratch_folder(label: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"pp_bench_{label}_"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class ChildRun:
    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    peak_rss_mb: float  # the largest peak resident set size of the child or any process it waited for (wait4)
    # Sampled (only with sample_memory=True) every 50 ms over the child and all its descendants: the peak of
    # their summed proportional set size (shared pages split between the processes sharing them, so the
    # sum is the memory the whole command holds) and of their summed RSS (shared pages counted per process).
    peak_tree_pss_mb: float = 0.0
    peak_tree_rss_mb: float = 0.0
    peak_processes: int = 0
    # CPU time (user + system) of the child and every process it waited for (its workers), from wait4: the
    # interpreter's start included.
    cpu_seconds: float = 0.0

    def json(self) -> Any:
        return json.loads(self.stdout)


def _process_stats() -> Iterator[tuple[int, bytes, list[bytes]]]:
    """Every process /proc shows: its pid, its name, and the fields of its `stat` after the name (state first, so
    the parent id is fields[1], utime and stime fields[11] and fields[12])."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                head, tail = stat.read().rsplit(b")", 1)
        except (OSError, ValueError):  # gone meanwhile
            continue
        yield int(entry), head.split(b"(", 1)[-1], tail.split()


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for process, _name, fields in _process_stats():
        children.setdefault(int(fields[1]), []).append(process)
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        tree.extend(frontier)
    return tree


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB, from smaps_rollup; zeros once it has gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class _TreeMemory(threading.Thread):
    """Samples a process tree's summed PSS and RSS until stopped; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss_kb = self.peak_rss_kb = self.peak_processes = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            tree = _descendants(self.pid)
            sizes = [_memory_kb(pid) for pid in tree]
            self.peak_pss_kb = max(self.peak_pss_kb, sum(pss for pss, _rss in sizes))
            self.peak_rss_kb = max(self.peak_rss_kb, sum(rss for _pss, rss in sizes))
            self.peak_processes = max(self.peak_processes, sum(1 for _pss, rss in sizes if rss))


def run_child(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    sample_memory: bool = False,
) -> ChildRun:
    """Run a process to its end; its wall time and peak RSS (from wait4, exact), and with `sample_memory`
    the sampled peaks of its whole process tree."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(args), stdout=out, stderr=err, env=env, cwd=cwd)
        sampler = _TreeMemory(process.pid) if sample_memory else None
        if sampler is not None:
            sampler.start()
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if sampler is not None:
            sampler.stopped.set()
            sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            wall,
            usage.ru_maxrss / 1024,  # kilobytes on Linux
            peak_tree_pss_mb=sampler.peak_pss_kb / 1024 if sampler else 0.0,
            peak_tree_rss_mb=sampler.peak_rss_kb / 1024 if sampler else 0.0,
            peak_processes=sampler.peak_processes if sampler else 0,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
        )


class ServerCpu(threading.Thread):
    """CPU time (user + system) spent by the local PostgreSQL server's processes while it runs, as a context manager.

    Samples /proc every `interval` for every process named `postgres` (backends, the WAL writer, the
    checkpointer) and sums what each used since it was first seen or started. A backend that exits loses at
    most its last interval; a server on another machine (or processes /proc does not show) reads as zero.
    """

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._start = dict(self._ticks())
        self._latest: dict[int, int] = {}
        self._stopped = threading.Event()

    @staticmethod
    def _ticks() -> Iterator[tuple[int, int]]:
        for pid, name, fields in _process_stats():
            if name == b"postgres":
                yield pid, int(fields[11]) + int(fields[12])  # utime + stime

    def run(self) -> None:
        while True:
            self._latest.update(self._ticks())
            if self._stopped.wait(self.interval):
                self._latest.update(self._ticks())
                return

    def __enter__(self) -> ServerCpu:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopped.set()
        self.join()

    @property
    def seconds(self) -> float:
        ticks = sum(latest - self._start.get(pid, 0) for pid, latest in self._latest.items())
        return ticks / self._ticks_per_second


def python_child(
    module: str, *arguments: str, env: dict[str, str] | None = None, sample_memory: bool = False
) -> ChildRun:
    """`python -m <module> <arguments>` in the repository, with this interpreter."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return run_child([sys.executable, "-m", module, *arguments], env=full_env, cwd=REPO, sample_memory=sample_memory)


def cli_env(db_url: str, logs_dir: Path) -> dict[str, str]:
    return {"PROPERTY_PIPELINE_DB_URL": db_url, "PROPERTY_PIPELINE_LOGS_DIR": str(logs_dir)}


def require_ok(run: ChildRun, what: str) -> None:
    if run.returncode != 0:
        raise RuntimeError(f"{what} exited {run.returncode}:\n{run.stderr[-4000:]}")


def machine_facts() -> dict[str, Any]:
    memory_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "load_average_at_start": os.getloadavg(),
    }
