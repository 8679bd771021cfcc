"""The registration sensor on object storage: month prefixes listed and compared with the database, a small
cursor, late objects found (an older name after a newer one, or a new object in an old month)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import Engine

from property_pipeline.defs.resources import PayloadStore
from property_pipeline.defs.sensors import RegistrationCursor, build_registration_sensor, recent_months
from property_pipeline.store.s3 import S3Store
from property_pipeline_tests.defs.conftest import statuses
from property_pipeline_tests.defs.test_sensors import tick
from property_pipeline_tests.factories import make_record, write_page


@pytest.fixture
def s3_resources(resources: dict[str, Any], s3_store: S3Store) -> dict[str, Any]:
    folder: PayloadStore = resources["payload_store"]
    url = f"s3://{s3_store.bucket}/{s3_store.prefix.rstrip('/')}"
    return {**resources, "payload_store": PayloadStore(logs_dir=folder.logs_dir, payloads_url=url)}


def now_month() -> str:
    return recent_months(datetime.now(UTC))[1]


def test_the_recent_months_are_this_one_and_the_one_before() -> None:
    assert recent_months(datetime(2026, 3, 1, 0, 5, tzinfo=UTC)) == ["2026-02", "2026-03"]
    assert recent_months(datetime(2026, 1, 31, 23, 0, tzinfo=UTC)) == ["2025-12", "2026-01"]


def test_objects_become_pending_and_late_ones_are_found_on_a_later_tick(
    engine: Engine, s3_store: S3Store, s3_resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    sensor = build_registration_sensor(settle_seconds=0)
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    newer = write_page(s3_store, [make_record("p-2")], campaign="zeta", captured_at=this_month + timedelta(seconds=5))
    first = tick(sensor, instance, s3_resources, None)
    assert statuses(engine) == {newer.relative_path: "PENDING"}
    assert len(first.cursor) < 60 and RegistrationCursor.parse(first.cursor).ctime_ns == 0

    older = write_page(s3_store, [make_record("p-1")], campaign="alpha", captured_at=this_month + timedelta(seconds=1))
    second = tick(sensor, instance, s3_resources, first.cursor)
    assert statuses(engine) == {newer.relative_path: "PENDING", older.relative_path: "PENDING"}
    assert second.skip_message == f"registered 1 file in {now_month()}"


def test_an_object_written_late_into_an_old_month_is_found_by_the_rotation(
    engine: Engine, s3_store: S3Store, s3_resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    sensor = build_registration_sensor(settle_seconds=0)
    old = [
        write_page(s3_store, [make_record(f"p-{month}")], captured_at=datetime(2025, month, 3, tzinfo=UTC))
        for month in (3, 5, 7)
    ]
    cursor = None
    for _ in range(3):  # one older month per tick, newest first
        cursor = tick(sensor, instance, s3_resources, cursor).cursor
    assert set(statuses(engine)) == {s.relative_path for s in old}
    late = write_page(s3_store, [make_record("late")], batch=2, captured_at=datetime(2025, 5, 9, tzinfo=UTC))
    for _ in range(3):  # within as many ticks as there are older months
        cursor = tick(sensor, instance, s3_resources, cursor).cursor
    assert statuses(engine)[late.relative_path] == "PENDING"
    assert len(cursor or "") < 60


def test_a_tick_registers_at_most_its_bound_and_the_rest_on_the_next(
    engine: Engine, s3_store: S3Store, s3_resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    sensor = build_registration_sensor(settle_seconds=0, max_files_per_tick=2)
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for batch in range(1, 6):
        write_page(
            s3_store, [make_record(f"p-{batch}")], batch=batch, captured_at=this_month + timedelta(seconds=batch)
        )
    first = tick(sensor, instance, s3_resources, None)
    assert len(statuses(engine)) == 2 and first.skip_message.endswith("; more next tick")
    second = tick(sensor, instance, s3_resources, first.cursor)
    third = tick(sensor, instance, s3_resources, second.cursor)
    assert len(statuses(engine)) == 5 and "more" not in third.skip_message
