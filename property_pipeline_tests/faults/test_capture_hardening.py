"""Capture that cannot be made to fetch everything, wait forever, or swallow a page it could never load.

An unknown campaign or empty criteria would search the provider's whole dataset (billed to the
user): a usage error unless explicitly allowed. A broken campaigns file is an error naming the
file and line. A page has a total deadline, however slowly its bytes come, and is then retried
like any transient failure. A page above the payload size limit is refused while it streams,
never stored, never read whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from property_pipeline.cli import main
from property_pipeline_tests.factories import make_page, make_record
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import REPO
from property_pipeline_tests.faults.scripted_api import Body, ScriptedApi

pytestmark = pytest.mark.faults

MiB = 1024 * 1024
GOOD_PAGE = make_page([make_record(f"good-{i}") for i in range(3)])


def _env(tmp_path: Path, api: ScriptedApi, **extra: str) -> dict[str, str]:
    return {
        "PROPERTY_PIPELINE_DB_URL": f"sqlite:///{tmp_path / 'p.db'}",
        "PROPERTY_PIPELINE_LOGS_DIR": str(tmp_path / "logs"),
        "PROPERTY_PIPELINE_CAMPAIGNS_FILE": str(tmp_path / "campaigns.yaml"),
        "PROPERTY_API_BASE_URL": api.base_url,
        **extra,
    }


def _capture(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["capture", *args], env=env)


def _stored(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "logs" / "property_payloads").glob("*/*.json"))


def test_an_unknown_campaign_or_empty_criteria_never_capture_the_whole_dataset(tmp_path: Path) -> None:
    (tmp_path / "campaigns.yaml").write_text(
        "campaigns:\n  - {id: tx, criteria: {state: TX}}\n  - {id: bare}\n"
        "  - {id: everything, allow_unfiltered: true}\n"
    )
    with ScriptedApi([(200, {}, GOOD_PAGE)]) as api:
        env = _env(tmp_path, api)
        refused = {
            "unknown": _capture(env, "--campaign", "nope"),
            "empty criteria": _capture(env, "--campaign", "nope", "--criteria", "{}"),
            "campaign without criteria": _capture(env, "--campaign", "bare"),
        }
        for what, result in refused.items():
            assert result.exit_code == 2, (what, result.output)
            assert "Traceback" not in result.output
        assert "not in the campaigns file" in refused["unknown"].output
        assert "whole dataset" in refused["empty criteria"].output
        assert api.requests == [], "nothing was fetched"
        allowed = _capture(env, "--campaign", "nope", "--criteria", "{}", "--allow-unfiltered")
        configured = _capture(env, "--campaign", "everything")
        filtered = _capture(env, "--campaign", "tx")
    assert (allowed.exit_code, configured.exit_code, filtered.exit_code) == (0, 0, 0), allowed.output
    assert [orjson.loads(body) for body in api.requests] == [
        {"size": 400, "resultIndex": 0},
        {"size": 400, "resultIndex": 0},
        {"state": "TX", "size": 400, "resultIndex": 0},
    ]
    report_figure("capture_unfiltered_refused", refused=len(refused), requests_before_opt_in=0)


def test_a_campaigns_file_that_does_not_parse_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "campaigns.yaml").write_text("campaigns:\n  - id: tx\n    criteria: {state: TX\n  - id: fl\n")
    with ScriptedApi([(200, {}, GOOD_PAGE)]) as api:
        env = _env(tmp_path, api)
        for args in (["--campaign", "tx"], ["--all"]):
            result = _capture(env, *args)
            assert result.exit_code == 2, result.output
            assert "campaigns.yaml" in result.output and "line 3" in result.output, result.output
            assert "Traceback" not in result.output
    assert api.requests == []


def _drip(bytes_total: int) -> Iterator[bytes]:
    yield from (b" " for _ in range(bytes_total))


@pytest.mark.timeout(120)
def test_a_page_that_drips_is_abandoned_at_its_deadline_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "campaigns.yaml").write_text("campaigns:\n  - {id: slow, criteria: {state: TX}}\n")
    dripping = Body(_drip(10_000), drip_seconds=0.2, length=10_000)  # 2,000 s to send it all
    with ScriptedApi([(200, {}, dripping), (200, {}, GOOD_PAGE)]) as api:
        result = _capture(_env(tmp_path, api, PROPERTY_API_PAGE_DEADLINE_SECONDS="2"), "--campaign", "slow", "--json")
    assert result.exit_code == 0, result.output
    capture = json.loads(result.stdout)["captures"][0]
    assert (capture["pages"], capture["records"], capture["retries"]) == (1, 3, 1)
    assert any("page deadline" in line for line in caplog.messages), "the abandoned attempt is logged"
    assert [path.read_bytes() for path in _stored(tmp_path)] == [GOOD_PAGE]
    report_figure("capture_page_deadline", deadline_seconds=2, attempts=2, stored_pages=1)


def _huge_page(size: int) -> Iterator[bytes]:
    """A well-formed page of about `size` bytes, sent in 1 MiB chunks (chunked encoding: no length announced)."""
    record = orjson.dumps(make_record("X", owner1LastName="n" * 1800))
    per_chunk = MiB // (len(record) + 1)
    count = per_chunk * (size // MiB)
    yield b'{"statusCode":200,"resultCount":%d,"resultIndex":0,"recordCount":%d,"data":[' % (count, count)
    chunk = b",".join([record] * per_chunk)
    for number in range(size // MiB):
        yield (b"," if number else b"") + chunk
    yield b"]}"


# Runs the CLI and writes its own peak resident memory (VmHWM) at exit.
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_page_above_the_size_limit_is_refused_while_it_streams_and_never_stored(tmp_path: Path) -> None:
    (tmp_path / "campaigns.yaml").write_text("campaigns:\n  - {id: big, criteria: {state: TX}}\n")
    with ScriptedApi([(200, {}, Body(_huge_page(200 * MiB)))]) as api:
        env = {**_env(tmp_path, api), "PYTHONPATH": str(REPO), "RSS_REPORT": str(tmp_path / "rss.txt")}
        result = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, "capture", "--campaign", "big"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
    peak_mb = int((tmp_path / "rss.txt").read_text()) / 1024
    assert result.returncode == 1, result.stderr
    assert "PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES" in result.stderr and "not stored" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(api.requests) == 1, "a page that is too large is not retried: it would be as large again"
    assert _stored(tmp_path) == [] and not list((tmp_path / "logs" / "property_payloads").glob("*/.*"))
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB: the page was buffered beyond the 64 MiB limit"
    status = CliRunner().invoke(main, ["status", "--json"], env=_env(tmp_path, api))
    assert json.loads(status.stdout)["months"] == [], "nothing was registered"

    announced = Body(iter([b"x" * MiB]), length=300 * MiB)  # refused from its Content-Length, before reading
    with ScriptedApi([(200, {}, announced)]) as api:
        small_limit = _env(tmp_path, api, PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES=str(MiB))
        refused = _capture(small_limit, "--campaign", "big")
    assert refused.exit_code == 1 and "314,572,800 bytes announced" in refused.output, refused.output
    report_figure("capture_huge_page_refused", page_mb=200, limit_mb=64, peak_rss_mb=round(peak_mb), stored=0)


def test_capture_errors_read_as_sentences(tmp_path: Path) -> None:
    (tmp_path / "campaigns.yaml").write_text("campaigns:\n  - {id: down, criteria: {state: TX}}\n")
    with ScriptedApi([(503, {}, b'{"message": "maintenance"}')]) as api:
        result = _capture(_env(tmp_path, api, PROPERTY_API_MAX_ATTEMPTS="2"), "--campaign", "down")
    assert result.exit_code == 1
    assert ".." not in result.output, result.output
