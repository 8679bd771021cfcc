"""Alerts for stuck and failed files and an old PENDING backlog: raised once, delivered to a webhook.

Each alert has a key that names its cause (`failed:<file>:<attempt>`, `stuck:<file>:<attempt>`,
`backlog:<oldest pending file>`); the `alerts` table remembers every key raised, so a file that
stays FAILED produces exactly one alert however many times the sensor looks at it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import requests
from sqlalchemy import Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from property_pipeline.db.schema import alerts as alerts_table
from property_pipeline.db.schema import as_utc, utcnow
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.states import FileStatus

log = logging.getLogger(__name__)
MAX_DELIVERY_TRIES = 5  # across sensor ticks, for an alert whose webhook was unreachable


@dataclass(frozen=True)
class Alert:
    key: str
    kind: str  # stuck, failed, backlog
    file_id: int | None
    month: str
    message: str


def current_alerts(engine: Engine, *, pending_max_age_seconds: int, now: datetime | None = None) -> list[Alert]:
    """Every condition that deserves an alert right now (raised or not yet)."""
    now = now or utcnow()
    columns = (files.c.file_id, files.c.file_path, files.c.month, files.c.attempts, files.c.error_details)
    found: list[Alert] = []
    with engine.connect() as conn:
        for row in conn.execute(
            select(*columns, files.c.locked_by, files.c.locked_until)
            .where(files.c.status == FileStatus.PROCESSING, files.c.locked_until < now)
            .order_by(files.c.file_id)
        ):
            found.append(
                Alert(
                    f"stuck:{row.file_id}:{row.attempts}",
                    "stuck",
                    row.file_id,
                    row.month,
                    f"file {row.file_id} {row.file_path} is stuck in PROCESSING: its lease (worker {row.locked_by}) "
                    f"ended at {row.locked_until:%Y-%m-%d %H:%M:%S} UTC. The next `property-pipeline process` run "
                    "requeues it.",
                )
            )
        failed = select(*columns).where(files.c.status == FileStatus.FAILED).order_by(files.c.file_id)
        for failed_row in conn.execute(failed):
            found.append(
                Alert(
                    f"failed:{failed_row.file_id}:{failed_row.attempts}",
                    "failed",
                    failed_row.file_id,
                    failed_row.month,
                    f"file {failed_row.file_id} {failed_row.file_path} FAILED: "
                    f"{(failed_row.error_details or '')[:300]} "
                    f"Fix the cause, then `property-pipeline retry --file-id {failed_row.file_id}`.",
                )
            )
        waiting_since = func.coalesce(files.c.pending_since, files.c.created_at)
        oldest = conn.execute(
            select(files.c.file_id, files.c.file_path, files.c.month, waiting_since.label("waiting_since"))
            .where(
                files.c.status == FileStatus.PENDING,
                waiting_since < now - timedelta(seconds=pending_max_age_seconds),
            )
            .order_by(waiting_since, files.c.file_id)
            .limit(1)
        ).first()
    if oldest is not None:
        started_waiting = as_utc(oldest.waiting_since)  # COALESCE of times: SQLite returns untyped text
        assert started_waiting is not None
        waiting = now - started_waiting
        found.append(
            Alert(
                f"backlog:{oldest.file_id}",
                "backlog",
                oldest.file_id,
                oldest.month,
                f"PENDING backlog is old: file {oldest.file_id} {oldest.file_path} has waited "
                f"{waiting.total_seconds() / 3600:.1f} h (limit {pending_max_age_seconds / 3600:.1f} h). "
                "Run processing (materialize `properties` or `property-pipeline process`).",
            )
        )
    return found


class WebhookNotifier:
    """POSTs `{"text": ...}` (Slack-compatible) with bounded retries; never raises."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = 3,
        timeout: float = 5.0,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self.sleep = sleep

    def deliver(self, alert: Alert) -> bool:
        payload = {"text": f"[property_pipeline] {alert.kind}: {alert.message}", "alert_key": alert.key}
        for attempt in range(1, self.attempts + 1):
            try:
                response = requests.post(self.url, json=payload, timeout=self.timeout)
                if response.status_code < 300:
                    return True
                reason = f"HTTP {response.status_code}"
            except requests.RequestException as error:
                reason = type(error).__name__
            log.warning("alert webhook attempt %d/%d failed: %s", attempt, self.attempts, reason)
            if attempt < self.attempts:
                self.sleep(self.backoff * 2 ** (attempt - 1))
        return False


@dataclass
class AlertRound:
    raised: list[Alert]
    delivered: int
    undelivered: int


def _insert_if_new(engine: Engine) -> postgresql.Insert | sqlite.Insert:
    if engine.dialect.name == "postgresql":
        return postgresql.insert(alerts_table)
    return sqlite.insert(alerts_table)


def raise_alerts(
    engine: Engine, candidates: Sequence[Alert], notifier: WebhookNotifier | None, now: datetime | None = None
) -> AlertRound:
    """Record the alerts not raised before (once per key), and deliver them and earlier undelivered ones."""
    now = now or utcnow()
    raised: list[Alert] = []
    with engine.begin() as conn:
        for alert in candidates:
            inserted = conn.execute(
                _insert_if_new(engine)
                .values(
                    alert_key=alert.key,
                    kind=alert.kind,
                    file_id=alert.file_id,
                    month=alert.month,
                    message=alert.message,
                    raised_at=now,
                    delivered_at=None,
                    delivery_attempts=0,
                )
                .on_conflict_do_nothing(index_elements=["alert_key"])
                .returning(alerts_table.c.alert_key)
            ).first()
            if inserted is not None:
                raised.append(alert)
    delivered = undelivered = 0
    if notifier is None:
        return AlertRound(raised, 0, 0)
    with engine.connect() as conn:
        waiting = conn.execute(
            select(alerts_table)
            .where(alerts_table.c.delivered_at.is_(None), alerts_table.c.delivery_attempts < MAX_DELIVERY_TRIES)
            .order_by(alerts_table.c.alert_id)
        ).all()
    for row in waiting:
        ok = notifier.deliver(Alert(row.alert_key, row.kind, row.file_id, row.month, row.message))
        with engine.begin() as conn:
            conn.execute(
                update(alerts_table)
                .where(alerts_table.c.alert_id == row.alert_id)
                .values(delivery_attempts=alerts_table.c.delivery_attempts + 1, delivered_at=utcnow() if ok else None)
            )
        delivered += ok
        undelivered += not ok
    return AlertRound(raised, delivered, undelivered)
