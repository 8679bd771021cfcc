"""`property_market_summary`: the worked example of a downstream asset reading `properties` as a DataFrame.

Per month, state and property type: counts, quartiles and median of the estimated value, median
equity, the shares of absentee owners and of owner-occupied homes, and the change of each median
against the previous month's stored summary (`property_pipeline.market_summary` says how nulls count).
It depends on the previous month of itself, so a backfill summarises months oldest first and a
month that is summarised again shows the next one as needing an update (its changes moved).
"""

import dagster as dg
import pandas as pd
from dagster._core.definitions.metadata import RawMetadataValue
from sqlalchemy.dialects import postgresql

from property_pipeline.db.queries import table_row_count
from property_pipeline.db.schema import property_market_summary as summary_table
from property_pipeline.defs.metadata import markdown_table
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.raw_payloads import OWNERS
from property_pipeline.defs.resources import PipelineDatabase
from property_pipeline.market_summary import month_overview, previous_month, read_summary, replace_summary, summarise

ANALYTICS_GROUP = "analytics"
SUMMARY_KEY = dg.AssetKey("property_market_summary")
TABLE_ROWS_SHOWN = 60

SUMMARY_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(column.name, str(column.type.compile(dialect=postgresql.dialect())).lower(), column.comment)
        for column in summary_table.columns
    ]
)


@dg.asset(
    key=SUMMARY_KEY,
    partitions_def=monthly_partitions,
    # `properties` through its IO manager (a DataFrame of the month); the previous month of this asset,
    # whose stored medians the changes are measured against.
    ins={"properties": dg.AssetIn(dg.AssetKey("properties"))},
    deps=[dg.AssetDep(SUMMARY_KEY, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1))],
    group_name=ANALYTICS_GROUP,
    owners=OWNERS,
    tags={"layer": "analytics"},
    kinds={"pandas", "table"},  # and the database's kind, added in definitions.py
    metadata={"dagster/table_name": "property_market_summary", "dagster/column_schema": SUMMARY_SCHEMA},
    description=(
        "Per state and property type, for the month's properties: count, quartiles and median of "
        "estimated_value, median estimated_equity, shares of absentee owners and owner-occupied homes, and "
        "the change of each median against the previous month. Stored in the property_market_summary table "
        "(the month's rows replaced in one transaction). Not automatic: materialize it after `properties`."
    ),
)
def property_market_summary(
    context: dg.AssetExecutionContext, properties: pd.DataFrame, database: PipelineDatabase
) -> dg.MaterializeResult:
    month = context.partition_key
    previous = read_summary(database.engine, previous_month(month))
    summary = summarise(properties, previous)
    written = replace_summary(database.engine, month, summary)
    overall = month_overview(properties)
    context.log.info(
        f"{month}: {len(properties):,} properties in {written} groups; previous month "
        f"{'summarised' if len(previous) else 'not summarised: changes are null'}"
    )
    metadata = summary_metadata(summary, overall, has_previous=len(previous) > 0)
    # The table's size where Dagster shows it; this month's groups are `groups`.
    metadata["dagster/row_count"] = table_row_count(database.engine, "property_market_summary").rows
    return dg.MaterializeResult(metadata=metadata)


def summary_metadata(
    summary: pd.DataFrame, overall: dict[str, object], *, has_previous: bool
) -> dict[str, RawMetadataValue]:
    """The table of groups, and the month's numbers as plain floats and ints (the UI plots those over months)."""
    numbers = {name: _number(value) for name, value in overall.items()}
    return {
        "groups": len(summary),
        **{name: value for name, value in numbers.items() if value is not None},
        "previous_month_summarised": has_previous,
        "summary": markdown_table(
            [
                "state",
                "type",
                "properties",
                "valued",
                "value p25",
                "value median",
                "value p75",
                "equity median",
                "absentee",
                "owner-occupied",
                "Δ value median",
                "Δ equity median",
            ],
            [
                [
                    _text(row.state),
                    _text(row.property_type),
                    row.property_count,
                    row.valued_count,
                    _money(row.value_p25),
                    _money(row.value_median),
                    _money(row.value_p75),
                    _money(row.equity_median),
                    _percent(row.absentee_owner_share),
                    _percent(row.owner_occupied_share),
                    _money(row.value_median_change, signed=True),
                    _money(row.equity_median_change, signed=True),
                ]
                for row in summary.itertuples(index=False)
            ],
            max_rows=TABLE_ROWS_SHOWN,
        ),
    }


def _number(value: object) -> float | int | None:
    if value is None or value is pd.NA:
        return None
    return int(value) if isinstance(value, int) else float(value)  # type: ignore[arg-type]


def _text(value: object) -> str:
    return "(none)" if value is None or value is pd.NA else str(value)


def _money(value: object, *, signed: bool = False) -> str:
    if value is None or value is pd.NA:
        return "-"
    return f"{float(value):+,.0f}" if signed else f"{float(value):,.0f}"  # type: ignore[arg-type]


def _percent(value: object) -> str:
    return "-" if value is None or value is pd.NA else f"{float(value):.1%}"  # type: ignore[arg-type]
