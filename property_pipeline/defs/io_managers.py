"""The IO manager that hands `properties` to downstream assets as a pandas DataFrame.

A downstream asset partitioned by month gets that month's properties (those its COMPLETED files
delivered, one row per property, current values); a non-partitioned downstream asset, or a run over
a range of months, gets the union of the months mapped to it. The read goes through the same
`PipelineDatabase` resource as the rest of `defs/` and `property_pipeline.frames`, chunked on the
database side. Nothing is written through it: `properties` is loaded by the processing engine and
returns a `MaterializeResult`, which does not pass through an IO manager.

No `from __future__ import annotations` here: Dagster reads the `database` annotation as a class to
accept a partially configured resource for it (see `database_resources`); as a string it cannot.
"""

import dagster as dg
import pandas as pd
from pydantic import Field

from property_pipeline.defs.resources import PipelineDatabase
from property_pipeline.frames import CHUNK_ROWS, read_properties

PROPERTIES_IO_MANAGER_KEY = "properties_io_manager"


class PropertiesFrameIOManager(dg.ConfigurableIOManager):
    """Loads `properties` for the downstream asset's month(s) as a typed pandas DataFrame."""

    database: PipelineDatabase
    include_raw: bool = Field(
        default=False, description="Add the `raw` column (the record's JSON text); large, so off by default."
    )
    chunk_rows: int = Field(default=CHUNK_ROWS, ge=1, description="Rows fetched from the database at a time.")

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        raise dg.Failure(
            description=(
                f"{PROPERTIES_IO_MANAGER_KEY} only reads: `properties` is loaded by the processing engine "
                f"(it returns a MaterializeResult). The asset {context.asset_key.to_user_string()} returned a "
                f"{type(obj).__name__} for it to store; give that asset another io_manager_key."
            )
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        months = sorted(context.asset_partition_keys) if context.has_asset_partitions else None
        frame = read_properties(self.database.engine, months, include_raw=self.include_raw, chunk_rows=self.chunk_rows)
        label = "every month" if months is None else _month_span(months)
        context.log.info(f"read {len(frame):,} properties ({len(frame.columns)} columns) of {label}")
        if months is not None and len(months) == 1:
            # Shown on the run's "Loaded input" event, and as an observation of that month of `properties`.
            # Not `dagster/row_count`: that is the properties table's size, set by `properties` itself.
            # Dagster 1.13 cannot attach input metadata to an input of several partitions (it fails
            # looking for the one partition key), so a range reports its count in the log line above.
            context.add_input_metadata({"properties_read": len(frame), "month": months[0]})
        return frame


def _month_span(months: list[str]) -> str:
    if not months:
        return "no month"
    return months[0] if len(months) == 1 else f"{months[0]} … {months[-1]} ({len(months)} months)"
