"""Object-storage discovery at scale: the cost of one registration-sensor pass (list the recent months' prefixes
and one older month, compare with the database, register the new objects) with 50,000 objects already
registered, on moto's S3 server on loopback (started here) and a SQLite database.

    .venv/bin/python -m benchmarks.s3_discovery [--objects 50000] [--new 10] [--repeats 3]

Two layouts of the same history: spread over 25 months (2,000 objects each), and all in the current month
(the worst case: every pass lists that month in full). Prints one JSON line per layout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from property_pipeline.db.engine import create_db_engine, upgrade
from property_pipeline.db.status import NewPayloadFile, register_files
from property_pipeline.defs.sensors import recent_months
from property_pipeline.registration import register_objects, scan_new_objects
from property_pipeline.store.layout import PayloadName, month_of
from property_pipeline.store.s3 import S3Store, checksum_header
from property_pipeline_tests.factories import make_page, make_record
from property_pipeline_tests.s3server import MotoServer, client_for

BODY = make_page([make_record("p-1")])


def moments(count: int, months: int, now: datetime) -> list[datetime]:
    """`count` capture times spread evenly over the `months` months ending with the current one."""
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    per_month = count // months
    out = []
    for back in range(months):
        index = first.year * 12 + first.month - 1 - back
        start = first.replace(year=index // 12, month=index % 12 + 1)
        out += [start + timedelta(seconds=second) for second in range(per_month)]
    return out


def fill(store: S3Store, engine_url: str, captured: list[datetime]) -> None:
    """Put one object per moment into the bucket and register them all (rows written directly, in bulk)."""
    rows = []
    for index, moment in enumerate(captured):
        name = PayloadName("history", index + 1, moment)
        body = BODY.replace(b'"p-1"', f'"p-{index}"'.encode())
        rows.append((f"{month_of(moment)}/{name.file_name}", body, moment, index + 1))

    def put(row: tuple[str, bytes, datetime, int]) -> None:
        digest = hashlib.sha256(row[1]).hexdigest()
        store.client.put_object(
            Bucket=store.bucket,
            Key=store.key(row[0]),
            Body=row[1],
            IfNoneMatch="*",
            ChecksumSHA256=checksum_header(digest),
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, rows))
    engine = create_db_engine(engine_url)
    candidates = [
        NewPayloadFile(path, "history", batch, month_of(moment), hashlib.sha256(body).hexdigest(), len(body), moment, 1)
        for path, body, moment, batch in rows
    ]
    for start in range(0, len(candidates), 2000):
        with engine.begin() as conn:
            register_files(conn, candidates[start : start + 2000], "benchmark")
    engine.dispose()


class RequestCounter:
    """Counts the S3 requests a pass makes, by operation, and the time spent waiting for their answers."""

    def __init__(self, store: S3Store) -> None:
        self.counts: dict[str, int] = {}
        self.seconds = 0.0
        self._sent = 0.0
        events = store.client.meta.events
        events.register("before-send.s3", self._before)
        events.register("needs-retry.s3", self._after)

    def _before(self, **kwargs: object) -> None:
        self._sent = time.perf_counter()

    def _after(self, event_name: str, **kwargs: object) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        self.counts[operation] = self.counts.get(operation, 0) + 1
        self.seconds += time.perf_counter() - self._sent

    def reset(self) -> None:
        self.counts, self.seconds = {}, 0.0


def one_pass(
    store: S3Store, engine_url: str, new: int, swept: str | None, now: datetime, counter: RequestCounter
) -> tuple[float, int, str | None]:
    """Write `new` objects into the current month, then time one discovery pass that registers them."""
    base = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(hours=1)
    for index in range(new):
        store.write_payload(
            f"new{uuid.uuid4().hex[:6]}",
            1,
            BODY.replace(b'"p-1"', f'"n-{index}-{time.time_ns()}"'.encode()),
            base + timedelta(microseconds=index),
        )
    engine = create_db_engine(engine_url)
    counter.reset()
    started = time.perf_counter()
    scan = scan_new_objects(engine, store, recent_months=recent_months(now), swept=swept, max_files=1000)
    report = register_objects(engine, store, scan.objects, "benchmark")
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert len(report.registered) == new, (len(report.registered), new)
    return elapsed, scan.months_listed, scan.sweep_month


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=50_000)
    parser.add_argument("--new", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", default="25,1", help="months the history is spread over, one run each")
    args = parser.parse_args()
    server = MotoServer()
    now = datetime.now(UTC)
    try:
        for months in (int(part) for part in args.layouts.split(",")):
            layout = f"{months} months"
            with tempfile.TemporaryDirectory() as scratch:
                bucket = f"bench-{uuid.uuid4().hex[:12]}"
                client = client_for(server.url)
                client.create_bucket(Bucket=bucket)
                store = S3Store(bucket, "landing", client=client)
                url = f"sqlite:///{Path(scratch) / 'bench.db'}"
                engine = create_db_engine(url)
                upgrade(engine)
                engine.dispose()
                started = time.perf_counter()
                fill(store, url, moments(args.objects, months, now))
                filled = time.perf_counter() - started
                times, waits, swept, listed = [], [], None, 0
                counter = RequestCounter(store)
                for _ in range(args.repeats):
                    elapsed, listed, swept = one_pass(store, url, args.new, swept, now, counter)
                    times.append(elapsed)
                    waits.append(counter.seconds)
                    requests = dict(counter.counts)
                print(
                    json.dumps(
                        {
                            "layout": layout,
                            "existing_objects": args.objects,
                            "new_objects_per_pass": args.new,
                            "months_listed_per_pass": listed,
                            "pass_seconds": [round(t, 3) for t in times],
                            "median_pass_seconds": round(statistics.median(times), 3),
                            "median_seconds_waiting_for_s3": round(statistics.median(waits), 3),
                            "requests_per_pass": requests,  # the last pass's, writes of the new objects excluded
                            "fill_seconds": round(filled, 1),
                        }
                    ),
                    flush=True,
                )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
