"""The market summary of a month's properties, per state and property type, computed with pandas.

Per group: how many properties, how many of them have an estimated value, the quartiles and median
of `estimated_value`, the median of `estimated_equity`, the share of absentee owners and of
owner-occupied homes, and the change of both medians against the previous month.

Nulls: a property with no state or no property type is counted in a group of its own (state or
type NULL). Medians and quartiles are over the properties that have the value; a share is the
properties flagged true over those whose flag is known (true or false), so a null flag counts on
neither side; a statistic with no value to work from is NULL. Quartiles interpolate linearly
between values (pandas' default, R's type 7).

The change of a median is this month's median minus the previous month's, as stored in
`property_market_summary` for the same state and type; NULL when the previous month has no stored
row for the group (not summarised yet, or the group did not exist) or either median is NULL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, delete, insert, select

from property_pipeline.db.schema import property_market_summary as summary_table
from property_pipeline.db.schema import utcnow

GROUP_BY = ("state", "property_type")
STATISTICS = (
    "property_count",
    "valued_count",
    "value_p25",
    "value_median",
    "value_p75",
    "equity_median",
    "absentee_owner_share",
    "owner_occupied_share",
)
CHANGES = {"value_median_change": "value_median", "equity_median_change": "equity_median"}
COLUMNS = (*GROUP_BY, *STATISTICS, *CHANGES)


def previous_month(month: str) -> str:
    """The month before `month` (YYYY-MM)."""
    year, number = (int(part) for part in month.split("-"))
    return f"{year - 1:04d}-12" if number == 1 else f"{year:04d}-{number - 1:02d}"


def _statistics(frame: pd.DataFrame) -> dict[str, Any]:
    """The statistics of one set of properties (a group, or the whole month)."""
    values = frame["estimated_value"].dropna().astype("float64")
    equity = frame["estimated_equity"].dropna().astype("float64")
    return {
        "property_count": len(frame),
        "valued_count": len(values),
        "value_p25": values.quantile(0.25) if len(values) else None,
        "value_median": values.median() if len(values) else None,
        "value_p75": values.quantile(0.75) if len(values) else None,
        "equity_median": equity.median() if len(equity) else None,
        "absentee_owner_share": _share(frame["absentee_owner"]),
        "owner_occupied_share": _share(frame["owner_occupied"]),
    }


def _share(flags: pd.Series) -> float | None:
    known = flags.dropna()
    return float(known.astype(bool).sum()) / len(known) if len(known) else None


def _missing(value: object) -> bool:
    """A group key that stands for "no value" (groupby with dropna=False gives NA there)."""
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def summarise(properties: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (state, property_type) of `properties`, with the changes against `previous` (stored rows)."""
    rows = []
    for key, group in properties.groupby(list(GROUP_BY), dropna=False, sort=False):
        state, property_type = (None if _missing(part) else part for part in key)
        rows.append({"state": state, "property_type": property_type, **_statistics(group)})
    summary = pd.DataFrame(rows, columns=[*GROUP_BY, *STATISTICS])
    summary = summary.astype({"property_count": "Int64", "valued_count": "Int64"})
    summary = summary.astype({column: "Float64" for column in STATISTICS[2:]})
    summary = summary.astype({"state": "string", "property_type": "string"})
    summary = summary.sort_values(list(GROUP_BY), na_position="last", ignore_index=True)
    medians = (
        previous[[*GROUP_BY, *CHANGES.values()]] if previous is not None and len(previous) else None
    )  # the previous month's medians, joined on the group (NULL matches NULL, as the groups above)
    if medians is not None:
        joined = summary.merge(
            medians.astype({"state": "string", "property_type": "string"}),
            on=list(GROUP_BY),
            how="left",
            suffixes=("", "_previous"),
        )
        for change, median in CHANGES.items():
            summary[change] = (joined[median] - joined[f"{median}_previous"].astype("Float64")).array
    else:
        for change in CHANGES:
            summary[change] = pd.array([None] * len(summary), dtype="Float64")
    return summary[list(COLUMNS)]


def month_overview(properties: pd.DataFrame) -> dict[str, Any]:
    """The same statistics over the whole month (for the numbers the UI plots across months)."""
    return _statistics(properties)


def read_summary(engine: Engine, month: str) -> pd.DataFrame:
    """The stored summary rows of a month (empty when it has none), in the columns of `summarise`."""
    query = (
        select(*(summary_table.c[column] for column in COLUMNS))
        .where(summary_table.c.month == month)
        .order_by(summary_table.c.summary_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame([tuple(row) for row in rows], columns=list(COLUMNS))
    return frame.astype(
        {"state": "string", "property_type": "string", "property_count": "Int64", "valued_count": "Int64"}
        | {column: "Float64" for column in (*STATISTICS[2:], *CHANGES)}
    )


def replace_summary(engine: Engine, month: str, summary: pd.DataFrame, computed_at: datetime | None = None) -> int:
    """Replace the month's stored rows by `summary`'s, in one transaction; returns the rows written."""
    computed_at = computed_at or utcnow()
    records = [
        {"month": month, "computed_at": computed_at, **{c: _plain(v) for c, v in zip(COLUMNS, row, strict=True)}}
        for row in summary[list(COLUMNS)].itertuples(index=False, name=None)
    ]
    with engine.begin() as conn:
        conn.execute(delete(summary_table).where(summary_table.c.month == month))
        if records:
            conn.execute(insert(summary_table), records)
    return len(records)


def _plain(value: Any) -> Any:
    """pandas scalars as the database takes them: NA as None, numpy numbers as Python numbers."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value
