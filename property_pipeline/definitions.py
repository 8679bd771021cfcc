"""The Dagster entry point: assembles the objects of `property_pipeline/defs/` into one code location.

A plain `dg.Definitions` listing every object, rather than `dg.load_from_defs_folder`: a dozen small
modules read more easily as one explicit list, and the objects that depend on settings (the
resources, the sensors, the kind of database the tables live in) are built here, from
`Settings.from_env()`, when Dagster loads the code location. Load it with `dg dev` (or `make dagster`).
Among the resources, `properties_io_manager` hands `properties` to downstream assets
(`property_market_summary`, or your own) as pandas DataFrames of their month.

Runs use the in-process executor: a run's steps (one asset and its checks) are a few database
queries around one processing loop that the pool serializes anyway, so a process per step would
only add about 2 s and 150 MB per step. Parallelism comes from several runs (months), not steps.
"""

import warnings

import dagster as dg
from dagster._core.definitions.assets.definition.cacheable_assets_definition import CacheableAssetsDefinition

from property_pipeline.defs.checks import ALL_CHECKS
from property_pipeline.defs.jobs import (
    capture_job,
    processing_job,
    record_month_state_job,
    reprocess_months_job,
    retry_failed_months_job,
)
from property_pipeline.defs.market_summary import property_market_summary
from property_pipeline.defs.monitoring import (
    build_alert_sensor,
    build_run_failure_sensor,
    pipeline_status_report,
    status_report_job,
    status_report_schedule,
)
from property_pipeline.defs.month_sensor import build_month_state_sensor
from property_pipeline.defs.properties import properties
from property_pipeline.defs.quarantine import quarantined_records
from property_pipeline.defs.raw_payloads import raw_property_payloads
from property_pipeline.defs.resources import database_kind, pipeline_resources
from property_pipeline.defs.retention import retention_job, retention_schedule
from property_pipeline.defs.schedules import daily_capture_schedule
from property_pipeline.defs.sensors import build_registration_sensor
from property_pipeline.settings import Settings

# Assets whose data lives in (or is read from) the pipeline database: their kinds name its engine.
DATABASE_ASSETS = [properties, quarantined_records, pipeline_status_report, property_market_summary]


def with_database_kind(assets: list[dg.AssetsDefinition], kind: str) -> list[dg.AssetsDefinition]:
    """The assets with `kind` (postgres or sqlite, from PROPERTY_PIPELINE_DB_URL) added to their kinds."""
    return [
        mapped
        for asset in assets
        for mapped in dg.map_asset_specs(lambda spec: spec.merge_attributes(kinds={kind}), [asset])
    ]


# Code references are a beta API in Dagster 1.13: its BetaWarnings are accepted here, for these calls only.
CODE_REFERENCES_BETA = (
    r"(Function `with_source_code_references`|Class `(LocalFileCodeReference|CodeReferencesMetadataValue)`)"
)


def with_code_references(
    assets: list[dg.AssetsDefinition],
) -> list[dg.AssetsDefinition | dg.SourceAsset | CacheableAssetsDefinition | dg.AssetSpec]:
    """The assets with "Source code" links on their pages, to the file and line that defines each."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CODE_REFERENCES_BETA, category=dg.BetaWarning)
        return list(dg.with_source_code_references(assets))


@dg.definitions
def defs() -> dg.Definitions:
    """Every asset, check, job, schedule and sensor of the pipeline, with resources from the environment."""
    settings = Settings.from_env()
    assets = [raw_property_payloads, *with_database_kind(DATABASE_ASSETS, database_kind(settings.db_url))]
    return dg.Definitions(
        assets=with_code_references(assets),
        asset_checks=ALL_CHECKS,
        jobs=[
            capture_job,
            processing_job,
            retry_failed_months_job,
            reprocess_months_job,
            record_month_state_job,
            retention_job,
            status_report_job,
        ],
        schedules=[daily_capture_schedule, retention_schedule, status_report_schedule],
        sensors=[
            build_registration_sensor(
                auto_process=settings.sensor_auto_process, max_files_per_tick=settings.sensor_max_files
            ),
            build_month_state_sensor(),
            build_alert_sensor(
                webhook_url=settings.alert_webhook_url,
                pending_max_age_seconds=settings.pending_alert_age_seconds,
            ),
            build_run_failure_sensor(webhook_url=settings.alert_webhook_url, ui_base_url=settings.ui_base_url),
        ],
        resources=pipeline_resources(settings),
        executor=dg.in_process_executor,
    )
