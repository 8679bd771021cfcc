"""Target 4: registration against hashing and parsing the same files, and a sensor tick against history.

Goals: `register` of new files at most 1.5x the time of just reading, hashing and parsing them; a tick
of the registration sensor's core (`scan_new_files` from the cursor, then `register_paths`) with
50,000 files already registered at most 3x a tick with 100 registered, both with 100 new files.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

from sqlalchemy import insert

from benchmarks.common import TargetResult, log, python_child, require_ok, scratch_folder, sizes_for, throwaway_database
from benchmarks.data import BASE_TIME, dataset, small_files
from property_pipeline import registration
from property_pipeline.db.engine import create_db_engine
from property_pipeline.db.schema import batch_file_status, utcnow
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.layout import PAYLOADS_DIR, parse_payload_name


def _warm(paths: list[Path]) -> None:
    """Read the files once, so neither method pays for cold reads that the other then avoids."""
    for path in paths:
        path.read_bytes()


def _history(db_url: str, logs: Path, count: int) -> int:
    """`count` small files already registered (COMPLETED); returns the sensor cursor after them."""
    folder = logs / PAYLOADS_DIR / BASE_TIME.strftime("%Y-%m")
    paths = small_files(folder, count, first_batch=1)
    rows = []
    for path in paths:
        body = path.read_bytes()
        name = parse_payload_name(path.name)
        rows.append(
            {
                "file_path": f"{folder.name}/{path.name}",
                "campaign_id": name.campaign_id,
                "batch_number": name.batch_number,
                "month": folder.name,
                "status": "COMPLETED",
                "checksum_sha256": hashlib.sha256(body).hexdigest(),
                "file_size_bytes": len(body),
                "captured_at": name.captured_at,
                "created_at": utcnow(),
                "properties_count": 1,
                "success_count": 1,
                "error_count": 0,
            }
        )
    engine = create_db_engine(db_url)
    try:
        with engine.begin() as conn:
            for start in range(0, len(rows), 5000):
                conn.execute(insert(batch_file_status), rows[start : start + 5000])
        if not hasattr(registration, "scan_new_files"):
            return 0  # no cursor: a tick is a full scan
        # The cursor a sensor holds after it has seen all of them: one scan from the beginning.
        scan = registration.scan_new_files(engine, PayloadRoot(logs), 0, max_files=10, settled_before_ns=time.time_ns())
    finally:
        engine.dispose()
    if scan.paths:
        raise RuntimeError(f"history files not seen as registered: {scan.paths[:3]}")
    return scan.watermark_ns


def run(mode: str) -> TargetResult:
    sizes = sizes_for(mode)
    data = dataset(sizes.register_files)
    files = data.as_argument()
    new_for_tick = dataset(sizes.tick_new_files)
    histories = (sizes.tick_new_files, sizes.history_files)
    result = TargetResult(
        "registration",
        f"4. Registration of {data.files:,} new files; sensor tick with {histories[1]:,} vs {histories[0]} registered",
        mode,
        setup={"register_files": data.files, "tick_new_files": new_for_tick.files, "history": list(histories)},
    )
    _warm(list(data.paths()))
    values: dict[str, list[float]] = defaultdict(list)
    cores: set[str] = set()
    for repeat in range(sizes.repeats):
        for name in ("register", "hash_parse") if repeat % 2 == 0 else ("hash_parse", "register"):
            log(f"registration: repeat {repeat + 1}/{sizes.repeats}: {name}")
            if name == "hash_parse":
                child = python_child("benchmarks.baselines", "hash_and_parse", json.dumps({"data": files}))
                require_ok(child, "hash and parse baseline")
                values[name].append(child.json()["seconds"])
                continue
            with throwaway_database("register") as url, scratch_folder("register") as logs:
                data.install(logs)
                child = python_child(
                    "benchmarks.pipeline", "register", json.dumps({"db_url": url, "logs_dir": str(logs)})
                )
                require_ok(child, "register")
                measured = child.json()
                result.check(
                    f"register registered every file (repeat {repeat + 1})",
                    measured["registered"] == data.files and measured["skipped"] == 0,
                    json.dumps(measured),
                )
                values[name].append(measured["seconds"])
        for history in histories if repeat % 2 == 0 else reversed(histories):
            log(f"registration: repeat {repeat + 1}/{sizes.repeats}: sensor tick, {history:,} registered")
            with throwaway_database("tick") as url, scratch_folder("tick") as logs:
                cursor = _history(url, logs, history)
                new_for_tick.install(logs)  # linked in now: their inode change time is after the cursor
                arguments = {"db_url": url, "logs_dir": str(logs), "since_ns": cursor, "max_files": 500}
                child = python_child("benchmarks.pipeline", "sensor_tick", json.dumps(arguments))
                require_ok(child, "sensor tick")
                measured = child.json()
                result.check(
                    f"tick with {history:,} registered registered the {new_for_tick.files} new files",
                    measured["registered"] == new_for_tick.files,
                    json.dumps(measured),
                )
                values[f"tick_{history}"].append(measured["seconds"])
                cores.add(measured["core"])
    result.method("register", f"register {data.files:,} new files ({data.records:,} records)", "s", values["register"])
    result.method("hash_parse", "read + SHA-256 + orjson parse of the same files", "s", values["hash_parse"])
    for history in histories:
        result.method(
            f"tick_{history}",
            f"sensor tick: {new_for_tick.files} new files, {history:,} already registered",
            "s",
            values[f"tick_{history}"],
        )
    result.ratio(
        "register / hash+parse (time)",
        [a / b for a, b in zip(values["register"], values["hash_parse"], strict=True)],
        1.5,
        at_most=True,
    )
    result.ratio(
        f"tick with {histories[1]:,} / with {histories[0]} registered (time)",
        [a / b for a, b in zip(values[f"tick_{histories[1]}"], values[f"tick_{histories[0]}"], strict=True)],
        3.0,
        at_most=True,
    )
    result.notes.append(
        f"sensor tick measured as {', '.join(sorted(cores))}: what property_pipeline/defs/sensors.py runs per tick "
        "(scan_new_files from the cursor, then register_paths)"
    )
    return result
