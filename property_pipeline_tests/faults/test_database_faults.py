"""A PostgreSQL server that restarts, refuses connections or cancels a statement in the middle of processing.

Every test runs against a throwaway cluster (initdb into a temporary folder, its own port), never
the shared server. The processor fails cleanly (the claim given back or left to its lease, no
traceback from the CLI) and nothing is half-written; a rerun completes every file exactly once.
"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.schema import batch_file_status, properties, utcnow
from property_pipeline.processing import processor as processing_engine
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import write_pages
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import cli_command, cli_env, poll, run_cli
from property_pipeline_tests.faults.invariants import data_violations, statuses
from property_pipeline_tests.faults.pg_cluster import ThrowawayCluster

pytestmark = pytest.mark.faults

FILES, PER_FILE = 12, 20


@pytest.fixture
def db(cluster_db_url: str) -> Engine:
    engine = create_db_engine(cluster_db_url)
    yield engine  # type: ignore[misc]
    engine.dispose()


def _expire_leases(engine: Engine) -> None:
    """Time passes: every PROCESSING lease runs out (a crashed processor's claim becomes requeueable)."""
    with engine.begin() as conn:
        conn.execute(
            batch_file_status.update()
            .where(batch_file_status.c.status == "PROCESSING")
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )


def _assert_all_completed_exactly_once(engine: Engine, files: int, per_file: int) -> None:
    assert set(statuses(engine).values()) == {"COMPLETED"}
    assert len(statuses(engine)) == files
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(properties)).scalar_one() == files * per_file
    assert data_violations(engine) == []


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_mid_transaction_rolls_back_the_file_and_a_rerun_completes(
    cluster: ThrowawayCluster, db: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    write_pages(root, files=FILES, per_file=PER_FILE)
    register_unregistered(db, root, "test")
    real_load = processing_engine.load_records
    calls: list[int] = []

    def restart_then_load(conn, payload, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(payload.file_id)
        if len(calls) == 3:  # inside the data transaction of the third file
            cluster.restart(mode)
        return real_load(conn, payload, *args, **kwargs)

    monkeypatch.setattr(processing_engine, "load_records", restart_then_load)
    with pytest.raises(OperationalError):
        PayloadProcessor(db, root).run()
    victim = calls[2]
    states = statuses(db)
    assert [state for _, state in sorted(states.items())][:2] == ["COMPLETED", "COMPLETED"]
    # The transaction died with the server: the file was given back (or waits for its lease), no data.
    assert states[victim] in {"PENDING", "PROCESSING"}
    assert data_violations(db) == []

    monkeypatch.setattr(processing_engine, "load_records", real_load)
    _expire_leases(db)
    report = PayloadProcessor(db, root).run()
    assert report.failed == 0
    _assert_all_completed_exactly_once(db, FILES, PER_FILE)
    report_figure(
        f"db_restart_mid_transaction_{mode}", files=FILES, victim_state=states[victim], violations=0, rerun_ok=True
    )


def test_processor_cli_survives_or_exits_cleanly_when_the_server_restarts_under_it(
    cluster: ThrowawayCluster, cluster_db_url: str, db: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    files, per_file = 60, 200
    write_pages(root, files=files, per_file=per_file)
    register_unregistered(db, root, "test")
    env = cli_env(cluster_db_url, root)
    processor = subprocess.Popen(
        cli_command("process", "--json"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll(lambda: list(statuses(db).values()).count("COMPLETED") >= 3, deadline_seconds=120, what="3 files done")
        cluster.restart("fast")
        _stdout, stderr = processor.communicate(timeout=300)
    finally:
        if processor.poll() is None:
            processor.kill()
            processor.wait()
    # Either the pool reconnected (pre-ping) and the run finished, or it stopped with the CLI's clear message.
    assert processor.returncode in {0, 1}, stderr
    assert "Traceback" not in stderr
    if processor.returncode == 1:
        assert "cannot use the database at" in stderr and "Check PROPERTY_PIPELINE_DB_URL" in stderr
    assert data_violations(db) == []
    done_before_rerun = list(statuses(db).values()).count("COMPLETED")

    _expire_leases(db)
    rerun = run_cli(env, "process", "--json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    _assert_all_completed_exactly_once(db, files, per_file)
    report_figure(
        "db_restart_under_cli_processor",
        files=files,
        first_exit=processor.returncode,
        completed_before_rerun=done_before_rerun,
        violations=0,
    )


def test_refused_connections_fail_cleanly_without_the_password_and_a_rerun_completes(
    cluster: ThrowawayCluster, cluster_db_url: str, db: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pages(root, files=FILES, per_file=PER_FILE)
    register_unregistered(db, root, "test")
    real_load = processing_engine.load_records
    calls: list[int] = []

    def stop_then_load(conn, payload, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(payload.file_id)
        if len(calls) == 4:
            cluster.stop("fast")
        return real_load(conn, payload, *args, **kwargs)

    monkeypatch.setattr(processing_engine, "load_records", stop_then_load)
    with pytest.raises(OperationalError):
        PayloadProcessor(db, root).run()
    monkeypatch.setattr(processing_engine, "load_records", real_load)

    # While the server is down, the CLI says what is wrong in one line, never with the password.
    password = "db-pass-Z9q-never-print"
    url_with_password = make_url(cluster_db_url).set(password=password).render_as_string(hide_password=False)
    env = cli_env(url_with_password, root)
    refused = run_cli(env, "process")
    assert refused.returncode == 1
    assert "cannot use the database at" in refused.stderr and "Traceback" not in refused.stderr
    assert "refused" in refused.stderr.lower()
    assert password not in refused.stdout + refused.stderr

    cluster.start()
    states = statuses(db)
    assert states[calls[3]] == "PROCESSING", "the claim could not be given back while the server was down"
    assert data_violations(db) == []
    _expire_leases(db)
    rerun = run_cli(env, "process", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert password not in rerun.stdout + rerun.stderr
    _assert_all_completed_exactly_once(db, FILES, PER_FILE)
    report_figure("db_refused_connections", files=FILES, violations=0, password_leaks=0, rerun_ok=True)


def test_statement_cancelled_mid_load_gives_the_claim_back_and_exits_cleanly(
    cluster: ThrowawayCluster, cluster_db_url: str, db: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    """An administrator (or a timeout) cancels the processor's INSERT: the raw driver error must not escape."""
    write_pages(root, files=3, per_file=PER_FILE)
    register_unregistered(db, root, "test")
    database = make_url(cluster_db_url).database
    blocker = create_engine(cluster_db_url)
    watcher = create_engine(cluster_db_url, isolation_level="AUTOCOMMIT")  # a fresh activity snapshot per poll
    holder = blocker.connect()
    transaction = holder.begin()
    holder.execute(text("LOCK TABLE properties IN SHARE MODE"))  # readers pass, the processor's INSERT waits
    # One worker: a second one would wait on the same lock, which this test holds until the command exits.
    processor = subprocess.Popen(
        cli_command("process", "--workers", "1"),
        env=cli_env(cluster_db_url, root),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with watcher.connect() as admin:
            waiting = poll(
                lambda: admin.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock' "
                        "AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                ).scalar(),
                deadline_seconds=60,
                what="the processor to wait on the properties lock",
            )
            admin.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": waiting})
        _stdout, stderr = processor.communicate(timeout=120)
    finally:
        transaction.rollback()
        holder.close()
        blocker.dispose()
        watcher.dispose()
        if processor.poll() is None:
            processor.kill()
            processor.wait()
    assert processor.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "canceling statement" in stderr and "cannot use the database at" in stderr
    assert statuses(db)[1] == "PENDING", "the cancelled file was given back at once, not left to its lease"
    assert data_violations(db) == []
    rerun = run_cli(cli_env(cluster_db_url, root), "process")
    assert rerun.returncode == 0, rerun.stderr
    _assert_all_completed_exactly_once(db, 3, PER_FILE)
    report_figure("db_statement_cancelled", files=3, violations=0, claim_released=True)


def test_server_down_before_the_run_starts_is_one_clear_line(
    cluster: ThrowawayCluster, cluster_db_url: str, root: PayloadRoot
) -> None:
    cluster.stop("fast")
    try:
        for command in (("process",), ("register",), ("status",)):
            result = run_cli(cli_env(cluster_db_url, root), *command)
            assert result.returncode == 1, (command, result.stderr)
            assert "Traceback" not in result.stderr
            assert "cannot use the database at" in result.stderr
    finally:
        cluster.start()
