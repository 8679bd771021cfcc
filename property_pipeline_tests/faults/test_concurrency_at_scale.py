"""8 processor processes against PostgreSQL over 2,000 files while a registration scan registers new ones.

Every file is processed exactly once (attempts == 1, link rows == success_count), no process
fails or deadlocks (exit codes, stderr and `pg_stat_database.deadlocks`), and the throughput
and lock waits are reported. Besides its own four properties, each file carries one of 40 "hot"
properties that many files share, so processors upsert the same rows at the same time; the
newest file must win each of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.queries import file_states, row_count_mismatches
from property_pipeline.db.schema import batch_file_status, file_status_events, properties
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import write_payload
from property_pipeline_tests.factories import BASE_TIME, make_page, make_record
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import REPO
from property_pipeline_tests.faults.invariants import data_violations, marker_violations

pytestmark = [pytest.mark.faults, pytest.mark.slow]

PROCESSORS = 8
FILES = 2000
PRE_REGISTERED = 1000  # the rest is written while the processors and the registration scan run
PER_FILE = 5  # four properties of its own and one hot property shared with other files
HOT = 40

# Processes until the registration scan has finished and a run then finds nothing left.
PROCESSOR = textwrap.dedent(
    """
    import json, os, sys, time
    from property_pipeline.db.engine import create_db_engine
    from property_pipeline.processing.processor import PayloadProcessor
    from property_pipeline.store.folder import PayloadRoot

    db_url, logs, registration_done = sys.argv[1:4]
    processor = PayloadProcessor(create_db_engine(db_url), PayloadRoot(logs), lease_seconds=600)
    outcomes = {"COMPLETED": [], "FAILED": [], "LOST": []}
    while True:
        finished = os.path.exists(registration_done)  # looked at before the run: an empty run after it ends the loop
        report = processor.run()
        for outcome in report.outcomes:
            outcomes[outcome.status].append(outcome.file_id)
        if not report.outcomes:
            if finished:
                break
            time.sleep(0.02)
    print(json.dumps(outcomes))
    """
)

# Registers what appears on disk until the writer is done and one more scan finds nothing new.
REGISTRAR = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from property_pipeline.db.engine import create_db_engine
    from property_pipeline.registration import register_unregistered
    from property_pipeline.store.folder import PayloadRoot

    db_url, logs, writer_done, registration_done = sys.argv[1:5]
    engine, root = create_db_engine(db_url), PayloadRoot(logs)
    registered, skipped, scans = 0, [], 0
    while True:
        finished = os.path.exists(writer_done)
        report = register_unregistered(engine, root, "scale-registrar")
        scans += 1
        registered += len(report.registered)
        skipped += report.skipped
        if finished and not report.registered:
            break
        time.sleep(0.05)
    Path(registration_done).touch()
    print(json.dumps({"registered": registered, "skipped": skipped, "scans": scans}))
    """
)


def _page(batch: int) -> bytes:
    own = [make_record(f"s{batch}-{i}") for i in range(PER_FILE - 1)]
    return make_page([*own, make_record(f"hot-{batch % HOT}", estimatedValue=batch)], result_index=batch)


def _write(root: PayloadRoot, batches: range) -> None:
    for batch in batches:
        write_payload(root, "scale", batch, _page(batch), BASE_TIME + timedelta(seconds=batch))


def _deadlocks(admin: Engine, database: str) -> int:
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            conn.execute(text("SELECT deadlocks FROM pg_stat_database WHERE datname = :db"), {"db": database}).scalar()
            or 0
        )


@pytest.mark.timeout(480)
def test_eight_processors_and_a_registration_scan_process_every_file_exactly_once(
    pg_url: str, root: PayloadRoot, tmp_path: Path
) -> None:
    engine = create_db_engine(pg_url)
    database = make_url(pg_url).database or ""
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    writer_done, registration_done = tmp_path / "writer.done", tmp_path / "registration.done"
    _write(root, range(1, PRE_REGISTERED + 1))
    register_unregistered(engine, root, "test")
    deadlocks_before = _deadlocks(admin, database)

    started = time.monotonic()
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    logs = str(root.logs_dir)
    processors = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESSOR, pg_url, logs, str(registration_done)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSORS)
    ]
    registrar = subprocess.Popen(
        [sys.executable, "-c", REGISTRAR, pg_url, logs, str(writer_done), str(registration_done)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock_wait_samples = samples = 0
    stop_sampling = threading.Event()

    def sample_lock_waits() -> None:
        nonlocal lock_wait_samples, samples
        with admin.connect() as conn:
            while not stop_sampling.wait(0.1):
                waiting = conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'"),
                    {"db": database},
                ).scalar_one()
                samples += 1
                lock_wait_samples += int(waiting > 0)

    sampler = threading.Thread(target=sample_lock_waits, daemon=True)
    sampler.start()
    try:
        _write(root, range(PRE_REGISTERED + 1, FILES + 1))  # new files land while everything runs
        writer_done.touch()
        registrar_out, registrar_err = registrar.communicate(timeout=420)
        results = [process.communicate(timeout=420) for process in processors]
    finally:
        stop_sampling.set()
        sampler.join(timeout=10)
        for process in [*processors, registrar]:
            if process.poll() is None:
                process.kill()
                process.wait()
    seconds = time.monotonic() - started

    assert registrar.returncode == 0, registrar_err
    registration = json.loads(registrar_out)
    assert registration["registered"] == FILES - PRE_REGISTERED and registration["skipped"] == []
    for process, (_out, err) in zip(processors, results, strict=True):
        assert process.returncode == 0, err
        for symptom in ("Traceback", "ERROR", "deadlock", "lease expired", "no longer claimed"):
            assert symptom not in err, err[-3000:]
    outcomes = [json.loads(out) for out, _err in results]
    completed = [file_id for outcome in outcomes for file_id in outcome["COMPLETED"]]
    assert sorted(completed) == list(range(1, FILES + 1)), "every file completed by exactly one processor"
    assert all(not outcome["FAILED"] and not outcome["LOST"] for outcome in outcomes)
    busy = sum(1 for outcome in outcomes if outcome["COMPLETED"])

    with engine.connect() as conn:
        attempts = dict(
            conn.execute(
                select(batch_file_status.c.attempts, func.count()).group_by(batch_file_status.c.attempts)
            ).all()
        )
        rows = conn.execute(select(func.count()).select_from(properties)).scalar_one()
        file_of_batch = dict(conn.execute(select(batch_file_status.c.batch_number, batch_file_status.c.file_id)).all())
        hot_sources = dict(
            conn.execute(
                select(properties.c.property_id, properties.c.source_file_id).where(
                    properties.c.property_id.like("hot-%")
                )
            ).all()
        )
        registrations = conn.execute(
            select(func.count()).select_from(file_status_events).where(file_status_events.c.from_status.is_(None))
        ).scalar_one()
    assert attempts == {1: FILES}, "no file was claimed twice"
    assert rows == FILES * (PER_FILE - 1) + HOT
    newest = {f"hot-{k}": file_of_batch[max(b for b in range(1, FILES + 1) if b % HOT == k)] for k in range(HOT)}
    assert hot_sources == newest, "newest wins on every shared property"
    assert registrations == FILES, "every file registered once"
    assert row_count_mismatches(engine) == (FILES * PER_FILE, FILES * PER_FILE, [])
    assert data_violations(engine) == []
    deadlocks = _deadlocks(admin, database) - deadlocks_before  # the processes flushed their statistics at exit
    assert deadlocks == 0
    mirror = marker_violations(root, file_states(engine))
    engine.dispose()
    admin.dispose()
    report_figure(
        "concurrency_at_scale_postgresql",
        processors=PROCESSORS,
        busy_processors=busy,
        files=FILES,
        registered_during_run=registration["registered"],
        registration_scans=registration["scans"],
        seconds=round(seconds, 1),
        files_per_second=round(FILES / seconds, 1),
        records_per_second=round(FILES * PER_FILE / seconds, 1),
        lock_wait_samples=f"{lock_wait_samples}/{samples}",
        deadlocks=deadlocks,
        errors=0,
        marker_mismatches=len(mirror),
        violations=0,
    )
    assert mirror == [], mirror[:5]
