"""The status report tells, per month and campaign, what is done, what failed and why, what is waiting."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from property_pipeline.db import status
from property_pipeline.db.schema import utcnow
from property_pipeline.monitoring.report import build_status_report, render_markdown
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import write_pages


def test_report_counts_per_month_and_campaign_with_errors_and_slowest(engine: Engine, root: PayloadRoot) -> None:
    write_pages(root, files=3, per_file=4, campaign="alpha")
    write_pages(root, files=2, per_file=5, campaign="beta")
    register_unregistered(engine, root, "test")
    PayloadProcessor(engine, root).run(limit=3)
    claimed = status.claim_next_pending(engine, "w", 60)
    assert claimed is not None
    status.mark_failed(engine, claimed.file_id, "w", "not valid JSON | truncated", processing_time_ms=1)
    report = build_status_report(engine, now=utcnow() + timedelta(minutes=10))
    by_campaign = {row.campaign_id: row for row in report.rows}
    assert (by_campaign["alpha"].completed, by_campaign["alpha"].records_loaded) == (3, 12)
    assert (by_campaign["beta"].failed, by_campaign["beta"].pending) == (1, 1)
    assert report.backlog_files == 1 and report.failed_files == 1
    assert 590 <= report.oldest_pending_age_seconds <= 700
    assert [e.file_id for e in report.latest_errors] == [claimed.file_id]
    assert len(report.slowest) == 3 and report.rows_per_second > 0
    markdown = render_markdown(report)
    assert "| 2026-11 | alpha | 0 | 0 | 3 | 0 | 12 | 0 | - |" in markdown
    assert "not valid JSON \\| truncated" in markdown  # a pipe in an error cannot break the table
    assert "**Backlog:** 1 files pending (oldest 10m)" in markdown


def test_empty_database_renders_a_readable_report(engine: Engine) -> None:
    markdown = render_markdown(build_status_report(engine))
    assert "No failed files." in markdown and "No completed files yet." in markdown
