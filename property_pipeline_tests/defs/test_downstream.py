"""Downstream of `properties`: the IO manager's DataFrames, `property_market_summary` and `quarantined_records`.

Every test runs on a real SQLite file and on the real PostgreSQL server, through Dagster's
`dg.materialize` with the project's resources.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from property_pipeline import frames
from property_pipeline.db.schema import property_market_summary as summary_table
from property_pipeline.definitions import defs
from property_pipeline.defs.checks import ALL_CHECKS
from property_pipeline.defs.io_managers import PROPERTIES_IO_MANAGER_KEY
from property_pipeline.defs.market_summary import property_market_summary
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.properties import properties
from property_pipeline.defs.quarantine import quarantined_records
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.registration import register_unregistered
from property_pipeline.store.folder import PayloadRoot
from property_pipeline_tests.defs.conftest import metadata_values
from property_pipeline_tests.factories import make_page, make_record, write_page

MARCH = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
APRIL = datetime(2026, 4, 6, 8, 0, tzinfo=UTC)
UPSTREAM: list[Any] = [raw_property_payloads, properties, *ALL_CHECKS]
received: dict[str, pd.DataFrame] = {}


@dg.asset(partitions_def=monthly_partitions)
def monthly_consumer(properties: pd.DataFrame) -> dg.MaterializeResult:
    """The README's example of a downstream asset (and what it received, for the test to look at)."""
    received["monthly"] = properties
    texas = properties[properties["state"] == "TX"]  # a missing state is not TX
    return dg.MaterializeResult(
        metadata={"dagster/row_count": len(texas), "absentee_owners": int(texas["absentee_owner"].sum())}
    )


@dg.asset(
    partitions_def=monthly_partitions,
    ins={"properties": dg.AssetIn(partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1))},
)
def two_month_consumer(properties: pd.DataFrame) -> None:
    """This month and the one before: a range of two partitions."""
    received["two_months"] = properties


@dg.asset
def all_months_consumer(properties: pd.DataFrame) -> None:
    """Not partitioned: every month."""
    received["all"] = properties


@dg.asset(io_manager_key=PROPERTIES_IO_MANAGER_KEY)
def writes_through_the_reader() -> pd.DataFrame:
    return pd.DataFrame({"a": [1]})


def _process(engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: Any, *months: str) -> None:
    register_unregistered(engine, root, "test")
    for month in months:
        result = dg.materialize(
            UPSTREAM,
            selection=dg.AssetSelection.assets(properties),
            partition_key=month,
            resources=resources,
            instance=instance,
        )
        assert result.success


def _run(assets: Sequence[Any], resources: dict[str, Any], instance: Any, **kwargs: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*UPSTREAM, *assets],
        selection=dg.AssetSelection.assets(*assets),
        resources=resources,
        instance=instance,
        raise_on_error=False,
        **kwargs,
    )


def _loaded_input_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (event,) = [e for e in result.all_events if e.event_type_value == "LOADED_INPUT"]
    return {key: getattr(value, "value", value) for key, value in event.event_specific_data.metadata.items()}


def _two_months(root: PayloadRoot) -> None:
    write_page(
        root,
        [
            make_record("m-1"),
            make_record(
                "m-2",
                address={"state": None, "city": "Nowhere"},
                bedrooms=None,
                lastSaleDate=None,
                absenteeOwner=None,
                mailAddress=None,
            ),
            make_record(7001, estimatedValue=100_000),
        ],
        batch=1,
        captured_at=MARCH,
    )
    newer = make_record(7001, estimatedValue=150_000, absenteeOwner=True)
    write_page(root, [newer], batch=2, captured_at=MARCH + timedelta(hours=2))
    write_page(root, [make_record("a-1"), make_record("a-2", yearBuilt=None)], batch=3, captured_at=APRIL)


def test_a_monthly_downstream_asset_receives_that_months_properties_typed_with_nulls(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    _two_months(root)
    _process(engine, root, resources, instance, "2026-03", "2026-04")

    result = _run([monthly_consumer], resources, instance, partition_key="2026-03")

    assert result.success
    frame = received["monthly"]
    assert list(frame["property_id"]) == ["7001", "m-1", "m-2"]  # 7001 came in two files: once, newest values
    rows = frame.set_index("property_id")
    assert rows.loc["7001", "estimated_value"] == 150_000
    assert rows.loc["m-2", "bedrooms"] is pd.NA and rows.loc["m-2", "absentee_owner"] is pd.NA
    assert rows.loc["m-2", "mail_city"] is pd.NA and rows.loc["m-2", "last_sale_date"] is pd.NaT
    assert rows.loc["m-2", "state"] is pd.NA and rows.loc["m-2", "city"] == "Nowhere"
    assert rows.loc["m-1", "bedrooms"] == 3 and rows.loc["m-1", "last_sale_date"] == pd.Timestamp("2019-06-14")
    assert frame.dtypes.to_dict() == frames.property_dtypes()
    assert str(frame["city"].dtype) == "string" and str(frame["bedrooms"].dtype) == "Int32"
    assert str(frame["estimated_value"].dtype) == "Int64" and str(frame["bathrooms"].dtype) == "Float64"
    assert str(frame["owner_occupied"].dtype) == "boolean" and str(frame["last_sale_date"].dtype) == "datetime64[us]"
    assert str(frame["captured_at"].dtype) == "datetime64[us, UTC]" and "raw" not in frame.columns
    assert _loaded_input_metadata(result) == {"properties_read": 3, "month": "2026-03"}
    (materialization,) = result.asset_materializations_for_node("monthly_consumer")
    assert metadata_values(materialization) == {"dagster/row_count": 2, "absentee_owners": 1}  # m-2 has no state


def test_a_range_of_months_and_a_non_partitioned_asset_get_the_union(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    _two_months(root)
    _process(engine, root, resources, instance, "2026-03", "2026-04")

    two = _run([two_month_consumer], resources, instance, partition_key="2026-04")
    every = _run([all_months_consumer], resources, instance)

    assert two.success and every.success
    assert list(received["two_months"]["property_id"]) == ["7001", "a-1", "a-2", "m-1", "m-2"]
    pd.testing.assert_frame_equal(received["two_months"], received["all"])


def test_an_empty_month_gives_an_empty_frame_with_every_column(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    _two_months(root)
    _process(engine, root, resources, instance, "2026-03")

    result = _run([monthly_consumer], resources, instance, partition_key="2026-05")

    assert result.success
    empty = received["monthly"]
    assert empty.empty and _loaded_input_metadata(result)["properties_read"] == 0
    assert _run([monthly_consumer], resources, instance, partition_key="2026-03").success
    march = received["monthly"]
    assert len(march) == 3 and list(empty.columns) == list(march.columns)
    pd.testing.assert_series_equal(empty.dtypes, march.dtypes)


def test_writing_through_the_properties_io_manager_fails_with_a_clear_error(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    result = dg.materialize([writes_through_the_reader], resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("writes_through_the_reader")
    assert failure is not None
    message = str(failure.error)
    assert "only reads" in message and "writes_through_the_reader" in message


# --- the market summary, against the same statistics computed here from the records themselves ---------------


def _market_records(rng: random.Random, prefix: str, count: int) -> list[dict[str, Any]]:
    records = []
    for index in range(count):
        state = rng.choice(["TX", "TX", "CA", "FL", None])
        kind = rng.choice(["SFR", "SFR", "CONDO", None])
        records.append(
            make_record(
                f"{prefix}-{index}",
                address={"state": state, "city": "Somewhere"},
                propertyType=kind,
                estimatedValue=rng.choice([None, *range(90_000, 900_000, 7_919)]),
                estimatedEquity=rng.choice([None, *range(-20_000, 400_000, 3_301)]),
                absenteeOwner=rng.choice([True, False, None]),
                ownerOccupied=rng.choice([True, False, False, None]),
            )
        )
    return records


def _expected_summary(records: list[dict[str, Any]]) -> dict[tuple[str | None, str | None], dict[str, Any]]:
    """Per (state, type), from the record dicts, with `statistics` (not pandas)."""
    groups: dict[tuple[str | None, str | None], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["address"]["state"], record["propertyType"]), []).append(record)
    expected = {}
    for key, members in groups.items():
        values = sorted(float(r["estimatedValue"]) for r in members if r["estimatedValue"] is not None)
        equity = [float(r["estimatedEquity"]) for r in members if r["estimatedEquity"] is not None]
        if len(values) >= 2:
            p25, median, p75 = statistics.quantiles(values, n=4, method="inclusive")
        else:
            p25 = median = p75 = values[0] if values else None

        def share(field: str, members: list[dict[str, Any]] = members) -> float | None:
            known = [r[field] for r in members if r[field] is not None]
            return sum(known) / len(known) if known else None

        expected[key] = {
            "property_count": len(members),
            "valued_count": len(values),
            "value_p25": p25,
            "value_median": median,
            "value_p75": p75,
            "equity_median": statistics.median(equity) if equity else None,
            "absentee_owner_share": share("absenteeOwner"),
            "owner_occupied_share": share("ownerOccupied"),
        }
    return expected


def _stored(engine: Engine, month: str) -> dict[tuple[str | None, str | None], dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(summary_table).where(summary_table.c.month == month)).mappings().all()
    return {(row["state"], row["property_type"]): dict(row) for row in rows}


def _assert_close(actual: dict[str, Any], expected: dict[str, Any], label: Any) -> None:
    for name, value in expected.items():
        if value is None:
            assert actual[name] is None, (label, name, actual[name])
        else:
            assert actual[name] == pytest.approx(value), (label, name, actual[name], value)


def test_the_market_summary_equals_the_statistics_of_the_records_and_tracks_the_previous_month(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    rng = random.Random(20261201)
    march = _market_records(rng, "p", 90)
    april = _market_records(rng, "q", 60)
    # p-0 comes again in April with a new value: both months count it, with its current (April) values.
    april.append({**march[0], "estimatedValue": 999_000})
    write_page(root, march[:45], batch=1, captured_at=MARCH)
    write_page(root, march[45:], batch=2, captured_at=MARCH + timedelta(minutes=5))
    write_page(root, april, batch=3, captured_at=APRIL)
    broken = [make_record("not-counted", address={"zip": "ABCDE", "state": "TX"}, propertyType="SFR")]
    (root.month_dir("2026-03") / "other_batch1_20260304T000000Z.json").write_bytes(make_page(broken))
    _process(engine, root, resources, instance, "2026-03", "2026-04")

    first = _run([property_market_summary], resources, instance, partition_key="2026-03")
    second = _run([property_market_summary], resources, instance, partition_key="2026-04")

    assert first.success and second.success
    march_current = [april[-1], *march[1:]]
    expected_march = _expected_summary(march_current)
    expected_april = _expected_summary(april)
    stored_march, stored_april = _stored(engine, "2026-03"), _stored(engine, "2026-04")
    assert set(stored_march) == set(expected_march) and set(stored_april) == set(expected_april)
    for key, expected in expected_march.items():
        _assert_close(stored_march[key], expected, ("2026-03", key))
        assert stored_march[key]["value_median_change"] is None  # February was never summarised
    for key, expected in expected_april.items():
        _assert_close(stored_april[key], expected, ("2026-04", key))
        before = expected_march.get(key)
        for change, median in (("value_median_change", "value_median"), ("equity_median_change", "equity_median")):
            if before is None or before[median] is None or expected[median] is None:
                assert stored_april[key][change] is None, (key, change)
            else:
                assert stored_april[key][change] == pytest.approx(expected[median] - before[median]), (key, change)

    values = metadata_values(second.asset_materializations_for_node("property_market_summary")[0])
    every_value = sorted(float(r["estimatedValue"]) for r in april if r["estimatedValue"] is not None)
    assert values["property_count"] == len(april) and values["groups"] == len(expected_april)
    assert values["value_median"] == pytest.approx(statistics.median(every_value))
    assert values["previous_month_summarised"] is True
    # The table's size: March's groups and April's.
    assert values["dagster/row_count"] == len(expected_march) + len(expected_april)
    assert "| state | type |" in values["summary"] and "(none)" in values["summary"]

    # Summarising March again replaces its rows (no duplicates), in one go.
    again = _run([property_market_summary], resources, instance, partition_key="2026-03")
    assert again.success and len(_stored(engine, "2026-03")) == len(expected_march)


def test_the_summary_depends_on_properties_and_on_its_own_previous_month() -> None:
    graph = defs().get_repository_def().asset_graph
    parents = graph.get(property_market_summary.key).parent_keys
    assert parents == {properties.key, property_market_summary.key}


def test_the_quarantine_asset_counts_the_months_records_and_its_most_common_reasons(
    engine: Engine, root: PayloadRoot, resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    records = [
        make_record("ok-1"),
        make_record("bad-zip-1", address={"zip": "ABCDE", "state": "TX"}),
        make_record("bad-zip-2", address={"zip": "1234", "state": "TX"}),
        make_record("bad-beds", bedrooms="three"),
        {"no": "id"},
    ]
    (root.month_dir("2026-03")).mkdir(parents=True, exist_ok=True)
    (root.month_dir("2026-03") / "camp-1_batch1_20260303T080000Z.json").write_bytes(make_page(records))
    (root.month_dir("2026-03") / "camp-1_batch2_20260303T090000Z.json").write_bytes(make_page([make_record("ok-2")]))
    _process(engine, root, resources, instance, "2026-03")

    march = _run([quarantined_records], resources, instance, partition_key="2026-03")
    april = _run([quarantined_records], resources, instance, partition_key="2026-04")

    assert march.success and april.success
    values = metadata_values(march.asset_materializations_for_node("quarantined_records")[0])
    assert values["dagster/row_count"] == values["quarantined_records"] == 4  # the table holds March's only
    assert values["files_with_quarantined_records"] == 1 and values["records_loaded"] == 2
    assert values["quarantined_share"] == pytest.approx(4 / 6) and values["reason_kinds"] == 3
    table = values["top_reasons"].splitlines()
    assert "address.zip … is not a 5-digit zip code | 2 | 50.0%" in table[2]  # the most common first
    april_values = metadata_values(april.asset_materializations_for_node("quarantined_records")[0])
    assert april_values["quarantined_records"] == 0 and april_values["dagster/row_count"] == 4  # the whole table
