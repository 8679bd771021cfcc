"""A 50-page capture against a sandbox that answers 429, 5xx, slow (timeouts) and truncated bodies at random.

Each page is stored exactly once, byte for byte as the sandbox serves it, and registered once,
across the interruptions the client gives up on and the `--resume` runs that follow them.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from sqlalchemy import Engine, func, select

from property_pipeline.api.client import PropertySearchClient
from property_pipeline.api.sandbox import FaultConfig, SandboxConfig, SandboxServer
from property_pipeline.capture import Campaign, CaptureError, capture_campaign
from property_pipeline.db.schema import batch_file_status, capture_runs, properties
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import parse_payload_name
from property_pipeline.store.publish import sha256_file
from property_pipeline_tests.faults.exposure import API_SECRET, ExposureScan
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.invariants import data_violations

pytestmark = pytest.mark.faults

PAGES, PAGE_SIZE = 50, 20
CRITERIA = {"records": PAGES * PAGE_SIZE}
FAULTS = FaultConfig(rate_limit=0.1, server_error=0.15, slow=0.04, slow_seconds=1.0, truncate=0.1, seed=7)
FAILURE_KINDS = {"HTTP 429": "rate_limited", "HTTP 50": "server_error", "bad body": "truncated", "timeout": "timeout"}


def test_fifty_pages_under_random_api_faults_are_each_stored_and_registered_exactly_once(
    engine: Engine, root: PayloadRoot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    delays: list[float] = []
    interruptions: list[str] = []
    with SandboxServer(SandboxConfig(records=PAGES * PAGE_SIZE, seed=11, api_key=API_SECRET, faults=FAULTS)) as sandbox:
        client = PropertySearchClient(
            sandbox.base_url,
            API_SECRET,
            page_size=PAGE_SIZE,
            read_timeout=0.3,
            max_attempts=4,  # low enough that some pages are given up on: the resume path is exercised too
            sleep=delays.append,  # backoff is recorded, not waited for
        )
        with client:
            for _attempt in range(40):
                try:
                    report = capture_campaign(engine, root, client, Campaign("volume", CRITERIA), resume=True)
                except CaptureError as error:
                    interruptions.append(str(error))
                    continue
                break
            else:
                pytest.fail(f"the capture never completed: {interruptions[-3:]}")
        expected = {sandbox.page_body(CRITERIA, PAGE_SIZE * page, PAGE_SIZE): page for page in range(PAGES)}
        requests = sandbox.requests_served

    assert report.complete
    stored = sorted(root.payloads.glob("*/*.json"), key=lambda path: parse_payload_name(path.name).batch_number)
    pages = [expected.get(path.read_bytes()) for path in stored]
    assert pages == list(range(PAGES)), "each page stored once, in order, byte for byte as served"
    assert [parse_payload_name(path.name).batch_number for path in stored] == list(range(1, PAGES + 1))
    assert not list(root.payloads.glob("*/.*")), "no temporary file left behind"
    with engine.connect() as conn:
        rows = conn.execute(select(batch_file_status).order_by(batch_file_status.c.batch_number)).all()
        runs = conn.execute(select(capture_runs).order_by(capture_runs.c.run_id)).all()
    assert [row.file_path for row in rows] == [f"{path.parent.name}/{path.name}" for path in stored]
    assert [row.checksum_sha256 for row in rows] == [sha256_file(path)[0] for path in stored]
    assert all(row.status == "PENDING" and row.duplicate_of_file_id is None for row in rows)
    assert runs[-1].state == "COMPLETED" and runs[-1].next_result_index == PAGES * PAGE_SIZE
    again = register_unregistered(engine, root, "test")
    assert (again.registered, again.duplicates, again.skipped) == ([], [], []), "registered once, never twice"

    failures = Counter(
        kind
        for record in caplog.records
        if "retrying in" in record.getMessage()
        for marker, kind in FAILURE_KINDS.items()
        if marker in record.getMessage()
    )
    assert set(failures) == set(FAILURE_KINDS.values()), f"every kind of fault happened: {failures}"
    assert requests > PAGES

    processed = PayloadProcessor(engine, root).run()
    assert (processed.completed, processed.failed) == (PAGES, 0)
    with engine.connect() as conn:
        loaded = conn.execute(select(func.count()).select_from(properties)).scalar_one()
    assert loaded == processed.records_loaded and processed.records_quarantined > 0
    assert data_violations(engine) == []

    exposure = ExposureScan(API_SECRET)
    exposure.text("captured log records", caplog.text)
    exposure.texts({f"interruption {i}": text for i, text in enumerate(interruptions)})
    exposure.folder(root.logs_dir)
    exposure.database(engine)
    assert exposure.leaks == []
    report_figure(
        f"api_faults_at_volume_{engine.dialect.name}",
        pages=PAGES,
        requests=requests,
        retries=sum(failures.values()),
        faults=dict(sorted(failures.items())),
        interruptions_resumed=len(interruptions),
        pages_stored_once=len(stored),
        records_loaded=loaded,
        secret_leaks=len(exposure.leaks),
        violations=0,
    )
