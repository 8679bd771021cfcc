"""Monthly partitions whose keys are the payload folder names (`2026-11`), the current month included."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from property_pipeline.settings import first_partition_month_from_env
from property_pipeline.store.layout import month_of

# PROPERTY_PIPELINE_FIRST_MONTH (default 2026-01): read when the code location loads, because every
# partitioned asset and check is built from this one definition at import. Older folders have no partition.
FIRST_MONTH = first_partition_month_from_env()

# end_offset=1 adds the current (unfinished) month: capture writes into it. start_date is parsed
# with fmt, so it is written as a month too. Months are UTC, like the payload folders.
monthly_partitions = dg.MonthlyPartitionsDefinition(start_date=FIRST_MONTH, fmt="%Y-%m", end_offset=1, timezone="UTC")


def current_month(now: datetime | None = None) -> str:
    """The month capture writes into now (UTC), which is also the newest partition key."""
    return month_of(now or datetime.now(UTC))


def is_partition(month: str) -> bool:
    """True when the month is one of the partitions (folders older than FIRST_MONTH are not)."""
    return FIRST_MONTH <= month <= current_month()
