"""Reading the next file ahead (SQLite) never changes what is loaded: it is a guess the claim confirms or drops."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from property_pipeline.db import status
from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.schema import batch_file_status, quarantined_records
from property_pipeline.processing import processor as processor_module
from property_pipeline.processing.processor import Outcome, PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.conftest import TABLES
from property_pipeline_tests.factories import make_record, write_page, write_pages


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'pipeline.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _used_read_ahead(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file ids whose load used the page read ahead (recorded as the processor takes them)."""
    used: list[int] = []
    original = PayloadProcessor.process_claimed

    def spy(self, payload, body=None, **options):  # type: ignore[no-untyped-def]
        if options.get("read_ahead") is not None and options["read_ahead"].file_id == payload.file_id:
            used.append(payload.file_id)
        return original(self, payload, body, **options)

    monkeypatch.setattr(PayloadProcessor, "process_claimed", spy)
    return used


def test_each_file_after_the_first_is_read_while_its_predecessor_commits(
    sqlite_engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pages(root, files=5, per_file=10)
    register_unregistered(sqlite_engine, root, "test")
    used = _used_read_ahead(monkeypatch)
    report = PayloadProcessor(sqlite_engine, root).run()
    assert report.completed == 5 and report.records_loaded == 50
    assert used == [2, 3, 4, 5]


def test_a_file_changed_after_it_was_read_ahead_is_caught_by_its_checksum(
    sqlite_engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes read ahead are checked against the registered SHA-256 like bytes read at the claim."""
    stored = write_pages(root, files=2, per_file=10)
    register_unregistered(sqlite_engine, root, "test")
    second = stored[1].path
    os.chmod(second, stat.S_IRUSR | stat.S_IWUSR)
    second.write_bytes(second.read_bytes().replace(b"Austin", b"Boston"))  # same size, other bytes
    report = PayloadProcessor(sqlite_engine, root).run()
    outcomes = {outcome.file_id: outcome for outcome in report.outcomes}
    assert outcomes[1].status == Outcome.COMPLETED
    assert outcomes[2].status == Outcome.FAILED
    assert "checksum mismatch" in (outcomes[2].error or "")


def test_a_guess_another_processor_claimed_first_is_dropped(
    sqlite_engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While file 1 commits, the next file is read ahead; another processor claims that one first: this
    processor then claims file 3 and reads it itself, and each file is loaded exactly once."""
    write_pages(root, files=3, per_file=10)
    register_unregistered(sqlite_engine, root, "test")
    original_read = processor_module._ReadAhead._read

    def read_then_lose_the_race(self):  # type: ignore[no-untyped-def]
        original_read(self)
        if self._result is not None and self._result.file_id == 2:
            other = PayloadProcessor(sqlite_engine, root)
            claimed = status.claim_next_pending(sqlite_engine, other.worker, 300, file_ids=[2])
            assert claimed is not None
            assert other.process_claimed(claimed).status == Outcome.COMPLETED

    monkeypatch.setattr(processor_module._ReadAhead, "_read", read_then_lose_the_race)
    used = _used_read_ahead(monkeypatch)
    report = PayloadProcessor(sqlite_engine, root).run()
    assert sorted(outcome.file_id for outcome in report.outcomes) == [1, 3]
    assert 2 not in used
    with sqlite_engine.connect() as conn:
        rows = conn.execute(select(batch_file_status.c.status, batch_file_status.c.attempts)).all()
    assert rows == [("COMPLETED", 1)] * 3


def test_records_validated_ahead_are_quarantined_as_when_read_at_the_claim(
    sqlite_engine: Engine, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pages(root, files=1, per_file=5)
    records = [make_record("good-1"), make_record("bad-1", yearBuilt="old"), make_record("good-1"), {"no": "id"}]
    write_page(root, records, batch=2)
    register_unregistered(sqlite_engine, root, "test")
    used = _used_read_ahead(monkeypatch)
    report = PayloadProcessor(sqlite_engine, root).run()
    assert used == [2]
    second = next(outcome for outcome in report.outcomes if outcome.file_id == 2)
    assert (second.status, second.success_count, second.error_count) == (Outcome.COMPLETED, 1, 3)
    with sqlite_engine.connect() as conn:
        indexes = conn.execute(
            select(quarantined_records.c.record_index).where(quarantined_records.c.file_id == 2)
        ).scalars()
        assert sorted(indexes) == [1, 2, 3]


def test_postgresql_reads_no_file_ahead(postgres_url: str, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent processors on PostgreSQL would guess the same next file: each reads its own claim."""
    engine = create_db_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    try:
        write_pages(root, files=3, per_file=5)
        register_unregistered(engine, root, "test")
        used = _used_read_ahead(monkeypatch)
        assert PayloadProcessor(engine, root).run().completed == 3
        assert used == []
    finally:
        engine.dispose()
