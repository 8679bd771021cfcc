"""Small helpers shared by the fault scenarios: running the CLI in a subprocess, polling with a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from property_pipeline.store.folder import PayloadRoot

T = TypeVar("T")
REPO = Path(__file__).parents[2]


def cli_env(db_url: str, root: PayloadRoot, **extra: str) -> dict[str, str]:
    """The environment of a `property-pipeline` subprocess: this database and data root, nothing inherited."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PROPERTY_PIPELINE_", "PROPERTY_API_"))
    }
    env.update(
        PROPERTY_PIPELINE_DB_URL=db_url,
        PROPERTY_PIPELINE_LOGS_DIR=str(root.logs_dir),
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "property_pipeline", *args]


def run_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `python -m property_pipeline ARGS` to completion and return its exit code and output."""
    return subprocess.run(cli_command(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def poll(check: Callable[[], T | None], *, deadline_seconds: float, interval: float = 0.05, what: str = "") -> T:
    """Call `check` until it returns something truthy; fail with `what` when the deadline passes."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {deadline_seconds}s waiting for {what or check}")
        time.sleep(interval)
