"""SIGKILL of `reprocess` and of `rebuild` at random moments, then a rerun: the same digest as no kill at all.

`reprocess` runs with a test-only rule change (property_pipeline_tests/replay_rules.py) that touches
November's records only, so the expected result is known independently: a fresh database loaded
once from copies of the same files under the new rule. Each kill lands at a random moment: while
files are marked, mid-file, between files, in a worker. Between kills the database must keep its
rules (a file's data exists only while it is COMPLETED or being reprocessed; counts match links).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.schema import batch_file_status, file_status_events, utcnow
from property_pipeline.digest import Digest, compute_digest
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.retention import apply_retention, plan_retention
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests import replay_rules
from property_pipeline_tests.conftest import TABLES
from property_pipeline_tests.factories import make_record, write_page
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import REPO, cli_env
from property_pipeline_tests.faults.invariants import data_violations

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KILLS = 6  # per command and database
SEED = 20261201
FILES_PER_MONTH = 24
RECORDS_PER_FILE = 150
REASON = "validation rule fixed"


def _pages(root: PayloadRoot) -> None:
    """October and November; November's records are touched by the new rule (some rejected, some mapped)."""
    for month in (10, 11):
        for batch in range(1, FILES_PER_MONTH + 1):
            records = []
            for i in range(RECORDS_PER_FILE):
                property_id = f"p-{batch}-{i}" if i % 3 == 0 else f"{month}-{batch}-{i}"  # a third in both months
                flag = {0: "reject", 1: "upper"}.get(i % 7) if month == 11 else None
                extras = {"replayRule": flag} if flag else {}
                records.append(make_record(property_id, bedrooms=month, extras=extras))
            captured = datetime(2026, month, 2, 8, tzinfo=UTC) + timedelta(minutes=batch)
            write_page(root, records, batch=batch, captured_at=captured)


def _load(engine: Engine, root: PayloadRoot) -> None:
    register_unregistered(engine, root, "test")
    assert PayloadProcessor(engine, root).run().failed == 0


def _reference(tmp_path: Path, root: PayloadRoot) -> Digest:
    """A fresh database loaded once, under the new rule, from copies of the same payload files."""
    copy = PayloadRoot(tmp_path / "reference" / "logs")
    copy.ensure_folders()
    shutil.copytree(root.payloads, copy.payloads, dirs_exist_ok=True)
    engine = create_db_engine(f"sqlite:///{tmp_path / 'reference' / 'pipeline.db'}")
    upgrade(engine)
    replay_rules.install()
    try:
        _load(engine, copy)
        return compute_digest(engine)
    finally:
        replay_rules.uninstall()
        engine.dispose()


def _command(*args: str, rule: bool) -> list[str]:
    """`property-pipeline ARGS` in a fresh interpreter, with the new rule installed first when `rule`."""
    program = (replay_rules.RULE_PRELUDE if rule else "") + "from property_pipeline.cli import main\nmain()\n"
    return [sys.executable, "-c", program, *args]


def _kill_at_random(command: list[str], env: dict[str, str], rng: random.Random, window: float) -> bool:
    """Start the command in its own process group and SIGKILL the whole group at a random moment of its first
    `window` seconds; True if it was killed, False if it finished first."""
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        process.wait(timeout=rng.uniform(0.0, window))
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


def _expire_leases(engine: Engine) -> None:
    """A killed processor's claims would be taken again once their lease ends; end them now instead of waiting."""
    with engine.begin() as conn:
        conn.execute(
            batch_file_status.update()
            .where(batch_file_status.c.status == "PROCESSING")
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def _timed_run(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    finished = _run(command, env)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return time.perf_counter() - started


def test_reprocess_killed_at_random_moments_then_rerun_ends_as_an_uninterrupted_one(
    db_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    _pages(root)
    _load(engine, root)
    old_rules = compute_digest(engine)
    expected = _reference(tmp_path, root)
    assert expected.quarantined == FILES_PER_MONTH * len(range(0, RECORDS_PER_FILE, 7))  # the rule does reject
    env = cli_env(db_url, root, PROPERTY_PIPELINE_LEASE_SECONDS="30")
    args = ("reprocess", "--month", "2026-11", "--reason", REASON)
    under_new_rule, under_old_rules = _command(*args, rule=True), _command(*args, rule=False)
    clean_seconds = _timed_run(under_new_rule, env)  # once without a kill: how long the whole command takes
    assert compute_digest(engine) == expected
    rng = random.Random(f"{SEED}-{engine.dialect.name}")
    kills = 0
    for _ in range(KILLS):
        # Back to the old rules (itself a reprocess of the month, checked), then the new rule's reprocess, killed,
        # then rerun. The kill lands within as long as the reprocess just before took: on a machine whose speed
        # varies (other work on it), the window follows it.
        window = _timed_run(under_old_rules, env)
        assert compute_digest(engine) == old_rules
        kills += _kill_at_random(under_new_rule, env, rng, window=window)
        assert data_violations(engine) == []
        _expire_leases(engine)
        finished = _run(under_new_rule, env)
        assert finished.returncode == 0, finished.stderr[-2000:]
        assert compute_digest(engine) == expected and data_violations(engine) == []
    assert kills >= KILLS // 2, "the kills should mostly land before the command finished"
    with engine.connect() as conn:
        reprocess_events = conn.execute(
            select(func.count())
            .select_from(file_status_events)
            .where(file_status_events.c.detail == f"reprocess: {REASON}")
        ).scalar_one()
    assert reprocess_events >= (2 * KILLS + 1) * FILES_PER_MONTH  # every run recorded its transitions
    report_figure(
        f"reprocess SIGKILL then rerun ({engine.dialect.name})",
        kills=kills,
        files=FILES_PER_MONTH,
        uninterrupted_seconds=round(clean_seconds, 2),
        digest_equals_fresh_load_under_new_rule=True,
    )


def _target(engine: Engine, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Engine, str]:
    if engine.dialect.name == "sqlite":
        url = request.getfixturevalue("postgres_url")
        target = create_db_engine(url)
        with target.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        return target, url
    url = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    return create_db_engine(url), url


def test_rebuild_killed_at_random_moments_then_rerun_equals_the_source(
    db_url: str, engine: Engine, root: PayloadRoot, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _pages(root)
    _load(engine, root)
    report = apply_retention(engine, root, plan_retention(engine, root, keep_months=1, today=date(2026, 11, 20)))
    assert report.ok and report.deleted == FILES_PER_MONTH  # October lives in its archive only
    expected = compute_digest(engine)
    env = cli_env(db_url, root)
    scratch = f"sqlite:///{tmp_path / 'scratch.db'}"
    clean_seconds = _timed_run(_command("rebuild", "--into", scratch, rule=False), env)
    target, url = _target(engine, tmp_path, request)
    rebuild = _command("rebuild", "--into", url, rule=False)
    rng = random.Random(f"{SEED}-rebuild-{engine.dialect.name}")
    kills = 0
    try:
        for _ in range(KILLS):
            kills += _kill_at_random(rebuild, env, rng, window=clean_seconds)
            assert data_violations(target) == []
        assert kills >= KILLS // 2, "the kills should mostly land before the command finished"
        finished = _run(rebuild, env)
        assert finished.returncode == 0, finished.stderr[-2000:]
        assert compute_digest(target) == expected and data_violations(target) == []
    finally:
        target.dispose()
    assert compute_digest(engine) == expected  # the source was only read
    report_figure(
        f"rebuild SIGKILL then rerun ({engine.dialect.name} -> {target.dialect.name})",
        kills=kills,
        files=2 * FILES_PER_MONTH,
        files_from_archive=FILES_PER_MONTH,
        digest_equals_source=True,
    )
