"""What every benchmark target shares: sizes per mode, throwaway databases, child processes, medians."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def server_facts() -> dict[str, Any]:
    with _admin() as admin:
        version = admin.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings = dict(
            admin.execute(
                "SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name IN "
                "('shared_buffers', 'synchronous_commit', 'fsync', 'max_wal_size', 'default_toast_compression', "
                "'wal_level', 'full_page_writes')"
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
    peak_rss_mb: float  # the child's own peak resident set size (getrusage of that one child)

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_child(args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> ChildRun:
    """Run a process to its end; its wall time and its own peak RSS (from wait4, exact, no polling)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(args), stdout=out, stderr=err, env=env, cwd=cwd)
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            wall,
            usage.ru_maxrss / 1024,  # kilobytes on Linux
        )


def python_child(module: str, *arguments: str, env: dict[str, str] | None = None) -> ChildRun:
    """`python -m <module> <arguments>` in the repository, with this interpreter."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return run_child([sys.executable, "-m", module, *arguments], env=full_env, cwd=REPO)


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
