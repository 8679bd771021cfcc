"""Run one target in this process and write its results as JSON: `python -m benchmarks.run_target NAME MODE OUT`."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

TARGETS = {
    "processing": "benchmarks.target_processing",
    "memory": "benchmarks.target_memory",
    "sqlite": "benchmarks.target_sqlite",
    "registration": "benchmarks.target_registration",
    "capture": "benchmarks.target_capture",
    "parallel": "benchmarks.target_parallel",
    "replay": "benchmarks.target_replay",
    "recapture": "benchmarks.target_recapture",
    "registry": "benchmarks.target_registry",
    "cli": "benchmarks.target_cli",
}

if __name__ == "__main__":
    name, mode, output = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    result = importlib.import_module(TARGETS[name]).run(mode)
    output.write_text(json.dumps(result.as_json(), indent=2, default=str))
