"""`python -m benchmarks --quick` (what `make bench-quick` runs) works end to end: every target runs in its own
process, the exactly-once checks pass, and the results are written as JSON. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGETS = [
    "processing",
    "memory",
    "sqlite",
    "registration",
    "capture",
    "parallel",
    "replay",
    "recapture",
    "registry",
    "cli",
]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_quick_benchmark_runs_every_target_and_writes_its_results(postgres_url: str, tmp_path: Path) -> None:
    output = tmp_path / "quick.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    document = json.loads(output.read_text())
    assert document["mode"] == "quick"
    assert [result["target"] for result in document["results"]] == TARGETS
    for result in document["results"]:
        assert "error" not in result, result
        assert result["checks"] and all(check["ok"] for check in result["checks"]), result["checks"]
        assert result["ratios"], f"{result['target']} reported no ratio"
        for method in result["methods"].values():
            assert method["values"] and method["min"] <= method["median"] <= method["max"]
    assert "| target / method |" in run.stdout and document["table"] in run.stdout
    # Where the time goes: the processing target accounts the CPU of the pipeline's command and of its floors,
    # client and server, per repeat.
    processing = next(result for result in document["results"] if result["target"] == "processing")
    for name in ("process", "same_table_copy", "least_pipeline"):
        method = processing["methods"][name]
        assert len(method["client_cpu_seconds"]) == len(method["values"]), method
        assert all(seconds > 0 for seconds in method["client_cpu_seconds"]), method
        assert len(method["server_cpu_seconds"]) == len(method["values"]), method
        assert any(seconds > 0 for seconds in method["server_cpu_seconds"]), method
    # The least exactly-once pipeline, the reference for what any `process` could reach, ran on both workloads and
    # passed the same exactly-once checks as `process`.
    recapture = next(result for result in document["results"] if result["target"] == "recapture")
    assert any(check["name"].startswith("exactly once after the least pipeline") for check in processing["checks"])
    assert any(check["name"].startswith("least_pipeline: every property linked") for check in recapture["checks"])
    assert recapture["methods"]["least_pipeline"]["values"]
