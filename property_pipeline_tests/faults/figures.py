"""Figures of the fault scenarios: a `FIGURE ...` line on stdout, a JSON record in test-artifacts/faults.json.

The JSON file (git-ignored) and the terminal summary (see conftest.py) make the figures visible
whether or not pytest captures output (`-s`).
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(os.environ.get("PROPERTY_PIPELINE_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
FIGURES_FILE = ARTIFACTS_DIR / "faults.json"

# Collected in this session, printed again by the terminal summary.
SESSION_FIGURES: list[str] = []


def report_figure(scenario: str, **figures: Any) -> str:
    """Print `FIGURE <scenario> key=value ...` and record it in test-artifacts/faults.json (keyed by scenario)."""
    line = "FIGURE " + scenario + " " + " ".join(f"{key}={_show(value)}" for key, value in figures.items())
    print(line, flush=True)
    SESSION_FIGURES.append(line)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS_DIR / ".faults.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other engineers' sessions may write at the same time
        try:
            existing = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
        except json.JSONDecodeError:
            existing = {}
        existing[scenario] = {"recorded_at": datetime.now(UTC).isoformat(timespec="seconds"), **figures}
        temporary = FIGURES_FILE.with_suffix(".tmp")
        temporary.write_text(json.dumps(existing, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(temporary, FIGURES_FILE)
    return line


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
