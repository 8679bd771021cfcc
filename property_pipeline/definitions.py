"""The Dagster entry point: assembles the objects of `property_pipeline/defs/` into one code location.

A plain `dg.Definitions` listing every object, rather than `dg.load_from_defs_folder`: ten small
modules read more easily as one explicit list, and the objects that depend on settings (the
resources, the registration sensor and the two alert sensors) are built here, from `Settings.from_env()`, when Dagster
loads the code location. Load it with `dagster dev -w workspace.yaml` (or `make dagster`). Among the
resources, `properties_io_manager` hands `properties` to downstream assets (`property_market_summary`,
or your own) as pandas DataFrames of their month.

Runs use the in-process executor: a run's steps (one asset and its checks) are a few database
queries around one processing loop that the pool serializes anyway, so a process per step would
only add about 2 s and 150 MB per step. Parallelism comes from several runs (months), not steps.
"""

import dagster as dg

from property_pipeline.defs.checks import ALL_CHECKS
from property_pipeline.defs.jobs import capture_job, processing_job, retry_failed_months_job
from property_pipeline.defs.market_summary import property_market_summary
from property_pipeline.defs.monitoring import (
    build_alert_sensor,
    build_run_failure_sensor,
    pipeline_status_report,
    status_report_job,
    status_report_schedule,
)
from property_pipeline.defs.properties import properties
from property_pipeline.defs.quarantine import quarantined_records
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import pipeline_resources
from property_pipeline.defs.retention import retention_job, retention_schedule
from property_pipeline.defs.schedules import daily_capture_schedule
from property_pipeline.defs.sensors import build_registration_sensor
from property_pipeline.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    """Every asset, check, job, schedule and sensor of the pipeline, with resources from the environment."""
    settings = Settings.from_env()
    return dg.Definitions(
        assets=[
            raw_property_payloads,
            properties,
            quarantined_records,
            pipeline_status_report,
            property_market_summary,
        ],
        asset_checks=ALL_CHECKS,
        jobs=[capture_job, processing_job, retry_failed_months_job, retention_job, status_report_job],
        schedules=[daily_capture_schedule, retention_schedule, status_report_schedule],
        sensors=[
            build_registration_sensor(
                auto_process=settings.sensor_auto_process, max_files_per_tick=settings.sensor_max_files
            ),
            build_alert_sensor(
                webhook_url=settings.alert_webhook_url,
                pending_max_age_seconds=settings.pending_alert_age_seconds,
            ),
            build_run_failure_sensor(webhook_url=settings.alert_webhook_url),
        ],
        resources=pipeline_resources(settings),
        executor=dg.in_process_executor,
    )
