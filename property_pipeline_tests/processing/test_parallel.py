"""Worker processes in one `process` command: every file once, one merged report, a dead worker reported.

Real forked processes against the real databases: the claims are what keep the files apart.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from property_pipeline.cli import main
from property_pipeline.db.queries import row_count_mismatches
from property_pipeline.db.schema import batch_file_status, file_status_events
from property_pipeline.processing import processor as processing_engine
from property_pipeline.processing.parallel import WorkerFailed, default_workers, process_backlog
from property_pipeline.registration import register_unregistered
from property_pipeline.settings import Settings, SettingsError
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import write_pages


def _completions_by_actor(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(file_status_events.c.actor, func.count())
            .where(file_status_events.c.to_status == "COMPLETED")
            .group_by(file_status_events.c.actor)
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def _attempts(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(batch_file_status.c.attempts)).scalars())


def test_workers_share_the_backlog_and_each_file_is_processed_once(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=24, per_file=30)
    register_unregistered(engine, root, "test")
    seen: list[int] = []
    report = process_backlog(engine, root, workers=3, on_file=lambda outcome: seen.append(outcome.file_id))
    assert (report.workers, report.completed, report.failed, report.records_loaded) == (3, 24, 0, 720)
    assert sorted(seen) == sorted(outcome.file_id for outcome in report.outcomes) and len(set(seen)) == 24
    assert _attempts(engine) == {1}
    completions = _completions_by_actor(engine)
    assert sum(completions.values()) == 24  # one COMPLETED transition per file, whoever did it
    assert all(actor.count(":") == 2 for actor in completions)  # host:pid:suffix of a worker, not the parent
    assert row_count_mismatches(engine) == (720, 720, [])


def test_a_limit_runs_in_this_process(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=5, per_file=3)
    register_unregistered(engine, root, "test")
    report = process_backlog(engine, root, workers=4, limit=2)
    assert (report.workers, report.completed) == (1, 2)
    assert len(_completions_by_actor(engine)) == 1


def test_a_worker_that_dies_is_reported_and_its_file_waits_for_its_lease(
    engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pages(root, files=6, per_file=3)
    register_unregistered(engine, root, "test")
    real_load = processing_engine.load_records
    parent = os.getpid()

    def load_then_die(conn, payload, page, **options):  # type: ignore[no-untyped-def]
        if os.getpid() != parent and payload.file_id == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-transaction, as a crash or the OOM killer would
        return real_load(conn, payload, page, **options)

    monkeypatch.setattr(processing_engine, "load_records", load_then_die)
    with pytest.raises(WorkerFailed, match=r"exited with status -9 before finishing.*stays PROCESSING"):
        process_backlog(engine, root, workers=2)
    with engine.connect() as conn:
        states = dict(conn.execute(select(batch_file_status.c.file_id, batch_file_status.c.status)).all())
    assert states[3] == "PROCESSING"  # nothing of it committed; its lease brings it back
    # The other worker finished the file it held and claimed no more: the rest waits, untouched.
    assert {state for file_id, state in states.items() if file_id != 3} <= {"COMPLETED", "PENDING"}
    monkeypatch.setattr(processing_engine, "load_records", real_load)
    process_backlog(engine, root, workers=2, lease_seconds=300)
    with engine.connect() as conn:
        states = dict(conn.execute(select(batch_file_status.c.file_id, batch_file_status.c.status)).all())
    assert states == {**{file_id: "COMPLETED" for file_id in states}, 3: "PROCESSING"}  # 3 waits for its lease
    assert row_count_mismatches(engine)[2] == []


def test_a_worker_error_stops_the_command_with_its_message(
    engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pages(root, files=4, per_file=3)
    register_unregistered(engine, root, "test")

    def refuse(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise MemoryError("no memory left for the page")

    monkeypatch.setattr(processing_engine, "read_page", refuse)
    with pytest.raises(WorkerFailed, match="MemoryError: no memory left for the page"):
        process_backlog(engine, root, workers=2)


def test_default_workers_follow_the_database() -> None:
    assert default_workers("sqlite") == 1
    assert 1 <= default_workers("postgresql") <= min(4, os.cpu_count() or 1)


def test_the_process_command_takes_workers_and_reports_them(db_url: str, root: PayloadRoot, engine: Engine) -> None:
    write_pages(root, files=8, per_file=5)
    register_unregistered(engine, root, "test")
    env = {"PROPERTY_PIPELINE_DB_URL": db_url, "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir)}
    result = CliRunner().invoke(main, ["process", "--workers", "2", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["workers"], report["files_completed"], report["records_loaded"]) == (2, 8, 40)
    assert _attempts(engine) == {1}


def test_the_workers_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPERTY_PIPELINE_PROCESS_WORKERS", "3")
    assert Settings.from_env().process_workers == 3
    monkeypatch.setenv("PROPERTY_PIPELINE_PROCESS_WORKERS", "0")  # 0: the default for the database
    assert Settings.from_env().process_workers is None
    monkeypatch.setenv("PROPERTY_PIPELINE_PROCESS_WORKERS", "many")
    with pytest.raises(SettingsError, match="PROPERTY_PIPELINE_PROCESS_WORKERS"):
        Settings.from_env()
