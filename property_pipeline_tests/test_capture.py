"""Capture against the sandbox API on a real loopback socket: every page stored once, byte for byte."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from property_pipeline.api.client import PropertySearchClient
from property_pipeline.api.sandbox import FaultConfig, SandboxConfig, SandboxServer
from property_pipeline.capture import Campaign, CaptureError, capture_campaign, load_campaigns, read_ahead
from property_pipeline.cli import main
from property_pipeline.db.schema import batch_file_status, capture_runs, properties
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import parse_payload_name
from property_pipeline.store.publish import sha256_file

SECRET = "sk-test-9f8e7d6c5b4a39281706"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(records=1001, seed=7, api_key=SECRET)) as server:
        yield server


def _client(server: SandboxServer, **kwargs) -> PropertySearchClient:  # type: ignore[no-untyped-def]
    kwargs.setdefault("sleep", lambda _s: None)
    return PropertySearchClient(server.base_url, SECRET, **kwargs)


def _files(root: PayloadRoot) -> list[Path]:
    return sorted(root.payloads.glob("*/*"))


def _rows(engine: Engine):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(batch_file_status).order_by(batch_file_status.c.file_id)).all()


def test_capture_stores_every_page_byte_for_byte_and_registers_it_pending(
    engine: Engine, root: PayloadRoot, sandbox: SandboxServer
) -> None:
    with _client(sandbox) as client:
        report = capture_campaign(engine, root, client, Campaign("spring-tx"))
    assert (report.pages, report.records, report.result_count, report.complete) == (3, 1001, 1001, True)
    stored = _files(root)
    assert [parse_payload_name(p.name).batch_number for p in stored] == [1, 2, 3]
    for index, path in zip((0, 400, 800), stored, strict=True):
        assert path.read_bytes() == sandbox.page_body({}, index, 400)
    rows = _rows(engine)
    assert [(r.status, r.properties_count, r.batch_number) for r in rows] == [
        ("PENDING", 400, 1),
        ("PENDING", 400, 2),
        ("PENDING", 201, 3),
    ]
    assert [r.checksum_sha256 for r in rows] == [sha256_file(p)[0] for p in stored]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(properties)).scalar_one() == 0  # capture loads nothing


def test_empty_result_stores_one_empty_page(engine: Engine, root: PayloadRoot, sandbox: SandboxServer) -> None:
    with _client(sandbox) as client:
        report = capture_campaign(engine, root, client, Campaign("nobody", {"records": 0}))
    assert (report.pages, report.records, report.complete) == (1, 0, True)
    assert orjson.loads(_files(root)[0].read_bytes())["recordCount"] == 0


def test_batch_numbers_continue_across_runs_without_gaps(
    engine: Engine, root: PayloadRoot, sandbox: SandboxServer
) -> None:
    with _client(sandbox) as client:
        capture_campaign(engine, root, client, Campaign("c1"), max_pages=2)
        capture_campaign(engine, root, client, Campaign("c1", {"state": "TX"}))
        capture_campaign(engine, root, client, Campaign("other"), max_pages=1)
    numbers = sorted(r.batch_number for r in _rows(engine) if r.campaign_id == "c1")
    assert numbers == list(range(1, len(numbers) + 1))
    assert [r.batch_number for r in _rows(engine) if r.campaign_id == "other"] == [1]


def test_transient_faults_are_retried_and_each_page_is_stored_once(engine: Engine, root: PayloadRoot) -> None:
    faults = FaultConfig(fail_first=3)  # 429 with Retry-After, 503 and a truncated 200, for every page
    with SandboxServer(SandboxConfig(records=900, api_key=SECRET, faults=faults)) as server:
        with _client(server) as client:
            report = capture_campaign(engine, root, client, Campaign("flaky"))
        assert report.retries == 9
        assert [p.read_bytes() for p in _files(root)] == [server.page_body({}, i, 400) for i in (0, 400, 800)]
    assert len(_rows(engine)) == 3


def test_outage_stops_capture_keeps_what_was_stored_and_resume_continues(engine: Engine, root: PayloadRoot) -> None:
    with SandboxServer(SandboxConfig(records=1300, api_key=SECRET)) as server:
        with _client(server) as client:
            capture_campaign(engine, root, client, Campaign("c2"), max_pages=2)
        partial = _rows(engine)
        assert len(partial) == 2
        with engine.connect() as conn:
            run = conn.execute(select(capture_runs)).one()
        assert (run.state, run.next_result_index) == ("INTERRUPTED", 800)
    # The API is gone now (server stopped): capture fails cleanly and stores nothing partial.
    dead = PropertySearchClient(server.base_url, SECRET, max_attempts=2, sleep=lambda _s: None)
    with pytest.raises(CaptureError, match="--resume") as caught:
        capture_campaign(engine, root, dead, Campaign("c2"), resume=True)
    assert caught.value.report.pages == 0
    assert len(_files(root)) == 2
    with SandboxServer(SandboxConfig(records=1300, api_key=SECRET)) as server:
        with _client(server) as client:
            resumed = capture_campaign(engine, root, client, Campaign("c2"), resume=True)
        assert (resumed.resumed_from_index, resumed.pages, resumed.complete) == (800, 2, True)
        assert [p.read_bytes() for p in _files(root)] == [server.page_body({}, i, 400) for i in (0, 400, 800, 1200)]
    assert [r.batch_number for r in _rows(engine)] == [1, 2, 3, 4]


def test_unauthorized_fails_at_once_without_leaking_the_key(
    engine: Engine, root: PayloadRoot, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-0123456789abcdef"
    client = PropertySearchClient(sandbox.base_url, wrong, sleep=lambda _s: pytest.fail("401 must not be retried"))
    with pytest.raises(CaptureError) as caught:
        capture_campaign(engine, root, client, Campaign("c3"))
    assert "401" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), caplog.text):
        assert wrong not in text and SECRET not in text
    assert _files(root) == []
    assert sandbox.requests_served == 1


def test_campaign_ids_that_could_escape_the_data_root_are_refused(
    engine: Engine, root: PayloadRoot, sandbox: SandboxServer
) -> None:
    with _client(sandbox) as client:
        for bad in ("../../etc", "a/b", "..", ""):
            with pytest.raises(ValueError, match="not allowed"):
                capture_campaign(engine, root, client, Campaign(bad))
    assert sandbox.requests_served == 0
    assert not (root.logs_dir.parent / "etc").exists()


def test_stale_partial_page_of_a_crashed_capture_is_removed(
    engine: Engine, root: PayloadRoot, sandbox: SandboxServer
) -> None:
    with _client(sandbox) as client:
        capture_campaign(engine, root, client, Campaign("c4"), max_pages=1)
        folder = _files(root)[0].parent
        partial = folder / ".c4_batch2_20261128T000000000000Z.json.999.tmp"
        partial.write_bytes(b'{"statusCode": 200, "da')
        capture_campaign(engine, root, client, Campaign("c4"), max_pages=1)
    assert not partial.exists()
    assert [p.name.startswith(".") for p in folder.iterdir()] == [False, False]


@pytest.mark.slow
def test_capture_killed_mid_run_leaves_only_complete_registered_files_and_resumes(
    engine: Engine, db_url: str, root: PayloadRoot
) -> None:
    slow = FaultConfig(slow=1.0, slow_seconds=0.3)
    with SandboxServer(SandboxConfig(records=4000, api_key=SECRET, faults=slow)) as server:
        env = {
            **os.environ,
            "PROPERTY_PIPELINE_DB_URL": db_url,
            "PROPERTY_PIPELINE_LOGS_DIR": str(root.logs_dir),
            "PROPERTY_API_BASE_URL": server.base_url,
            "PROPERTY_API_KEY": SECRET,
        }
        unfiltered = ["--criteria", "{}", "--allow-unfiltered"]  # the sandbox's whole dataset, on purpose
        command = [sys.executable, "-m", "property_pipeline", "capture", "--campaign", "big", *unfiltered]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(list(root.payloads.glob("*/big_*.json"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        on_disk = [p for p in _files(root) if not p.name.startswith(".")]
        assert 3 <= len(on_disk) < 10
        for path in on_disk:
            body = orjson.loads(path.read_bytes())  # every visible file is complete JSON
            assert body["recordCount"] == len(body["data"])
        resumed = subprocess.run(
            [*command, "--resume", "--json"], env={**env, "CI": ""}, capture_output=True, text=True, timeout=120
        )
        assert resumed.returncode == 0, resumed.stderr
        assert SECRET not in resumed.stdout + resumed.stderr
        assert json.loads(resumed.stdout)["captures"][0]["complete"] is True
        bodies = [p.read_bytes() for p in _files(root)]
        expected = [server.page_body({}, i, 400) for i in range(0, 4000, 400)]
    assert [p.name.startswith(".") for p in _files(root)].count(True) == 0
    assert sorted(set(bodies)) == sorted(expected), "every page stored, none missing"
    rows = _rows(engine)
    assert {r.file_path for r in rows} == {f"{p.parent.name}/{p.name}" for p in _files(root)}, "every file registered"
    loaded = [r for r in rows if r.duplicate_of_file_id is None]
    assert len(loaded) == 10, "a page re-fetched after the crash is a recorded duplicate, never loaded twice"
    assert [r.batch_number for r in rows] == list(range(1, len(rows) + 1))


def test_cli_capture_then_process_matches_the_server(tmp_path: Path) -> None:
    with SandboxServer(SandboxConfig(records=850, api_key=SECRET)) as server:
        env = {
            "PROPERTY_PIPELINE_DB_URL": f"sqlite:///{tmp_path / 'p.db'}",
            "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs"),
            "PROPERTY_API_BASE_URL": server.base_url,
            "PROPERTY_API_KEY": SECRET,
        }
        runner = CliRunner()
        captured = runner.invoke(
            main, ["capture", "--campaign", "cli", "--criteria", "{}", "--allow-unfiltered", "--json"], env=env
        )
        assert captured.exit_code == 0, captured.output
        summary = json.loads(captured.stdout)["captures"][0]
        assert (summary["pages"], summary["records"]) == (3, 850)
        assert SECRET not in captured.output
        bad = runner.invoke(main, ["capture", "--campaign", "cli", "--criteria", "[1]"], env=env)
        assert bad.exit_code == 2
        processed = runner.invoke(main, ["process", "--json"], env=env)
        assert json.loads(processed.stdout)["files_completed"] == 3


def test_cli_capture_all_takes_the_enabled_campaigns(tmp_path: Path) -> None:
    config = tmp_path / "campaigns.yaml"
    config.write_text(
        "campaigns:\n  - {id: tx, criteria: {state: TX}}\n  - {id: off, enabled: false}\n"
        "  - {id: two, max_pages: 1, allow_unfiltered: true}\n"
    )
    assert [c.campaign_id for c in load_campaigns(config) if c.enabled] == ["tx", "two"]
    with SandboxServer(SandboxConfig(records=1000, api_key=SECRET)) as server:
        env = {
            "PROPERTY_PIPELINE_DB_URL": f"sqlite:///{tmp_path / 'p.db'}",
            "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs"),
            "PROPERTY_PIPELINE_CAMPAIGNS_FILE": str(config),
            "PROPERTY_API_BASE_URL": server.base_url,
            "PROPERTY_API_KEY": SECRET,
        }
        result = CliRunner().invoke(main, ["capture", "--all", "--json"], env=env)
    assert result.exit_code == 0, result.output
    captures = {c["campaign"]: c for c in json.loads(result.stdout)["captures"]}
    assert set(captures) == {"tx", "two"}
    assert captures["two"]["pages"] == 1
    assert captures["tx"]["records"] > 0 and captures["tx"]["complete"] is True


@pytest.mark.slow
def test_demo_twice_in_the_same_folder_adds_files_but_no_duplicate_properties(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PROPERTY_PIPELINE_DB_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs"),
    }
    env.pop("PROPERTY_API_KEY", None)
    for run in (1, 2):
        result = subprocess.run(
            [sys.executable, "-m", "property_pipeline", "demo", "--records", "900"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Demo complete" in result.stdout
        assert len(list((tmp_path / "logs" / "property_payloads").glob("*/*.json"))) == 3 * run
    from property_pipeline.db.engine import create_db_engine

    engine = create_db_engine(env["PROPERTY_PIPELINE_DB_URL"])
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(properties)).scalar_one()
        statuses = set(conn.execute(select(batch_file_status.c.status)).scalars())
    engine.dispose()
    assert count == 900 - 9  # every 97th sandbox record breaks the contract and is quarantined
    assert statuses == {"COMPLETED"}


def test_read_ahead_takes_the_next_page_while_this_one_is_stored() -> None:
    asked_for_second = threading.Event()

    def pages() -> Iterator[int]:
        yield 1
        asked_for_second.set()
        yield 2
        yield 3

    seen = []
    for item in read_ahead(pages()):
        if item == 1:  # without read-ahead nobody asks for page 2 before page 1 is handled: this would time out
            assert asked_for_second.wait(timeout=10)
        seen.append(item)
    assert seen == [1, 2, 3]


def test_read_ahead_raises_a_fetch_error_after_the_pages_before_it() -> None:
    def pages() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("connection reset")

    seen = []
    with pytest.raises(OSError, match="connection reset"):
        for item in read_ahead(pages()):
            seen.append(item)
    assert seen == [1, 2]


def test_read_ahead_takes_nothing_more_once_the_caller_stops() -> None:
    taken = []

    def pages() -> Iterator[int]:
        for number in range(1, 100):
            taken.append(number)
            yield number

    for item in read_ahead(pages()):
        if item == 3:
            break
    assert taken == [1, 2, 3, 4]  # page 4 was already in flight, and dropped
