"""A payload folder that fills up or turns read-only during a capture.

No partial file is ever registered (nor left under a payload name), the error says what happened
and to which file, and a capture after the disk recovers (`--resume`) stores every page once.
The real thing runs on a size-limited tmpfs mounted over the payload folder (root ignores
permissions, so chmod proves nothing); where mounting is not permitted, a simulated write
failure (ENOSPC half-way through a page, EROFS on open) checks the same guarantees.
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from property_pipeline.api.client import PropertySearchClient
from property_pipeline.api.sandbox import SandboxConfig, SandboxServer
from property_pipeline.capture import Campaign, CaptureError, capture_campaign
from property_pipeline.db.schema import batch_file_status, capture_runs
from property_pipeline.store import publish
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import parse_payload_name
from property_pipeline.store.publish import sha256_file
from property_pipeline_tests.faults.exposure import API_SECRET, ExposureScan
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import cli_env, run_cli
from property_pipeline_tests.faults.invariants import data_violations

pytestmark = pytest.mark.faults

PAGE_SIZE, RECORDS = 25, 400  # 16 pages of about 55 KB
CRITERIA = {"records": RECORDS}


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(records=RECORDS, seed=5, api_key=API_SECRET)) as server:
        yield server


def _rows(engine: Engine, campaign: str) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            select(batch_file_status)
            .where(batch_file_status.c.campaign_id == campaign)
            .order_by(batch_file_status.c.batch_number)
        ).all()


def _stored_pages(root: PayloadRoot, sandbox: SandboxServer, campaign: str) -> list[int | None]:
    """The page index of every payload file of the campaign, by batch number (None: bytes not a served page)."""
    expected = {sandbox.page_body(CRITERIA, PAGE_SIZE * page, PAGE_SIZE): page for page in range(RECORDS // PAGE_SIZE)}
    files = sorted(
        root.payloads.glob(f"*/{campaign}_batch*.json"), key=lambda path: parse_payload_name(path.name).batch_number
    )
    return [expected.get(path.read_bytes()) for path in files]


def _no_partial_file_registered(engine: Engine, root: PayloadRoot, sandbox: SandboxServer, campaign: str) -> None:
    """Every file under a payload name is a whole page, registered with its checksum; no temporary is left."""
    rows = _rows(engine, campaign)
    on_disk = sorted(root.payloads.glob(f"*/{campaign}_batch*.json"))
    assert sorted(root.payloads / row.file_path for row in rows) == on_disk
    for row in rows:
        path = root.payloads / row.file_path
        assert sha256_file(path) == (row.checksum_sha256, row.file_size_bytes)
    assert None not in _stored_pages(root, sandbox, campaign), "a file under a payload name is not a whole page"
    assert not list(root.payloads.glob(f"*/.{campaign}_batch*")), "a temporary file was left behind"


# --- the real thing: a tmpfs that fills up, then turns read-only -----------------------------------


@pytest.fixture
def small_disk(root: PayloadRoot) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted over the payload folder (skipped where mounting is not permitted)."""
    target = root.payloads
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(target)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the simulated tests cover this")
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _remount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True, capture_output=True)


def test_full_then_read_only_payload_disk_registers_no_partial_file_and_resume_completes(
    engine: Engine, db_url: str, root: PayloadRoot, sandbox: SandboxServer, small_disk: Path, tmp_path: Path
) -> None:
    env = cli_env(db_url, root, PROPERTY_API_BASE_URL=sandbox.base_url, PROPERTY_API_KEY=API_SECRET)
    env["PROPERTY_API_PAGE_SIZE"] = str(PAGE_SIZE)
    criteria = json.dumps(CRITERIA)
    outputs: dict[str, str] = {}

    full = run_cli(env, "capture", "--campaign", "disk", "--criteria", criteria, cwd=tmp_path)
    outputs |= {"full stdout": full.stdout, "full stderr": full.stderr}
    assert full.returncode == 1
    assert "Traceback" not in full.stderr
    assert "No space left on device" in full.stderr and "disk_batch" in full.stderr, full.stderr
    assert "--resume" in full.stderr
    stored_before = len(_rows(engine, "disk"))
    assert 0 < stored_before < RECORDS // PAGE_SIZE
    _no_partial_file_registered(engine, root, sandbox, "disk")
    with engine.connect() as conn:
        assert conn.execute(select(capture_runs.c.state)).scalars().all() == ["INTERRUPTED"]

    _remount(small_disk, "size=8m")  # the disk recovers
    resumed = run_cli(env, "capture", "--campaign", "disk", "--criteria", criteria, "--resume", cwd=tmp_path)
    outputs |= {"resume stdout": resumed.stdout, "resume stderr": resumed.stderr}
    assert resumed.returncode == 0, resumed.stderr
    assert _stored_pages(root, sandbox, "disk") == list(range(RECORDS // PAGE_SIZE)), "every page once, in order"
    _no_partial_file_registered(engine, root, sandbox, "disk")

    _remount(small_disk, "ro")
    read_only = run_cli(env, "capture", "--campaign", "ro", "--criteria", criteria, cwd=tmp_path)
    outputs |= {"ro stdout": read_only.stdout, "ro stderr": read_only.stderr}
    assert read_only.returncode == 1 and "Traceback" not in read_only.stderr
    assert "Read-only file system" in read_only.stderr and "ro_batch1_" in read_only.stderr, read_only.stderr
    assert _rows(engine, "ro") == []
    _no_partial_file_registered(engine, root, sandbox, "ro")

    _remount(small_disk, "rw")
    recovered = run_cli(env, "capture", "--campaign", "ro", "--criteria", criteria, "--resume", cwd=tmp_path)
    outputs |= {"rw stdout": recovered.stdout, "rw stderr": recovered.stderr}
    assert recovered.returncode == 0, recovered.stderr
    assert _stored_pages(root, sandbox, "ro") == list(range(RECORDS // PAGE_SIZE))
    assert data_violations(engine) == []

    exposure = ExposureScan(API_SECRET)
    exposure.texts(outputs)
    exposure.folder(root.logs_dir)
    exposure.database(engine)
    assert exposure.leaks == []
    report_figure(
        f"disk_full_and_read_only_tmpfs_{engine.dialect.name}",
        pages_before_full=stored_before,
        pages_after_resume=RECORDS // PAGE_SIZE,
        partial_files_registered=0,
        secret_leaks=0,
        violations=0,
    )


# --- simulated: the same guarantees where no filesystem can be mounted ------------------------------


class _FailingHandle:
    """A file handle that writes half of what it is given, then fails like a full disk."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FailingHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()


@pytest.mark.parametrize("failure", ["enospc_mid_write", "erofs_on_open"])
def test_simulated_write_failure_registers_no_partial_file_and_says_what_happened(
    engine: Engine, root: PayloadRoot, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    pages_written = 0

    def failing_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        nonlocal pages_written
        if "x" in mode:  # the temporary a payload is published through
            pages_written += 1
            if pages_written == 3:
                if failure == "erofs_on_open":
                    raise OSError(errno.EROFS, "Read-only file system", str(path))
                return _FailingHandle(open(path, mode, *args, **kwargs))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(publish, "open", failing_open, raising=False)  # where every file is published
    client = PropertySearchClient(sandbox.base_url, API_SECRET, page_size=PAGE_SIZE)
    with client, pytest.raises(CaptureError) as stopped:
        capture_campaign(engine, root, client, Campaign("sim", CRITERIA))
    message = str(stopped.value)
    assert ("No space left on device" if failure == "enospc_mid_write" else "Read-only file system") in message
    assert "sim_batch3_" in message, "the error names the payload file it could not write"
    assert "stopped after 2 new pages" in message and "--resume" in message
    assert len(_rows(engine, "sim")) == 2
    _no_partial_file_registered(engine, root, sandbox, "sim")

    monkeypatch.undo()  # the disk recovers
    with PropertySearchClient(sandbox.base_url, API_SECRET, page_size=PAGE_SIZE) as client:
        report = capture_campaign(engine, root, client, Campaign("sim", CRITERIA), resume=True)
    assert report.complete and report.resumed_from_index == 2 * PAGE_SIZE
    assert _stored_pages(root, sandbox, "sim") == list(range(RECORDS // PAGE_SIZE))
    _no_partial_file_registered(engine, root, sandbox, "sim")
    assert API_SECRET not in message
    report_figure(
        f"disk_simulated_{failure}_{engine.dialect.name}",
        pages_before_failure=2,
        pages_after_resume=RECORDS // PAGE_SIZE,
        partial_files_registered=0,
        violations=0,
    )
