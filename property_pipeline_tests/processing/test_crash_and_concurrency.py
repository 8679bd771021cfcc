"""Crashes and concurrent processors: nothing lost, nothing loaded twice (docs/design.md, rules 2 and 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from property_pipeline.db.queries import row_count_mismatches
from property_pipeline.db.schema import batch_file_status, file_properties, properties, utcnow
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import write_pages

# A processor that stops dead (SIGKILL to itself) inside the data transaction of its second
# file, after the upsert and before COMPLETED: the worst moment for exactly-once.
KILLED_PROCESSOR = textwrap.dedent(
    """
    import os, signal, sys
    from property_pipeline.db.engine import create_db_engine
    from property_pipeline.processing import processor as processing_engine
    from property_pipeline.store.folder import PayloadRoot

    loaded = []
    real_mark_completed = processing_engine.status.mark_completed

    def mark_completed_then_die(conn, file_id, *args, **kwargs):
        loaded.append(file_id)
        if len(loaded) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_mark_completed(conn, file_id, *args, **kwargs)

    processing_engine.status.mark_completed = mark_completed_then_die
    engine = create_db_engine(sys.argv[1])
    processing_engine.PayloadProcessor(engine, PayloadRoot(sys.argv[2]), lease_seconds=60).run()
    """
)

PLAIN_PROCESSOR = textwrap.dedent(
    """
    import json, sys
    from property_pipeline.db.engine import create_db_engine
    from property_pipeline.processing.processor import PayloadProcessor
    from property_pipeline.store.folder import PayloadRoot

    report = PayloadProcessor(create_db_engine(sys.argv[1]), PayloadRoot(sys.argv[2])).run()
    print(json.dumps([o.file_id for o in report.outcomes if o.status == "COMPLETED"]))
    """
)


def _expire_all_leases(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            batch_file_status.update()
            .where(batch_file_status.c.status == "PROCESSING")
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )


def _assert_exactly_once(engine: Engine, files: int, per_file: int) -> None:
    with engine.connect() as conn:
        statuses = conn.execute(
            select(batch_file_status.c.status, func.count()).group_by(batch_file_status.c.status)
        ).all()
        assert dict(statuses) == {"COMPLETED": files}
        assert conn.execute(select(func.count()).select_from(properties)).scalar_one() == files * per_file
        assert conn.execute(select(func.count()).select_from(file_properties)).scalar_one() == files * per_file
    assert row_count_mismatches(engine) == (files * per_file, files * per_file, [])


def test_processor_killed_mid_transaction_loses_nothing_and_duplicates_nothing(
    engine: Engine, db_url: str, root: PayloadRoot
) -> None:
    write_pages(root, files=4, per_file=30)
    register_unregistered(engine, root, "test")
    killed = subprocess.run([sys.executable, "-c", KILLED_PROCESSOR, db_url, str(root.logs_dir)], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    with engine.connect() as conn:
        states = dict(conn.execute(select(batch_file_status.c.file_id, batch_file_status.c.status)).all())
        # File 1 committed; file 2 died inside its transaction: rolled back, still PROCESSING (claimed).
        assert states == {1: "COMPLETED", 2: "PROCESSING", 3: "PENDING", 4: "PENDING"}
        assert set(conn.execute(select(properties.c.source_file_id)).scalars()) == {1}
    _expire_all_leases(engine)  # the dead processor's lease runs out
    report = PayloadProcessor(engine, root).run()
    assert report.requeued == [2]
    _assert_exactly_once(engine, files=4, per_file=30)


def _run_processors(db_url: str, root: PayloadRoot, count: int) -> list[list[int]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PLAIN_PROCESSOR, db_url, str(root.logs_dir)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        results.append(__import__("json").loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_four_processors_at_once_process_each_file_exactly_once(engine: Engine, db_url: str, root: PayloadRoot) -> None:
    write_pages(root, files=200, per_file=5)
    register_unregistered(engine, root, "test")
    started = time.monotonic()
    results = _run_processors(db_url, root, 4)
    claimed = [file_id for result in results for file_id in result]
    assert sorted(claimed) == list(range(1, 201)), "every file completed by exactly one processor"
    assert sum(1 for result in results if result) >= 2 or engine.dialect.name == "sqlite"
    _assert_exactly_once(engine, files=200, per_file=5)
    with engine.connect() as conn:
        attempts = set(conn.execute(select(batch_file_status.c.attempts)).scalars())
    assert attempts == {1}, "no file was claimed twice"
    print(f"4 processors, 200 files, {time.monotonic() - started:.1f}s on {engine.dialect.name}")


def test_processing_copy_is_removed_even_when_the_file_fails(engine: Engine, root: PayloadRoot) -> None:
    bad = root.payloads / "2026-11" / "camp_batch1_20261101T000000Z.json"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not json")
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run()
    assert list(Path(root.processing).iterdir()) == []
    assert os.path.exists(bad)
