"""The totals per month and campaign (`file_totals`, kept by triggers) always equal a count of the status table:
after every transition, a retention change, a direct write and a deletion, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update

from property_pipeline.db import status
from property_pipeline.db.queries import FileTotals, file_totals, processing_throughput
from property_pipeline.db.schema import batch_file_status, file_status_events, utcnow
from property_pipeline.states import FileStatus

MONTHS = ("2026-10", "2026-11")
CAMPAIGNS = ("camp-a", "camp-b")


def _candidate(month: str, campaign: str, batch: int, *, content: str | None = None) -> status.NewPayloadFile:
    captured = datetime(int(month[:4]), int(month[5:]), 3, 8, 0, tzinfo=UTC) + timedelta(minutes=batch)
    return status.NewPayloadFile(
        file_path=f"{month}/{campaign}_batch{batch:05d}.json",
        campaign_id=campaign,
        batch_number=batch,
        month=month,
        checksum_sha256=hashlib.sha256((content or f"{month}{campaign}{batch}").encode()).hexdigest(),
        file_size_bytes=1000 + batch,
        captured_at=captured,
        properties_count=10 + batch,
    )


def _counted(engine: Engine) -> dict[tuple[str, str], dict[str, Any]]:
    """The totals counted from the status table itself, row by row: what `file_totals` must say."""
    totals: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    with engine.connect() as conn:
        rows = conn.execute(select(batch_file_status)).all()
    for row in rows:
        group = totals[(row.month, row.campaign_id)]
        group[row.status.lower()] += 1
        group["duplicates"] += row.duplicate_of_file_id is not None
        group["archived"] += row.archived_at is not None
        group["deleted"] += row.deleted_at is not None
        group["discarded_deleted"] += row.status == FileStatus.DISCARDED and row.deleted_at is not None
        if row.status == FileStatus.COMPLETED:
            group["records_loaded"] += row.success_count or 0
            group["records_quarantined"] += row.error_count or 0
        if row.deleted_at is None:
            group["records_on_disk"] += row.properties_count or 0
            group["bytes_on_disk"] += row.file_size_bytes
        if row.status == FileStatus.PENDING:
            waiting = row.pending_since or row.created_at
            group["oldest_pending_at"] = min(group.get("oldest_pending_at") or waiting, waiting)
    return totals


def _as_counted(totals: FileTotals) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(totals).items()
        if name not in {"month", "campaign_id"} and (value or name == "oldest_pending_at")
    }


def assert_totals_agree(engine: Engine) -> None:
    counted = {key: {k: v for k, v in group.items() if v} for key, group in _counted(engine).items()}
    for group in counted.values():
        group.setdefault("oldest_pending_at", None)
    kept = {(t.month, t.campaign_id): _as_counted(t) for t in file_totals(engine)}
    assert kept == counted
    for month in MONTHS:
        assert {(t.month, t.campaign_id) for t in file_totals(engine, month)} == {k for k in counted if k[0] == month}


def test_totals_equal_a_count_of_the_status_table_after_every_kind_of_change(engine: Engine) -> None:
    candidates = [_candidate(m, c, b) for m in MONTHS for c in CAMPAIGNS for b in range(1, 5)]
    candidates.append(_candidate("2026-11", "camp-b", 9, content="2026-10camp-a1"))  # same bytes: a duplicate
    with engine.begin() as conn:
        status.register_files(conn, candidates, "test")
    assert_totals_agree(engine)

    claimed = [status.claim_next_pending(engine, "w1", 60) for _ in range(6)]
    assert all(claimed)
    assert_totals_agree(engine)

    first, second, third, fourth, fifth, sixth = (payload for payload in claimed if payload is not None)
    for payload, loaded in ((first, 9), (second, 7), (third, 12)):
        with engine.begin() as conn:
            status.hold_claim(conn, payload.file_id, "w1")
            status.mark_completed(
                conn,
                payload.file_id,
                "w1",
                properties_count=loaded + 1,
                success_count=loaded,
                error_count=1,
                processing_time_ms=40,
            )
    assert status.mark_failed(engine, fourth.file_id, "w1", "not a page", processing_time_ms=3)
    assert status.mark_failed(engine, fifth.file_id, "w1", "truncated", processing_time_ms=3)
    assert status.release_claim(engine, sixth.file_id, "w1", "database went away")
    assert status.extend_lease(engine, first.file_id, "w1", 60) is False  # counts nothing: no total changes
    assert_totals_agree(engine)
    assert processing_throughput(engine) == (9 + 7 + 12, 120)

    stuck = status.claim_next_pending(engine, "w2", 60)
    assert stuck is not None
    assert status.requeue_expired_claims(engine, "test", now=utcnow() + timedelta(minutes=5)) == [stuck.file_id]
    assert status.discard_failed(engine, "test", [fifth.file_id], "the API will not serve it again") == [fifth.file_id]
    assert status.retry_failed(engine, "test", all_failed=True) == [fourth.file_id]
    assert_totals_agree(engine)

    assert status.mark_for_reprocessing(engine, "test", [second.file_id], "rule fixed") == [second.file_id]
    with engine.begin() as conn:
        assert status.record_archived(conn, [first.file_id, third.file_id, fifth.file_id], "archive-1.tar") == 3
    assert status.record_deleted(engine, first.file_id)
    assert status.record_deleted(engine, fifth.file_id)
    assert_totals_agree(engine)

    assert status.record_restored(engine, [first.file_id]) == 1
    with engine.begin() as conn:  # a write outside db/status.py (a test, an operator's SQL) is counted too
        conn.execute(
            update(batch_file_status).where(batch_file_status.c.file_id == third.file_id).values(deleted_at=utcnow())
        )
        conn.execute(
            update(batch_file_status)
            .where(batch_file_status.c.file_id == sixth.file_id)
            .values(month="2026-10", campaign_id="camp-c", pending_since=utcnow() - timedelta(days=3))
        )
    assert_totals_agree(engine)

    last = max(c.file_id for c in claimed if c is not None)
    with engine.begin() as conn:
        conn.execute(delete(file_status_events).where(file_status_events.c.file_id >= last))
        conn.execute(delete(batch_file_status).where(batch_file_status.c.file_id >= last))
    assert_totals_agree(engine)


def test_a_month_whose_files_all_moved_away_has_no_totals(engine: Engine) -> None:
    with engine.begin() as conn:
        status.register_files(conn, [_candidate("2026-10", "camp-a", 1)], "test")
        conn.execute(update(batch_file_status).values(month="2026-11"))
    assert [(t.month, t.campaign_id, t.pending) for t in file_totals(engine)] == [("2026-11", "camp-a", 1)]
    assert file_totals(engine, "2026-10") == []
