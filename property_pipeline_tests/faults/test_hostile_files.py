"""Hostile files: oversized payloads, traversal, absolute paths, symlinks out of the data root, odd unicode.

None crashes a run, none is read from outside the data root, and a 100 MB payload is refused
without being read into memory (peak RSS of the register and process commands is measured).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, func, insert, select

from property_pipeline.db.schema import batch_file_status, properties, utcnow
from property_pipeline.integrity import verify_files
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.factories import BASE_TIME, make_page, make_record, write_page
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import cli_command, cli_env
from property_pipeline_tests.faults.invariants import data_violations, statuses

pytestmark = pytest.mark.faults

MONTH = "2026-11"
GOOD_NAME = "camp_batch1_20261101T000000Z.json"
MiB = 1024 * 1024
# Peak RSS allowed for `register` or `process` while a 100 MB payload sits in the data root: the
# interpreter with its imports takes about 60 MB; reading the file whole would add 100 MB or more.
RSS_BOUND_MB = 120


def _outside_payload(tmp_path: Path, tag: str) -> Path:
    """A valid payload outside the data root whose ids would betray that it was read."""
    outside = tmp_path / "outside" / f"{tag}.json"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(make_page([make_record(f"OUTSIDE-{tag}-{i}") for i in range(3)]))
    return outside


def _outside_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(properties).where(properties.c.property_id.like("OUTSIDE-%"))
        ).scalar_one()


def test_registration_skips_hostile_names_and_links_and_never_reads_outside_the_root(
    engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    month = root.payloads / MONTH
    month.mkdir(parents=True)
    good = write_page(root, [make_record("good-1")], batch=1)
    hostile = {
        # name → how it is made
        "camp_batch2_20261101T000000Z.json": lambda p: p.symlink_to(_outside_payload(tmp_path, "link")),
        "camp_batch3_20261101T000000Z.json": lambda p: p.mkdir(),
        "camp_batch4_20261101T000000Z.json": lambda p: os.mkfifo(p),  # must not block the scan
        "camp_batch٣_20261101T000000Z.json": lambda p: p.write_bytes(make_page([make_record("arabic-digit")])),
        "camp_batch5_２0261101T000000Z.json": lambda p: p.write_bytes(make_page([make_record("fullwidth")])),
        "cämp_batch6_20261101T000000Z.json": lambda p: p.write_bytes(make_page([make_record("umlaut")])),
        "camp_batch7_20261101T000000Z.json\u200b": lambda p: p.write_bytes(b"{}"),
        "camp\u202e_batch8_20261101T000000Z.json": lambda p: p.write_bytes(b"{}"),
        "camp_batch9_20261101T000000Z\n.json": lambda p: p.write_bytes(b"{}"),
        "x" * 250 + ".json": lambda p: p.write_bytes(b"{}"),
    }
    for name, make in hostile.items():
        make(month / name)
    # A month folder that is a symlink to a folder outside the root, and one named with odd digits.
    (tmp_path / "outside-month").mkdir()
    (tmp_path / "outside-month" / GOOD_NAME.replace("batch1", "batch10")).write_bytes(
        _outside_payload(tmp_path, "month").read_bytes()
    )
    (root.payloads / "2026-10").symlink_to(tmp_path / "outside-month")
    (root.payloads / "٢٠٢٦-11").mkdir()
    (root.payloads / "٢٠٢٦-11" / GOOD_NAME).write_bytes(make_page([make_record("arabic-month")]))

    report = register_unregistered(engine, root, "test")
    assert [r.file_path for r in report.registered] == [good.relative_path]
    skipped = {Path(path).name: reason for path, reason in report.skipped}
    assert "camp_batch2_20261101T000000Z.json" in skipped and "symlink" in skipped["camp_batch2_20261101T000000Z.json"]
    assert GOOD_NAME.replace("batch1", "batch10") in skipped, "a file reached through a symlinked month is refused"
    assert "outside the data root" in skipped[GOOD_NAME.replace("batch1", "batch10")]

    result = PayloadProcessor(engine, root).run()
    assert (result.completed, result.failed) == (1, 0)
    assert _outside_rows(engine) == 0
    assert data_violations(engine) == []
    report_figure(
        f"hostile_names_registration_{engine.dialect.name}",
        candidates=len(hostile) + 3,
        registered=len(report.registered),
        skipped=len(report.skipped),
        read_outside=0,
        violations=0,
    )


@pytest.mark.parametrize(
    "file_path",
    [
        "../../outside/evil.json",
        "/etc/passwd",
        f"{MONTH}/../../../outside/evil.json",
        f"{MONTH}/..\\..\\evil.json",
        f"{MONTH}/camp_batch٣_20261101T000000Z.json",
        f"٢٠٢٦-11/{GOOD_NAME}",
        f"{MONTH}/{GOOD_NAME}/../{GOOD_NAME}",
        f"{MONTH}//{GOOD_NAME}",
    ],
)
def test_processing_refuses_registered_paths_that_leave_the_data_root(
    engine: Engine, root: PayloadRoot, tmp_path: Path, file_path: str
) -> None:
    """A status row with a hostile path (a buggy or compromised registrar) fails alone; the run goes on."""
    _outside_payload(tmp_path, "evil")
    good = write_page(root, [make_record("good-1")], batch=1)
    register_unregistered(engine, root, "test")
    with engine.begin() as conn:
        conn.execute(
            insert(batch_file_status).values(
                file_path=file_path,
                campaign_id="camp",
                batch_number=99,
                month=MONTH,
                status="PENDING",
                checksum_sha256="0" * 64,
                file_size_bytes=10,
                captured_at=BASE_TIME,
                created_at=utcnow(),
            )
        )
    report = PayloadProcessor(engine, root).run()
    outcomes = {outcome.file_path: outcome for outcome in report.outcomes}
    assert outcomes[good.relative_path].status == "COMPLETED"
    assert outcomes[file_path].status == "FAILED"
    error = outcomes[file_path].error or ""
    assert "not of the form" in error or "does not follow" in error, error
    assert _outside_rows(engine) == 0
    assert not any(tmp_path.joinpath("outside").glob("*.tmp")), "nothing written outside the root"
    problems = verify_files(engine, root).problems
    assert [p.file_path for p in problems] == [file_path]


def test_payload_swapped_for_a_symlink_after_registration_is_refused(
    engine: Engine, root: PayloadRoot, tmp_path: Path
) -> None:
    stored = write_page(root, [make_record("good-1")], batch=1)
    register_unregistered(engine, root, "test")
    stored.path.unlink()
    stored.path.symlink_to(_outside_payload(tmp_path, "swap"))
    report = PayloadProcessor(engine, root).run()
    assert [outcome.status for outcome in report.outcomes] == ["FAILED"]
    assert "outside the data root" in (report.outcomes[0].error or "")
    assert _outside_rows(engine) == 0


def _big_page(target_bytes: int) -> bytes:
    """A well-formed page of about `target_bytes`: it would load if it were read."""
    record = orjson.dumps(make_record("X", owner1LastName="n" * 1800))
    count = target_bytes // (len(record) + 8)
    head = b'{"statusCode":200,"resultCount":%d,"resultIndex":0,"recordCount":%d,"data":[' % (count, count)
    body = b",".join(record.replace(b'"id":"X"', b'"id":"big-%d"' % i, 1) for i in range(count))
    return head + body + b"]}"


# Runs the CLI and writes its own peak resident memory (VmHWM) at exit. wait4's ru_maxrss would also
# count the memory of the forking pytest process, which holds the 100 MB page.
RSS_PROBE = """
import atexit, os, sys

def report_peak():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["RSS_REPORT"], "w") as out:
        out.write(peak)

atexit.register(report_peak)
from property_pipeline.cli import main
sys.argv[0] = "property-pipeline"
main()
"""


def _peak_rss_mb(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, float, str]:
    """Run a CLI command; its exit status, peak resident memory in MB (VmHWM) and stderr."""
    report = cwd / "rss.txt"
    result = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, *args],
        env={**env, "RSS_REPORT": str(report)},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    return result.returncode, int(report.read_text()) / 1024, result.stderr


@pytest.mark.slow
def test_a_100_mb_payload_is_refused_without_being_read_into_memory(
    engine: Engine, db_url: str, root: PayloadRoot, tmp_path: Path
) -> None:
    big = root.payloads / MONTH / "camp_batch2_20261101T000100Z.json"
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(_big_page(100 * MiB))
    size = big.stat().st_size
    assert size >= 99 * MiB
    small = write_page(root, [make_record("small-1")], batch=1, captured_at=BASE_TIME - timedelta(days=1))
    env = cli_env(db_url, root)

    code, register_rss, stderr = _peak_rss_mb(["register"], env, tmp_path)
    assert code == 0, stderr
    code, process_rss, stderr = _peak_rss_mb(["process"], env, tmp_path)
    assert code == 1, "a FAILED file makes `process` exit 1"
    assert "Traceback" not in stderr
    assert "PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES" in stderr

    with engine.connect() as conn:
        row = conn.execute(select(batch_file_status).where(batch_file_status.c.file_path.like("%batch2%"))).one()
    assert row.status == "FAILED" and row.file_size_bytes == size
    assert "PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES" in row.error_details and f"{size:,}" in row.error_details
    assert statuses(engine)[1] == "COMPLETED", f"the small file {small.relative_path} still loads"
    assert data_violations(engine) == []
    assert register_rss < RSS_BOUND_MB and process_rss < RSS_BOUND_MB, (register_rss, process_rss)
    report_figure(
        f"payload_100mb_{engine.dialect.name}",
        payload_mb=round(size / MiB, 1),
        register_peak_rss_mb=round(register_rss, 1),
        process_peak_rss_mb=round(process_rss, 1),
        bound_mb=RSS_BOUND_MB,
        violations=0,
    )


def test_the_size_limit_is_configurable_and_checked(db_url: str, root: PayloadRoot, tmp_path: Path) -> None:
    write_page(root, [make_record(f"r{i}") for i in range(20)], batch=1)
    env = cli_env(db_url, root, PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES="4096")
    assert subprocess.run(cli_command("register"), env=env, cwd=tmp_path, capture_output=True).returncode == 0
    refused = subprocess.run(cli_command("process"), env=env, cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 1 and "above the limit" in refused.stderr
    bad = subprocess.run(
        cli_command("status"),
        env=cli_env(db_url, root, PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES="lots"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES" in bad.stderr
