"""The registration sensor: payload files that other systems drop into the month folders become PENDING.

On a folder the cursor is one number, `{"ctime_ns": ...}`, the inode-change-time watermark of the last file handled.
A file copied in keeps whatever modification time it had, but its ctime is when it appeared, so
old-looking copies are still found; month folders whose mtime is older than the watermark are not
even listed. The database, not the cursor, records what is registered: files at the watermark are
re-checked against it, never registered twice. Each tick registers at most `max_files_per_tick`
files and continues from the cursor on the next tick.

On object storage there is no inode time to trust and names do not arrive in order, so each tick lists
the current and the previous month's prefixes in full and compares them with the database, plus one
older month in rotation; the cursor is only the month that rotation reached, `{"swept": "2026-03"}`.
An object written late, under any name, is found; a tick costs one listing per month listed and one
read per new object, however long the history.

The sensor reports nothing to Dagster itself: each registration is a row in `file_status_events`,
and `month_state_sensor` (defs/month_sensor.py) reports it, like any other change to a month, as a
materialization of that month of `raw_property_payloads`. Its tick result says what it did
("registered 9 files in 2026-11"); Dagster labels a tick that requested no run "Skipped" whatever it did.
"""

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from property_pipeline.defs.jobs import processing_job
from property_pipeline.defs.partitions import is_partition
from property_pipeline.defs.properties import properties
from property_pipeline.defs.resources import PayloadStore, PipelineDatabase
from property_pipeline.registration import (
    RegistrationReport,
    register_objects,
    register_paths,
    scan_new_files,
    scan_new_objects,
)
from property_pipeline.settings import DEFAULT_SENSOR_MAX_FILES
from property_pipeline.store.layout import month_of

SENSOR_NAME = "payload_registration_sensor"
SETTLE_SECONDS = 5.0  # a file changed more recently may still be being copied in: wait for the next tick
NOT_STARTED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]


@dataclass(frozen=True)
class RegistrationCursor:
    """Where the next tick starts: files whose inode changed at or after `ctime_ns` (a folder), and the older
    month the object-storage rotation listed last (`swept`)."""

    ctime_ns: int = 0
    swept: str | None = None

    @classmethod
    def parse(cls, raw: str | None) -> "RegistrationCursor":
        if not raw:
            return cls()
        document = json.loads(raw)
        return cls(int(document.get("ctime_ns", 0)), document.get("swept"))

    def dump(self) -> str:
        if self.swept is None:
            return json.dumps({"ctime_ns": self.ctime_ns})
        return json.dumps({"ctime_ns": self.ctime_ns, "swept": self.swept})


def recent_months(now: datetime) -> list[str]:
    """The months object-storage discovery lists on every tick: this one and the one before (captures that
    started before midnight on the first of a month, clocks that differ)."""
    first = now.astimezone(UTC).replace(day=1)
    return [month_of(first - timedelta(days=1)), month_of(first)]


def build_registration_sensor(
    *,
    auto_process: bool = False,
    max_files_per_tick: int = DEFAULT_SENSOR_MAX_FILES,
    settle_seconds: float = SETTLE_SECONDS,
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """The registration sensor; with `auto_process` it also requests a processing run per month that got files."""

    @dg.sensor(
        name=SENSOR_NAME,
        target=processing_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Registers new payload files as PENDING, at most {max_files_per_tick} per tick. Processing runs "
            f"requested: {'yes' if auto_process else 'no (set PROPERTY_PIPELINE_SENSOR_AUTO_PROCESS=true)'}."
        ),
    )
    def payload_registration_sensor(
        context: dg.SensorEvaluationContext, payload_store: PayloadStore, database: PipelineDatabase
    ) -> dg.SensorResult:
        started = time.monotonic()
        cursor = RegistrationCursor.parse(context.cursor)
        store, engine = payload_store.store(), database.engine
        actor = f"dagster-sensor:{SENSOR_NAME}"
        root = store.folder
        if root is not None:
            scan = scan_new_files(
                engine,
                root,
                cursor.ctime_ns,
                max_files=max_files_per_tick,
                settled_before_ns=time.time_ns() - int(settle_seconds * 1e9),
            )
            report = register_paths(engine, root, scan.paths, actor, rules=payload_store.drop_in_rules())
            more, listed, next_cursor = scan.more, scan.folders_listed, RegistrationCursor(scan.watermark_ns)
        else:
            found = scan_new_objects(
                engine,
                store,
                recent_months=recent_months(datetime.now(UTC)),
                swept=cursor.swept,
                max_files=max_files_per_tick,
            )
            report = register_objects(engine, store, found.objects, actor, rules=payload_store.drop_in_rules())
            more, listed, next_cursor = found.more, found.months_listed, RegistrationCursor(swept=found.sweep_month)
        for path, reason in report.skipped:
            context.log.warning(f"not registered: {path}: {reason}")
        by_month = _split_by_month(report)
        requests = []
        if auto_process:
            requests = [
                dg.RunRequest(partition_key=month, tags={"property_pipeline/requested_by": SENSOR_NAME})
                for month, part in by_month.items()
                if part.registered and is_partition(month) and not _processing_waiting(context.instance, month)
            ]
        context.log.info(
            f"{len(report.registered)} registered, {len(report.duplicates)} duplicates, {len(report.skipped)} "
            f"skipped; {listed} months listed in {time.monotonic() - started:.2f}s"
            + ("; more next tick" if more else "")
        )
        return dg.SensorResult(
            run_requests=requests,
            cursor=next_cursor.dump(),
            skip_reason=None if requests else tick_summary(by_month, more=more),
        )

    return payload_registration_sensor


def tick_summary(by_month: dict[str, RegistrationReport], *, more: bool = False) -> str:
    """What the tick did, per month: "registered 9 files in 2026-11; registered 1 file, skipped 1 file in 2026-10"."""
    phrases = []
    for month, part in by_month.items():
        done = [
            f"{verb} {len(items)} {noun}{'' if len(items) == 1 else 's'}"
            for items, verb, noun in (
                (part.registered, "registered", "file"),
                (part.duplicates, "recorded", "duplicate"),
                (part.skipped, "skipped", "file"),
            )
            if items
        ]
        if done:
            phrases.append(f"{', '.join(done)} in {month}")
    if not phrases:
        return "no new payload files"
    return "; ".join(phrases) + ("; more next tick" if more else "")


def _split_by_month(report: RegistrationReport) -> dict[str, RegistrationReport]:
    by_month: dict[str, RegistrationReport] = defaultdict(RegistrationReport)
    for registration in report.registered:
        by_month[registration.file_path.split("/")[0]].registered.append(registration)
    for registration in report.duplicates:
        by_month[registration.file_path.split("/")[0]].duplicates.append(registration)
    for path, reason in report.skipped:
        by_month[Path(path).parent.name].skipped.append((path, reason))
    return dict(sorted(by_month.items()))


def _processing_waiting(instance: dg.DagsterInstance, month: str) -> bool:
    """A run of the month that will process `properties` and has not started yet: it loads the new files too."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=NOT_STARTED, tags={"dagster/partition": month}), limit=50
    )
    return any(properties.key in (record.dagster_run.asset_selection or ()) for record in records)
