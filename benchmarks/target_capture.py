"""Target 5: `capture` against a bare loop that fetches the same pages and writes each with fsync.

Goal: capture at least 0.7x the pages per second of the bare loop. The sandbox API runs in its own
process on loopback and is restarted for every measurement, so neither method gets the other's
cached pages.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.common import (
    REPO,
    TargetResult,
    log,
    python_child,
    require_ok,
    scratch_folder,
    sizes_for,
    throwaway_database,
)

SEED = 20261101


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def sandbox(records: int) -> Iterator[str]:
    """`property-pipeline sandbox-api` in a child process; its base URL once it accepts connections."""
    port = _free_port()
    command = ["sandbox-api", "--port", str(port), "--records", str(records), "--seed", str(SEED)]
    process = subprocess.Popen(
        [sys.executable, "-m", "property_pipeline", *command],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the sandbox API did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(mode: str) -> TargetResult:
    sizes = sizes_for(mode)
    pages = sizes.capture_pages
    records = pages * 400
    criteria = {"records": records}
    result = TargetResult(
        "capture",
        f"5. Capture of {pages} pages ({records:,} records) from the sandbox API on loopback",
        mode,
        setup={"pages": pages, "records": records},
    )
    values: dict[str, list[float]] = defaultdict(list)
    for repeat in range(sizes.repeats):
        for name in ("capture", "bare") if repeat % 2 == 0 else ("bare", "capture"):
            log(f"capture: repeat {repeat + 1}/{sizes.repeats}: {name}")
            with sandbox(records) as base_url, scratch_folder("capture") as folder:
                if name == "bare":
                    arguments = {"base_url": base_url, "pages": pages, "criteria": criteria, "folder": str(folder)}
                    child = python_child("benchmarks.baselines", "bare_fetch", json.dumps(arguments))
                    require_ok(child, "bare fetch loop")
                    values[name].append(pages / child.json()["seconds"])
                    continue
                with throwaway_database("capture") as url:
                    arguments = {
                        "db_url": url,
                        "logs_dir": str(folder),
                        "base_url": base_url,
                        "pages": pages,
                        "criteria": criteria,
                    }
                    child = python_child("benchmarks.pipeline", "capture", json.dumps(arguments))
                    require_ok(child, "capture")
                    measured = child.json()
                    result.check(
                        f"capture stored and registered {pages} pages (repeat {repeat + 1})",
                        measured["pages"] == pages and measured["duplicates"] == 0,
                        json.dumps(measured),
                    )
                    values[name].append(pages / measured["seconds"])
    result.method(
        "capture",
        "capture: fetch, atomic write + fsync, register PENDING, advance the run",
        "pages/s",
        values["capture"],
    )
    result.method("bare", "bare loop: same HTTP session, write + fsync", "pages/s", values["bare"])
    result.ratio(
        "capture / bare fetch+fsync loop",
        [a / b for a, b in zip(values["capture"], values["bare"], strict=True)],
        0.7,
    )
    return result
