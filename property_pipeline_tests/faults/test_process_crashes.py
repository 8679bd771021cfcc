"""SIGKILL of a processor at random points, many times over: afterwards one clean run loses nothing.

A zygote process imports the pipeline once and forks one processor per iteration. Each child
arms one kill point (a monkeypatched function plus a call counter) and SIGKILLs itself exactly
there: before a claim, inside the claim's transaction, after the claim, after the processing
copy, in the middle of parsing, inside the data transaction (before and after COMPLETED is
written), after the commit before the marker, inside the FAILED transaction, or inside the
requeue of expired leases. After every kill the database is checked (data ⇔ COMPLETED, the
victim file in the state the kill point implies); leases are then expired instead of waited for.
Finally one clean run must bring every file to COMPLETED (valid pages) or FAILED (malformed
ones) with every valid record loaded exactly once.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from property_pipeline.db import status
from property_pipeline.db.queries import file_states
from property_pipeline.db.schema import batch_file_status, properties, utcnow
from property_pipeline.integrity import verify_files
from property_pipeline.processing.processor import PayloadProcessor
from property_pipeline.registration import register_unregistered
from property_pipeline.store import markers
from property_pipeline.store.folder import PayloadRoot
from property_pipeline.store.writer import write_payload
from property_pipeline_tests.factories import BASE_TIME, make_page, make_record
from property_pipeline_tests.faults.figures import report_figure
from property_pipeline_tests.faults.helpers import REPO
from property_pipeline_tests.faults.invariants import data_violations, marker_violations, property_ids_by_file

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KILLS_PER_DATABASE = 60  # two databases: 120 kill points in all
SEED = 20261107
RECORDS_PER_FILE = 6  # five valid records and one that breaks the contract

# Kill point → which call (1-based) of the hooked function may be chosen, at most.
KILL_POINTS: dict[str, int] = {
    "before_claim": 3,
    "mid_claim": 3,
    "after_claim": 3,
    "after_processing_copy": 3,
    "mid_parse": 2 * RECORDS_PER_FILE,
    "mid_transaction_before_completed": 3,
    "mid_transaction_after_completed": 3,
    "after_commit_before_marker": 3,
    "mid_failed_transaction": 1,
    "mid_requeue": 1,
}

ZYGOTE = textwrap.dedent(
    """
    import json, os, signal, sys
    from property_pipeline.db import status
    from property_pipeline.db.engine import create_db_engine
    from property_pipeline.processing import parse
    from property_pipeline.processing.processor import PayloadProcessor
    from property_pipeline.store import markers
    from property_pipeline.store.folder import PayloadRoot

    def die(note, point, **detail):
        with open(note, "a") as out:
            out.write(json.dumps({"point": point, **detail}) + "\\n")
        os.kill(os.getpid(), signal.SIGKILL)

    def arm(point, nth, note):
        calls = [0]

        def hit():
            calls[0] += 1
            return calls[0] == nth

        def wrap(module, name, before=None, after=None):
            real = getattr(module, name)

            def hooked(*args, **kwargs):
                if before is not None:
                    before(*args, **kwargs)
                result = real(*args, **kwargs)
                if after is not None:
                    after(result, *args, **kwargs)
                return result

            setattr(module, name, hooked)

        if point == "before_claim":
            wrap(status, "claim_next_pending", before=lambda *a, **k: hit() and die(note, point))
        elif point == "mid_claim":
            def in_claim(conn, file_ids, from_status, to_status, *a, **k):
                if (from_status, to_status) == ("PENDING", "PROCESSING") and hit():
                    die(note, point, file_id=list(file_ids)[0])
            wrap(status, "_record_events", before=in_claim)
        elif point == "after_claim":
            def claimed(result, *a, **k):
                if result is not None and hit():
                    die(note, point, file_id=result.file_id)
            wrap(status, "claim_next_pending", after=claimed)
        elif point == "after_processing_copy":
            def copied(result, root, file_id, source):
                if hit():
                    die(note, point, file_id=file_id)
            wrap(markers, "processing_copy", after=copied)
        elif point == "mid_parse":
            # Each record of a page is validated from its bytes (read_record), the reference path only for pages
            # that are not plain JSON.
            wrap(parse, "read_record", before=lambda *a, **k: hit() and die(note, point))
        elif point == "mid_transaction_before_completed":
            def before_completed(conn, file_id, *a, **k):
                if hit():
                    die(note, point, file_id=file_id)
            wrap(status, "mark_completed", before=before_completed)
        elif point == "mid_transaction_after_completed":
            def after_completed(result, conn, file_id, *a, **k):
                if hit():
                    die(note, point, file_id=file_id)
            wrap(status, "mark_completed", after=after_completed)
        elif point == "after_commit_before_marker":
            def before_marker(root, relative_path, summary):
                if summary.get("status") == "COMPLETED" and hit():
                    die(note, point, file_id=summary["file_id"])
            wrap(markers, "mark_processed", before=before_marker)
        elif point == "mid_failed_transaction":
            def in_failed(conn, file_ids, from_status, to_status, *a, **k):
                if (from_status, to_status) == ("PROCESSING", "FAILED") and hit():
                    die(note, point, file_id=list(file_ids)[0])
            wrap(status, "_record_events", before=in_failed)
        elif point == "mid_requeue":
            def in_requeue(conn, file_ids, from_status, to_status, *a, **k):
                if (from_status, to_status) == ("PROCESSING", "PENDING") and list(file_ids) and hit():
                    die(note, point, file_ids=list(file_ids))
            wrap(status, "_record_events", before=in_requeue)
        else:
            raise SystemExit(f"unknown kill point {point}")

    for line in sys.stdin:
        order = json.loads(line)
        child = os.fork()
        if child == 0:
            try:
                arm(order["point"], order["nth"], order["note"])
                engine = create_db_engine(order["db_url"])
                PayloadProcessor(engine, PayloadRoot(order["logs"]), lease_seconds=600).run()
                os._exit(0)
            except BaseException as error:
                sys.stderr.write(f"processor raised {error!r}\\n")
                os._exit(3)
        _pid, wait_status = os.waitpid(child, 0)
        signal_number = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
        exit_code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else None
        print(json.dumps({"signal": signal_number, "exit": exit_code}), flush=True)
    """
)


class Zygote:
    """The long-lived parent of the crashing processors (imports paid once, a fork per iteration)."""

    def __init__(self, stderr_path: Path) -> None:
        self.stderr = open(stderr_path, "w")  # closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=REPO,
        )

    def run(self, order: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(order) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died (exit {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.stderr.close()


class PayloadPool:
    """Writes and registers pages in batches: valid ones (5 good records, 1 bad), and one malformed per batch."""

    def __init__(self, engine: Engine, root: PayloadRoot, rng: random.Random) -> None:
        self.engine, self.root, self.rng = engine, root, rng
        self.batch = 0
        self.valid_ids: dict[str, list[str]] = {}  # relative path → ids that must load
        self.malformed: set[str] = set()

    def add(self, count: int) -> None:
        malformed_at = self.rng.randrange(count)
        for position in range(count):
            self.batch += 1
            moment = BASE_TIME + timedelta(minutes=self.batch)
            if position == malformed_at:
                body = make_page([make_record(f"m{self.batch}-0")])[:-7]  # truncated: the file fails alone
                stored = write_payload(self.root, "crash", self.batch, body, moment)
                self.malformed.add(stored.relative_path)
                continue
            ids = [f"c{self.batch}-{i}" for i in range(RECORDS_PER_FILE - 1)]
            body = make_page([make_record(i) for i in ids] + [make_record(f"c{self.batch}-bad", bedrooms="three")])
            stored = write_payload(self.root, "crash", self.batch, body, moment)
            self.valid_ids[stored.relative_path] = ids
        register_unregistered(self.engine, self.root, "crash-test")

    def unfinished(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(batch_file_status)
                .where(batch_file_status.c.status.in_(["PENDING", "PROCESSING"]))
            ).scalar_one()


def _expire_leases(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            batch_file_status.update()
            .where(batch_file_status.c.status == "PROCESSING")
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )


def _row(engine: Engine, file_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(batch_file_status).where(batch_file_status.c.file_id == file_id)).one()


def _victim_violations(engine: Engine, root: PayloadRoot, note: dict[str, Any]) -> list[str]:
    """The state the kill point implies for the file it hit."""
    point, file_id = note["point"], note.get("file_id")
    if file_id is None:
        return []
    row = _row(engine, file_id)
    expected = {
        "mid_claim": "PENDING",  # the claim's UPDATE died uncommitted
        "after_commit_before_marker": "COMPLETED",  # committed; only the marker is missing
    }.get(point, "PROCESSING")  # claimed, then died before any outcome committed: waits for its lease
    problems = []
    if row.status != expected:
        problems.append(f"{point}: file {file_id} is {row.status}, expected {expected}")
    if point == "after_commit_before_marker" and (root.processed / row.file_path).exists():
        problems.append(f"{point}: file {file_id} has a processed marker the dead processor never wrote")
    return problems


@pytest.mark.timeout(420)
def test_processors_killed_at_random_points_lose_nothing_and_load_nothing_twice(
    engine: Engine, db_url: str, root: PayloadRoot, tmp_path: Path
) -> None:
    rng = random.Random(f"{SEED}:{engine.dialect.name}")
    pool = PayloadPool(engine, root, rng)
    pool.add(8)
    note_path = tmp_path / "kill-notes.jsonl"
    zygote = Zygote(tmp_path / "zygote-stderr.txt")
    kills: Counter[str] = Counter()
    violations: list[str] = []
    iterations = 0
    schedule: list[str] = []  # shuffled rounds of every kill point, so each one is hit
    started = time.monotonic()
    try:
        while sum(kills.values()) < KILLS_PER_DATABASE and iterations < 4 * KILLS_PER_DATABASE:
            iterations += 1
            if pool.unfinished() < 4:
                pool.add(6)
            schedule = schedule or rng.sample(sorted(KILL_POINTS), len(KILL_POINTS))
            point = schedule[0]
            nth = rng.randint(1, KILL_POINTS[point])
            if point == "mid_requeue" and "PROCESSING" not in file_states(engine).values():
                # The requeue needs an expired claim: leave one as an earlier crashed processor would.
                status.claim_next_pending(engine, "crashed-earlier", lease_seconds=600)
                _expire_leases(engine)
            note_path.write_text("")
            result = zygote.run(
                {"point": point, "nth": nth, "note": str(note_path), "db_url": db_url, "logs": str(root.logs_dir)}
            )
            notes = [json.loads(line) for line in note_path.read_text().splitlines()]
            schedule.pop(0)
            if result["signal"] == 9:
                kills[point] += 1
                violations += _victim_violations(engine, root, notes[-1])
            else:  # the hooked call never came (e.g. no expired lease to requeue): try this point again later
                schedule.append(point)
                if result["exit"] != 0:
                    violations.append(f"iteration {iterations}: processor exited {result} without being killed")
            violations += [f"after {point}#{nth}: {problem}" for problem in data_violations(engine)]
            _expire_leases(engine)  # the dead processor's lease runs out (no waiting)
    finally:
        zygote.close()

    # One clean run after the last crash.
    _expire_leases(engine)
    final = PayloadProcessor(engine, root).run()
    states = file_states(engine)
    for path, state in states.items():
        wanted = "FAILED" if path in pool.malformed else "COMPLETED"
        if state != wanted:
            violations.append(f"{path} ended {state}, expected {wanted}")
    violations += data_violations(engine)
    linked = property_ids_by_file(engine)
    with engine.connect() as conn:
        ids_by_path = dict(conn.execute(select(batch_file_status.c.file_path, batch_file_status.c.file_id)).all())
        loaded = conn.execute(select(func.count()).select_from(properties)).scalar_one()
    for path, ids in pool.valid_ids.items():
        if linked.get(ids_by_path[path], Counter()) != Counter(ids):
            violations.append(f"{path}: loaded {dict(linked.get(ids_by_path[path], {}))}, expected each of {ids} once")
    expected_rows = sum(len(ids) for ids in pool.valid_ids.values())
    if loaded != expected_rows:
        violations.append(f"{loaded} property rows, expected {expected_rows}")
    if not verify_files(engine, root).ok:
        violations.append("a payload file changed on disk")
    markers.reconcile_markers(root, states)
    violations += marker_violations(root, states)

    report_figure(
        f"process_crashes_{engine.dialect.name}",
        iterations=iterations,
        kills=sum(kills.values()),
        kill_points=dict(sorted(kills.items())),
        files=len(states),
        records_loaded=loaded,
        requeued_by_final_run=len(final.requeued),
        seconds=round(time.monotonic() - started, 1),
        violations=len(violations),
    )
    assert sum(kills.values()) >= KILLS_PER_DATABASE, kills
    assert len(kills) == len(KILL_POINTS), f"every kill point was hit at least once: {kills}"
    assert violations == []
