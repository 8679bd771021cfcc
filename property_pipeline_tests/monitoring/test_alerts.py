"""Alerts: once per stuck or failed file, an old backlog noticed, webhook trouble tolerated."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import Engine, select, update

from property_pipeline.db import status
from property_pipeline.db.schema import alerts, batch_file_status, utcnow
from property_pipeline.monitoring.alerts import WebhookNotifier, current_alerts, raise_alerts
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import write_pages


class Receiver:
    """A real HTTP receiver on 127.0.0.1 that records JSON bodies and can be told to fail."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(503)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def _notifier(url: str) -> WebhookNotifier:
    return WebhookNotifier(url, attempts=3, timeout=2, sleep=lambda _s: None)


def _one_failed_one_stuck(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=3, per_file=2)
    register_unregistered(engine, root, "test")
    failed = status.claim_next_pending(engine, "w1", 60)
    assert failed is not None
    status.mark_failed(engine, failed.file_id, "w1", "checksum mismatch for x", processing_time_ms=3)
    stuck = status.claim_next_pending(engine, "w2", 60)
    assert stuck is not None
    with engine.begin() as conn:
        conn.execute(
            update(batch_file_status)
            .where(batch_file_status.c.file_id == stuck.file_id)
            .values(locked_until=utcnow() - timedelta(minutes=1))
        )


def test_stuck_and_failed_files_raise_exactly_one_alert_each(
    engine: Engine, root: PayloadRoot, receiver: Receiver
) -> None:
    _one_failed_one_stuck(engine, root)
    for _tick in range(3):
        candidates = current_alerts(engine, pending_max_age_seconds=3600)
        raise_alerts(engine, candidates, _notifier(receiver.url))
    kinds = sorted(body["text"].split(":")[0] for body in receiver.bodies)
    assert kinds == ["[property_pipeline] failed", "[property_pipeline] stuck"]
    failed_text = next(b["text"] for b in receiver.bodies if "failed" in b["text"])
    assert "checksum mismatch" in failed_text and "retry --file-id 1" in failed_text
    # A retry that fails again is a new attempt, so it alerts once more.
    status.retry_failed(engine, "test", file_ids=[1])
    again = status.claim_next_pending(engine, "w3", 60, file_ids=[1])
    assert again is not None
    status.mark_failed(engine, 1, "w3", "still broken", processing_time_ms=1)
    round_ = raise_alerts(engine, current_alerts(engine, pending_max_age_seconds=3600), _notifier(receiver.url))
    assert [a.key for a in round_.raised] == ["failed:1:2"]


def test_old_pending_backlog_raises_one_alert(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=2, per_file=1)
    register_unregistered(engine, root, "test")
    assert current_alerts(engine, pending_max_age_seconds=3600) == []
    later = utcnow() + timedelta(hours=2)
    found = current_alerts(engine, pending_max_age_seconds=3600, now=later)
    assert [a.kind for a in found] == ["backlog"] and "waited 2.0 h" in found[0].message
    assert len(raise_alerts(engine, found, None, now=later).raised) == 1
    assert raise_alerts(engine, found, None, now=later).raised == []


def test_unreachable_webhook_never_breaks_and_delivery_is_retried_later(
    engine: Engine, root: PayloadRoot, receiver: Receiver
) -> None:
    _one_failed_one_stuck(engine, root)
    candidates = current_alerts(engine, pending_max_age_seconds=3600)
    dead = _notifier("http://127.0.0.1:9/nothing-listens-here")
    first = raise_alerts(engine, candidates, dead)
    assert (len(first.raised), first.delivered, first.undelivered) == (2, 0, 2)
    receiver.fail_next = 1  # the receiver is flaky once, then fine: bounded retries get through
    second = raise_alerts(engine, current_alerts(engine, pending_max_age_seconds=3600), _notifier(receiver.url))
    assert (second.raised, second.delivered, second.undelivered) == ([], 2, 0)
    assert len(receiver.bodies) == 2
    with engine.connect() as conn:
        rows = conn.execute(select(alerts.c.delivered_at, alerts.c.delivery_attempts)).all()
    assert all(row.delivered_at is not None for row in rows) and {row.delivery_attempts for row in rows} == {2}


def test_webhook_gives_up_after_bounded_attempts(receiver: Receiver) -> None:
    receiver.fail_next = 10
    sleeps: list[float] = []
    notifier = WebhookNotifier(receiver.url, attempts=3, sleep=sleeps.append)
    from property_pipeline.monitoring.alerts import Alert

    assert notifier.deliver(Alert("k", "failed", 1, "2026-11", "m")) is False
    assert len(sleeps) == 2 and receiver.fail_next == 7
