"""The registration sensor: new files become PENDING, each tick is bounded, the cursor stays small."""

from __future__ import annotations

import functools
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import Engine

from property_pipeline.definitions import defs
from property_pipeline.defs.sensors import SENSOR_NAME, build_registration_sensor
from property_pipeline.registration import register_paths, scan_new_files
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.defs.conftest import statuses, write_month
from property_pipeline_tests.factories import make_page, make_record

OLD = 1_600_000_000  # September 2020: the modification time a copy might keep


@functools.cache
def project_repository() -> dg.RepositoryDefinition:
    """The project's definitions: the sensor's run requests name a partition of their job."""
    return defs().get_repository_def()


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resources: dict[str, Any], cursor: str | None):  # type: ignore[no-untyped-def]
    """One evaluation, as the daemon runs it."""
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources, repository_def=project_repository()
    ) as context:
        return sensor.evaluate_tick(context)


def test_new_files_become_pending_and_the_tick_says_how_many_per_month(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    sensor = build_registration_sensor(settle_seconds=0)
    march = write_month(root, "2026-03", files=2, per_file=3)
    april = write_month(root, "2026-04", files=1, per_file=4)
    (root.month_dir("2026-04") / "camp-9_batch1_20260405T000000Z.json").write_bytes(march[0].path.read_bytes())

    first = tick(sensor, instance, resources, None)

    assert statuses(engine) == {
        **{s.relative_path: "PENDING" for s in march + april},
        "2026-04/camp-9_batch1_20260405T000000Z.json": "COMPLETED",  # a duplicate of a March file
    }
    # What the tick did, in words (the month sensor reports the months to Dagster from the events).
    assert first.skip_message == "registered 2 files in 2026-03; registered 1 file, recorded 1 duplicate in 2026-04"
    assert first.asset_events == [] and first.run_requests == [] and len(first.cursor) < 40

    second = tick(sensor, instance, resources, first.cursor)
    assert second.asset_events == [] and second.skip_message == "no new payload files"


@pytest.mark.slow
def test_thousands_of_files_are_registered_over_several_bounded_ticks(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    files = 3000
    folder = root.month_dir("2026-05")
    folder.mkdir(parents=True)
    for batch in range(1, files + 1):
        (folder / f"bulk_batch{batch}_20260505T000000Z.json").write_bytes(make_page([make_record(f"bulk-{batch}")]))
    sensor = build_registration_sensor(max_files_per_tick=1000, settle_seconds=0)

    cursor, seconds, registered = None, [], []
    for _ in range(5):
        started = time.perf_counter()
        result = tick(sensor, instance, resources, cursor)
        seconds.append(time.perf_counter() - started)
        registered.append(int(result.skip_message.split()[1]) if "registered" in (result.skip_message or "") else 0)
        cursor = result.cursor
        assert len(cursor) < 40  # a watermark, not a list of names
    print(f"\nregistration ticks over {files} files: " + ", ".join(f"{s:.2f}s" for s in seconds))

    assert registered == [1000, 1000, 1000, 0, 0]
    assert len(statuses(engine)) == files and set(statuses(engine).values()) == {"PENDING"}
    assert max(seconds) < 20  # far below the daemon's 60 s tick timeout


def test_a_file_copied_in_with_an_old_modification_time_is_still_found(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    sensor = build_registration_sensor(settle_seconds=0)
    write_month(root, "2026-03", files=1)
    cursor = tick(sensor, instance, resources, None).cursor

    elsewhere = tmp_path / "other-system" / "partner_batch7_20260302T101500Z.json"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(make_page([make_record("copied-1")]))
    os.utime(elsewhere, (OLD, OLD))
    copied = Path(shutil.copy2(elsewhere, root.month_dir("2026-03")))
    assert copied.stat().st_mtime == OLD

    result = tick(sensor, instance, resources, cursor)

    assert statuses(engine)["2026-03/" + copied.name] == "PENDING"
    assert result.skip_message == "registered 1 file in 2026-03"


def test_month_folders_not_modified_since_the_watermark_are_not_listed(engine: Engine, root: PayloadRoot) -> None:
    write_month(root, "2026-03", files=2)
    time.sleep(0.05)  # coarse filesystem clocks: the later month's files are strictly newer
    write_month(root, "2026-04", files=2)
    first = scan_new_files(engine, root, 0, max_files=100, settled_before_ns=time.time_ns())
    assert first.folders_listed == 2 and len(first.paths) == 4 and not first.more
    register_paths(engine, root, first.paths, "test")

    (root.month_dir("2026-04") / "late_batch1_20260420T000000Z.json").write_bytes(make_page([make_record("late")]))
    second = scan_new_files(engine, root, first.watermark_ns, max_files=100, settled_before_ns=time.time_ns())

    assert second.folders_listed == 1
    assert [p.name for p in second.paths] == ["late_batch1_20260420T000000Z.json"]


def test_a_file_that_may_still_be_being_written_waits_for_a_later_tick(engine: Engine, root: PayloadRoot) -> None:
    write_month(root, "2026-03", files=1)
    too_recent = scan_new_files(engine, root, 0, max_files=100, settled_before_ns=time.time_ns() - 60 * 10**9)
    assert too_recent.paths == [] and not too_recent.more
    settled = scan_new_files(engine, root, too_recent.watermark_ns, max_files=100, settled_before_ns=time.time_ns())
    assert len(settled.paths) == 1


@pytest.fixture
def own_instance() -> Iterator[dg.DagsterInstance]:
    """A Dagster instance of the test's own: the runs it adds must not be seen by other tests."""
    with dg.instance_for_test() as instance:
        yield instance


def test_auto_process_requests_a_run_per_month_unless_one_is_already_waiting(
    root: PayloadRoot, resources: dict[str, Any], own_instance: dg.DagsterInstance
) -> None:
    instance = own_instance
    sensor = build_registration_sensor(auto_process=True, settle_seconds=0)
    write_month(root, "2026-03", files=1)
    write_month(root, "2026-04", files=1)

    first = tick(sensor, instance, resources, None)
    assert sorted(r.partition_key for r in first.run_requests) == ["2026-03", "2026-04"]

    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",  # a backfill's run: any run that will process the month counts
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags={"dagster/partition": "2026-03"},
            asset_selection=frozenset({dg.AssetKey("properties")}),
        )
    )
    instance.add_run(
        dg.DagsterRun(
            job_name="capture_payloads",  # a capture of 2026-04 will not process anything
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags={"dagster/partition": "2026-04"},
            asset_selection=frozenset({dg.AssetKey("raw_property_payloads")}),
        )
    )
    write_month(root, "2026-03", files=2, campaign="camp-2")
    write_month(root, "2026-04", files=2, campaign="camp-2")
    second = tick(sensor, instance, resources, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["2026-04"]  # the waiting 2026-03 run loads them


def test_the_definitions_build_the_sensor_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    default = defs().get_repository_def().get_sensor_def(SENSOR_NAME)
    assert default.default_status == dg.DefaultSensorStatus.RUNNING  # registering is safe: it never processes
    assert "Processing runs requested: no" in (default.description or "")
    assert "at most 500 per tick" in (default.description or "")

    monkeypatch.setenv("PROPERTY_PIPELINE_SENSOR_AUTO_PROCESS", "true")
    monkeypatch.setenv("PROPERTY_PIPELINE_SENSOR_MAX_FILES", "2000")
    enabled = defs().get_repository_def().get_sensor_def(SENSOR_NAME)
    assert "Processing runs requested: yes" in (enabled.description or "")
    assert "at most 2000 per tick" in (enabled.description or "")
