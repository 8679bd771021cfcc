"""Leases that hold: a processor renews its claim while it works on a file, however long the file takes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, select

from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.schema import batch_file_status, file_status_events
from property_pipeline.processing import processor
from property_pipeline.processing.processor import Outcome, PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import write_pages

LEASE_SECONDS = 2
SLOW_SECONDS = 5.0  # the file takes two and a half leases to read


@pytest.mark.slow
def test_a_file_slower_than_its_lease_keeps_its_claim_while_another_processor_keeps_looking(
    engine: Engine, db_url: str, root: PayloadRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pages(root, files=1, per_file=5)
    register_unregistered(engine, root, "test")
    real_read_page = processor.read_page

    def slow_read_page(body: bytes, **options: Any) -> Any:
        time.sleep(SLOW_SECONDS)  # outside the data transaction: only the lease protects the claim here
        return real_read_page(body, **options)

    monkeypatch.setattr(processor, "read_page", slow_read_page)
    done = threading.Event()
    taken_over: list[Any] = []

    def rival() -> None:
        """Another processor that runs again and again: it requeues expired claims and claims what is PENDING."""
        rival_engine = create_db_engine(db_url)
        try:
            # It starts looking once the file is claimed: which of two processors claims a file first is a race.
            claimed = select(batch_file_status.c.status).where(batch_file_status.c.status == "PROCESSING")
            deadline = time.monotonic() + 30
            while not done.is_set() and time.monotonic() < deadline:
                with rival_engine.connect() as conn:
                    if conn.execute(claimed).first() is not None:
                        break
                time.sleep(0.02)
            while not done.is_set():
                taken_over.extend(PayloadProcessor(rival_engine, root, lease_seconds=LEASE_SECONDS).run().outcomes)
                time.sleep(0.1)
        finally:
            rival_engine.dispose()

    watcher = threading.Thread(target=rival)
    watcher.start()
    try:
        report = PayloadProcessor(engine, root, lease_seconds=LEASE_SECONDS).run()
    finally:
        done.set()
        watcher.join()
    assert [outcome.status for outcome in report.outcomes] == [Outcome.COMPLETED]
    assert taken_over == [], "the rival never got the file: its lease was renewed all along"
    with engine.connect() as conn:
        attempts = conn.execute(select(batch_file_status.c.attempts)).scalar_one()
        details = list(conn.execute(select(file_status_events.c.detail)).scalars())
    assert attempts == 1
    assert not any(detail and "lease expired" in detail for detail in details)
