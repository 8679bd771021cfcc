"""Jobs: capture a month (the schedule's target) and process a month (by hand, a backfill, or the sensor)."""

import dagster as dg

from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import raw_property_payloads

# Selecting an asset selects its checks too: each run checks the month it touched.
capture_job = dg.define_asset_job(
    "capture_payloads",
    selection=dg.AssetSelection.assets(raw_property_payloads),
    description="Capture every enabled campaign into the current month, then register and report what is on disk.",
)

processing_job = dg.define_asset_job(
    "process_payloads",
    selection=dg.AssetSelection.assets(properties),
    description="Load a month's PENDING payload files (and FAILED ones with include_failed: true). Never runs "
    "on its own: launch it by hand, by a backfill, or let the registration sensor request it.",
)

# The same asset with `include_failed` preset: a backfill of this job over a range of months retries
# their FAILED files and loads their PENDING ones. `dagster job backfill` takes no run config, so the
# preset is what makes it usable from the command line.
retry_failed_months_job = dg.define_asset_job(
    "retry_failed_months",
    selection=dg.AssetSelection.assets(properties),
    config={"ops": {"properties": {"config": {"include_failed": True}}}},
    description="Load a month's PENDING files and retry its FAILED ones. Backfill it over the failed months: "
    "`dagster job backfill -w workspace.yaml -j retry_failed_months --from 2026-01 --to 2026-11 --noprompt`.",
)

# Reprocessing as a backfill: the same asset with `reprocess` preset; a backfill of this job over a range
# of months loads their COMPLETED files again. The reason defaults to the run's id; set `reason` in the
# launchpad to record why.
reprocess_months_job = dg.define_asset_job(
    "reprocess_months",
    selection=dg.AssetSelection.assets(properties),
    config={"ops": {"properties": {"config": {"reprocess": True}}}},
    description="Load a month's COMPLETED files again from their raw payload files (after a rule, mapping or bug "
    "was fixed). Backfill it over the months: "
    "`dagster job backfill -w workspace.yaml -j reprocess_months --from 2026-01 --to 2026-11 --noprompt`.",
)

# What the month sensor launches for a month whose files FAILED outside Dagster (the CLI, another
# process): only a failed run gives a partition the Failed state in Dagster 1.13, runless events cannot.
# It processes nothing: it records the month's state from the database, then fails while files are FAILED.
record_month_state_job = dg.define_asset_job(
    "record_month_state",
    selection=dg.AssetSelection.assets(properties),
    config={"ops": {"properties": {"config": {"record_only": True}}}},
    description="Record a month's state from the database without processing anything: materialized when every "
    "file is COMPLETED, failed (with the files' errors) otherwise. Launched by month_state_sensor.",
)
