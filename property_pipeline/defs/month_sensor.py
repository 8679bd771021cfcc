"""`month_state_sensor`: whoever changed a month (the CLI, a cron job, another process), Dagster's view follows.

Every change to a payload file's state leaves a row in `file_status_events`: registration, claim,
outcome, retry, requeue, and retention's archive, delete and restore. Each tick reads the rows after
its cursor (at most `max_events_per_tick`), gathers the months they touch, and for each month compares
what the database says (`month_health`) with the latest state Dagster recorded for it (the
`month_files_state` metadata of the newest materialization or observation of each asset). Where
Dagster is behind, it reports, with the metadata a run records (`defs/month_state.py`):

- `raw_property_payloads`: a runless materialization when the month's registered files changed (its
  data version moved), a runless observation when only retention moved them.
- `properties`: settled (every file COMPLETED or DISCARDED): a runless materialization and the month's check
  verdicts; files still PENDING or PROCESSING: a runless observation and the verdicts; a FAILED file:
  a `record_month_state` run of the month, because only a failed run gives a partition the Failed
  state in Dagster 1.13 (a runless failure does not exist); that run records the observation and the
  verdicts itself, and fails.

Check verdicts: Dagster 1.13.27 stores one runless evaluation per check and partition (a unique index
over run id '' and partition), so a runless verdict is reported only where the month has none yet; a
verdict of a settled month that changed is recorded by a `record_month_state` run instead.

Dedup: a month that a queued or running run touches (its `dagster/partition` tag) waits for that run
to end, since the run records the month itself; the comparison then finds Dagster up to date and
reports nothing. A change Dagster already recorded (by a run or by an earlier tick) is never reported
again, whoever made it.

Cursor: `{"after": <event id>, "months": [...]}`, the last event handled and the months seen changing
but not reported yet (a run of theirs in progress, or beyond `max_months_per_tick`). A tick with no new
event runs one primary-key range query that returns no row, and nothing else. On its very first tick
the sensor starts from the newest event and reports every month that has files, so after `make demo`
then `make dagster` the demo's month turns green on the first tick.

PostgreSQL hands out event ids at insert, not at commit, so a transaction can commit an id below one
already read. The cursor therefore stays behind the events of the last `commit_lag_seconds`; they
are read again on the next tick, which the comparison makes harmless.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from sqlalchemy import Engine

from property_pipeline.db.queries import FileEvent, MonthHealth, file_events_after, last_file_event_id, month_health
from property_pipeline.db.schema import utcnow
from property_pipeline.defs.jobs import record_month_state_job
from property_pipeline.defs.month_state import (
    DATA_VERSION_KEY,
    DATA_VERSION_TAG,
    PROPERTIES_KEY,
    RAW_KEY,
    STATE_KEY,
    CheckVerdict,
    database_verdicts,
    payload_metadata,
    properties_metadata,
    properties_state,
    raw_data_version,
    raw_state,
)
from property_pipeline.defs.partitions import is_partition
from property_pipeline.defs.resources import PipelineDatabase, QuarantinePolicy
from property_pipeline.states import SETTLED, FileStatus

SENSOR_NAME = "month_state_sensor"
DEFAULT_MAX_EVENTS = 5000
DEFAULT_MAX_MONTHS = 24
COMMIT_LAG_SECONDS = 30.0
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
PASSED, FAILED_CHECK = AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED
RUNS_LOOKED_AT = 500  # in-flight runs read per tick to find the months they touch


@dataclass(frozen=True)
class MonthStateCursor:
    """The last event handled (None before the first tick) and the months waiting to be reported."""

    after: int | None = None
    months: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: str | None) -> MonthStateCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(int(data["after"]), tuple(data.get("months", ())))

    def dump(self) -> str:
        return json.dumps({"after": self.after, "months": list(self.months)}, separators=(",", ":"))


@dataclass(frozen=True)
class RecordedState:
    """What Dagster last recorded about one month of one asset (None when nothing was)."""

    state: str | None = None
    data_version: str | None = None


def recorded_state(instance: dg.DagsterInstance, asset_key: dg.AssetKey, month: str) -> RecordedState:
    """The `month_files_state` of the newest materialization or observation of the month that carries one.

    Other events (a downstream run's input observation, say) carry no state and are passed over.
    """
    records_filter = dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[month])
    newest: tuple[int, Any] | None = None
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        for record in fetch(records_filter, limit=5).records:
            event = record.asset_materialization or record.asset_observation
            if event is not None and STATE_KEY in event.metadata:
                if newest is None or record.storage_id > newest[0]:
                    newest = (record.storage_id, event)
                break
    if newest is None:
        return RecordedState()
    metadata = newest[1].metadata
    version = metadata.get(DATA_VERSION_KEY)
    return RecordedState(metadata[STATE_KEY].value, None if version is None else version.value)


def months_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Months that a queued or running run is working on (its `dagster/partition` tag)."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT), limit=RUNS_LOOKED_AT)
    return {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}


def advance(after: int, events: Sequence[FileEvent], lag: timedelta) -> int:
    """The new cursor: past the leading events older than `lag` (newer ones may have uncommitted neighbours)."""
    settled_before = utcnow() - lag
    for event in events:
        if event.at > settled_before:
            break
        after = event.event_id
    return after


def describe_actors(events: Iterable[FileEvent]) -> str:
    """Who made the changes: "cli:register (8), host:123:ab12 (16)"."""
    counts = Counter(event.actor or "unknown" for event in events)
    shown = ", ".join(f"{actor} ({n})" for actor, n in counts.most_common(5))
    return shown + (f" and {len(counts) - 5} more" if len(counts) > 5 else "")


@dataclass
class MonthReport:
    """What one tick reports for one month."""

    asset_events: list[Any]
    run_requests: list[dg.RunRequest]
    summary: str | None


def report_month(
    instance: dg.DagsterInstance, engine: Engine, health: MonthHealth, changed_by: str, warn_share: float
) -> MonthReport:
    """The runless events (or the run request) that bring Dagster's view of one month up to the database's."""
    month = health.month
    events: list[dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation] = []
    requests: list[dg.RunRequest] = []
    said: list[str] = []
    raw_recorded = recorded_state(instance, RAW_KEY, month)
    if raw_recorded.state != raw_state(health):
        metadata = payload_metadata(engine, health, changed_by=changed_by)
        version = raw_data_version(health)
        if raw_recorded.data_version != version:
            metadata["files_new"] = health.files - _files_in(raw_recorded.data_version)
            events.append(
                dg.AssetMaterialization(RAW_KEY, partition=month, metadata=metadata, tags={DATA_VERSION_TAG: version})
            )
            said.append(f"raw_property_payloads materialized ({health.files} files)")
        else:
            events.append(dg.AssetObservation(RAW_KEY, partition=month, metadata=metadata))
            said.append("raw_property_payloads observed (retention)")
    state = properties_state(health)
    if recorded_state(instance, PROPERTIES_KEY, month).state != state:
        verdicts = database_verdicts(engine, health, warn_share)
        new, changed = verdicts_to_record(instance, month, verdicts)
        if health.count(FileStatus.FAILED) or (changed and health.settled):
            # A run records the month: the only way to a Failed partition, and to a verdict that changed.
            requests.append(record_month_state_request(month, state))
            reason = (
                f"{health.count(FileStatus.FAILED)} FAILED file(s)"
                if health.count(FileStatus.FAILED)
                else "a check verdict changed"
            )
            said.append(f"{reason}: record_month_state run requested")
        else:
            metadata = properties_metadata(engine, health, changed_by=changed_by)
            if health.settled:
                events.append(dg.AssetMaterialization(PROPERTIES_KEY, partition=month, metadata=metadata))
                said.append(f"properties materialized ({health.rows_delivered} rows delivered)")
            else:
                events.append(dg.AssetObservation(PROPERTIES_KEY, partition=month, metadata=metadata))
                waiting = sum(n for state, n in health.files_by_status.items() if state not in SETTLED)
                said.append(f"properties observed ({waiting} of {health.files} files not loaded yet)")
            events.extend(verdict.evaluation(month) for verdict in new)
    return MonthReport(events, requests, f"{month}: {', '.join(said)}" if said else None)


def record_month_state_request(month: str, state: str) -> dg.RunRequest:
    """A `record_month_state` run of the month, once per state of its files (the run key)."""
    return dg.RunRequest(
        run_key=f"{record_month_state_job.name}:{month}:{hashlib.sha256(state.encode()).hexdigest()[:16]}",
        partition_key=month,
        job_name=record_month_state_job.name,
        tags={"property_pipeline/requested_by": SENSOR_NAME},
    )


def verdicts_to_record(
    instance: dg.DagsterInstance, month: str, verdicts: Sequence[CheckVerdict]
) -> tuple[list[CheckVerdict], bool]:
    """(verdicts Dagster has none of for this month yet, whether a recorded verdict of the month changed).

    Dagster 1.13.27 keeps at most one runless evaluation per check and partition (a unique index over
    asset key, check, run id '' and partition), so a runless verdict is reported only where the month
    has none; a verdict that changed is recorded by a run instead.
    """
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(v.asset_key, v.check_name) for v in verdicts], partition_filter=PartitionKeyFilter(key=month)
    )
    new, changed = [], False
    for verdict in verdicts:
        record = latest.get(dg.AssetCheckKey(verdict.asset_key, verdict.check_name))
        if record is None:
            new.append(verdict)
        elif record.status != (PASSED if verdict.passed else FAILED_CHECK):
            changed = True
    return new, changed


def _files_in(data_version: str | None) -> int:
    """The file count a recorded data version names ("8 files, newest 8" -> 8), 0 when none was recorded."""
    try:
        return int((data_version or "0").split()[0])
    except ValueError:
        return 0


def build_month_state_sensor(
    *,
    max_events_per_tick: int = DEFAULT_MAX_EVENTS,
    max_months_per_tick: int = DEFAULT_MAX_MONTHS,
    commit_lag_seconds: float = COMMIT_LAG_SECONDS,
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """The month sensor, with its per-tick bounds."""
    lag = timedelta(seconds=commit_lag_seconds)

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=[record_month_state_job],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Reports months changed outside Dagster (the CLI, cron, any process on the pipeline database) as runless "
            "materializations and observations of raw_property_payloads and properties, with their check verdicts; "
            "for a month with a FAILED file it launches record_month_state, so the month shows Failed. Reads at most "
            f"{max_events_per_tick} file events and reports at most {max_months_per_tick} months per tick."
        ),
    )
    def month_state_sensor(
        context: dg.SensorEvaluationContext, database: PipelineDatabase, quarantine_policy: QuarantinePolicy
    ) -> dg.SensorResult:
        cursor = MonthStateCursor.parse(context.cursor)
        engine = database.engine
        actors: dict[str, list[FileEvent]] = defaultdict(list)
        if cursor.after is None:  # first tick: every month as it is now, and the events from now on
            after = last_file_event_id(engine)
            changed = set(month_health(engine))
            read = 0
        else:
            events = file_events_after(engine, cursor.after, max_events_per_tick)
            read = len(events)
            if not events and not cursor.months:
                return dg.SensorResult(cursor=cursor.dump(), skip_reason="no file changed since the last tick")
            for event in events:
                actors[event.month].append(event)
            after = advance(cursor.after, events, lag)
            changed = set(cursor.months) | set(actors)
        changed = {month for month in changed if is_partition(month)}
        busy = months_in_flight(context.instance) & changed if changed else set()
        now = sorted(changed - busy)[:max_months_per_tick]
        later = sorted(changed - set(now))
        health = month_health(engine, now)
        events_out: list[Any] = []
        requests: list[dg.RunRequest] = []
        said: list[str] = []
        for month in now:
            changed_by = describe_actors(actors[month]) if actors[month] else "the database, read on the first tick"
            report = report_month(context.instance, engine, health[month], changed_by, quarantine_policy.warn_share)
            events_out += report.asset_events
            requests += report.run_requests
            if report.summary:
                said.append(report.summary)
        up_to_date = len(now) - len(said)
        tail = [f"{up_to_date} month(s) already up to date in Dagster"] if up_to_date else []
        if busy:
            tail.append(f"{', '.join(sorted(busy))} wait(s) for a run in progress")
        if len(later) > len(busy):
            tail.append(f"{len(later) - len(busy)} more month(s) next tick")
        context.log.info(f"{read} file event(s) read; " + "; ".join(said + tail))
        return dg.SensorResult(
            asset_events=events_out,
            run_requests=requests,
            cursor=MonthStateCursor(after, tuple(later)).dump(),
            skip_reason=None if requests else "; ".join(said + tail) or "no month changed",
        )

    return month_state_sensor
