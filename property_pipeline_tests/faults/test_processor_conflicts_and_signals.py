"""Processors that share property ids, lose their parent, get signalled or suspended: no run stops or hangs.

- Files that mix ids already loaded with new ones, loaded by 8 processors at once: 0 deadlocks
  (`pg_stat_database.deadlocks`), 0 stopped runs, every file once, newest wins.
- `process --workers 2` killed (SIGKILL) or stopped (SIGTERM, Ctrl-C): its workers stop too, give
  back the file they hold, and the command says so in one line.
- A processor suspended (SIGSTOP) inside a file's transaction past its lease: another `process`
  takes over the rest of the backlog instead of waiting on its locks.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.schema import batch_file_status, properties
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import write_payload
from property_pipeline_tests.factories import BASE_TIME, make_page, make_record
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import REPO, cli_command, cli_env, poll
from property_pipeline_tests.faults.invariants import data_violations

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """PostgreSQL only: these are the concurrency and locking paths SQLite serializes away."""
    engine = create_db_engine(pg_url)
    yield engine
    engine.dispose()


def _deadlocks(db_url: str) -> int:
    url = make_url(db_url)
    admin = create_engine(url.set(database="postgres"))
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return int(
                conn.execute(
                    text("SELECT deadlocks FROM pg_stat_database WHERE datname = :db"), {"db": url.database}
                ).scalar()
                or 0
            )
    finally:
        admin.dispose()


def _overlapping_files(root: PayloadRoot, files: int, pool: int, per_file: int, seed: int) -> dict[str, int]:
    """Files whose ids are drawn from a small pool (heavy overlap); {id: batch of the newest file holding it}."""
    rng = random.Random(seed)
    newest: dict[str, int] = {}
    for batch in range(1, files + 1):
        ids = rng.sample(range(pool), per_file)
        records = [make_record(f"shared-{i}", estimatedValue=batch) for i in ids]
        write_payload(
            root, "overlap", batch, make_page(records, result_index=batch), BASE_TIME + timedelta(seconds=batch)
        )
        for i in ids:
            newest[f"shared-{i}"] = batch
    return newest


def _unfinished(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(batch_file_status.c.status, func.count()).group_by(batch_file_status.c.status)).all()
    return {status: count for status, count in rows if status != "COMPLETED"}


@pytest.mark.timeout(600)
def test_eight_processors_over_heavily_overlapping_ids_never_deadlock(
    pg_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    files, pool, preloaded = 2000, 10_000, 50
    newest = _overlapping_files(root, files, pool=pool, per_file=100, seed=6)
    register_unregistered(engine, root, "test")
    # Some files are loaded first, so that the later ones mix ids already loaded with new ones.
    first = subprocess.run(
        cli_command("process", "--limit", str(preloaded)), env=cli_env(pg_url, root), capture_output=True
    )
    assert first.returncode == 0, first.stderr
    before = _deadlocks(pg_url)
    started = time.monotonic()
    env = cli_env(pg_url, root, PROPERTY_PIPELINE_PROCESS_WORKERS="1")
    processors = [
        subprocess.Popen(
            cli_command("process", "--json"),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [(process.wait(timeout=540), *process.communicate()) for process in processors]
    seconds = time.monotonic() - started
    deadlocks = _deadlocks(pg_url) - before
    assert [code for code, _out, _err in results] == [0] * 8, [err[-400:] for _c, _o, err in results]
    assert deadlocks == 0, f"{deadlocks} deadlocks detected by the server"
    assert _unfinished(engine) == {}
    assert sum(json.loads(out)["files_completed"] for _c, out, _e in results) == files - preloaded
    assert data_violations(engine) == []
    with engine.connect() as conn:
        values = dict(conn.execute(select(properties.c.property_id, properties.c.estimated_value)).all())
    assert values == newest, "the newest file wins every shared property"
    report_figure(
        "overlapping_ids_eight_processors",
        processors=8,
        files=files,
        id_pool=pool,
        deadlocks=deadlocks,
        stopped_runs=0,
        seconds=round(seconds, 1),
    )


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _completed(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(batch_file_status).where(batch_file_status.c.status == "COMPLETED")
        ).scalar_one()


def _processing(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(batch_file_status).where(batch_file_status.c.status == "PROCESSING")
        ).scalar_one()


# A `process` command whose every file load takes a while, so that it can be signalled mid-run.
SLOW_PROCESS = textwrap.dedent(
    """
    import sys, time
    from property_pipeline.processing import loader
    real = loader.load_records

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    loader.load_records = slow
    import property_pipeline.processing.processor as engine
    engine.load_records = slow
    from property_pipeline.cli import main
    sys.argv[0] = "property-pipeline"
    main()
    """
)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
@pytest.mark.timeout(300)
def test_workers_stop_with_their_parent_and_give_back_their_files(
    pg_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path, how: str
) -> None:
    files = 1500  # 75 s of work for two workers at 0.05 s a file: far more than the 20 s they get to stop in
    for batch in range(1, files + 1):
        records = [make_record(f"w{batch}-{i}") for i in range(5)]
        write_payload(root, "workers", batch, make_page(records), BASE_TIME + timedelta(seconds=batch))
    register_unregistered(engine, root, "test")
    env = {**cli_env(pg_url, root), "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", SLOW_PROCESS, "process", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job has
    )
    poll(lambda: _completed(engine) >= 10, deadline_seconds=60, what="the workers to get going")
    workers = _children(parent.pid)
    assert len(workers) >= 2, workers
    if how == "SIGINT":
        os.killpg(parent.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    else:
        parent.send_signal(getattr(signal, how))
    code = parent.wait(timeout=60)
    _out, err = parent.communicate()
    poll(lambda: not any(_alive(pid) for pid in workers), deadline_seconds=20, what="the workers to exit")
    done_at_stop = _completed(engine)
    time.sleep(1.0)
    assert _completed(engine) == done_at_stop, "no worker goes on claiming files after its parent is gone"
    assert _processing(engine) == 0, "every file a worker held was given back or finished"
    if how != "SIGKILL":
        assert code != 0
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if not line.startswith(("COMPLETED", "FAILED"))]
        assert len(lines) == 1 and "interrupted" in lines[0], err
    finish = subprocess.run(cli_command("process"), env=cli_env(pg_url, root), cwd=tmp_path, capture_output=True)
    assert finish.returncode == 0, finish.stderr
    assert _completed(engine) == files and data_violations(engine) == []
    report_figure(f"workers_outlive_no_parent_{how}", workers=len(workers), left_processing=0, violations=0)


# A `process` that suspends itself (as Ctrl-Z does) inside the data transaction of its first file: between
# two statements (the server sees the session idle in its transaction), or in the middle of its COPY.
SUSPENDED_PROCESS = textwrap.dedent(
    """
    import os, signal, sys
    import psycopg
    from property_pipeline.db import status
    where = sys.argv.pop(1)
    # Inside the COPY: at its third row (the COPY of the file's new properties, mid-stream).
    module, name = (status, "mark_completed") if where == "between_statements" else (psycopg.Copy, "write_row")
    real = getattr(module, name)
    calls = [0]

    def suspend_then_go_on(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3 or where == "between_statements":
            os.kill(os.getpid(), signal.SIGSTOP)
        return real(*args, **kwargs)

    setattr(module, name, suspend_then_go_on)
    from property_pipeline.cli import main
    sys.argv[0] = "property-pipeline"
    main()
    """
)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("where", ["between_statements", "inside_copy"])
@pytest.mark.timeout(300)
def test_a_suspended_processor_past_its_lease_does_not_stop_the_others(
    pg_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path, where: str
) -> None:
    # File 1 shares its ids with files 2-5; files 6-40 share nothing with it.
    for batch in range(1, 41):
        ids = [f"hot-{i}" for i in range(5)] if batch <= 5 else [f"cold-{batch}-{i}" for i in range(5)]
        write_payload(
            root,
            "suspend",
            batch,
            make_page([make_record(i, estimatedValue=batch) for i in ids], result_index=batch),
            BASE_TIME + timedelta(seconds=batch),
        )
    register_unregistered(engine, root, "test")
    # A session idle in its transaction for a lease, or in one statement past the statement timeout, is ended.
    timeouts = {"PROPERTY_PIPELINE_LEASE_SECONDS": "3", "PROPERTY_PIPELINE_STATEMENT_TIMEOUT_SECONDS": "3"}
    env = {**cli_env(pg_url, root, **timeouts), "PYTHONPATH": str(REPO)}
    suspended = subprocess.Popen(
        [sys.executable, "-c", SUSPENDED_PROCESS, where, "process", "--workers", "1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll(lambda: _state(suspended.pid) == "T", deadline_seconds=60, what="the processor to suspend itself")
        time.sleep(4)  # past its lease
        started = time.monotonic()
        other = subprocess.run(
            cli_command("process", "--json"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        seconds = time.monotonic() - started
        summary = json.loads(other.stdout)
        assert summary["files_completed"] >= 35, (summary, other.stderr)
        assert "Traceback" not in other.stderr
    finally:
        suspended.kill()
        suspended.wait()
    final = subprocess.run(
        cli_command("process"),
        env=cli_env(pg_url, root, PROPERTY_PIPELINE_LEASE_SECONDS="3"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert final.returncode == 0, final.stderr
    assert _completed(engine) == 40 and data_violations(engine) == []
    report_figure(
        f"suspended_processor_{where}",
        files=40,
        taken_over=summary["files_completed"],
        deferred=summary["files_deferred"],
        seconds=round(seconds, 1),
    )
