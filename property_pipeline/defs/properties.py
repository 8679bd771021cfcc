"""`properties`: the month's payload files loaded into the properties table, each exactly once.

A month is materialized only when it is settled after the run (every registered file COMPLETED or
DISCARDED, `property_pipeline.states.SETTLED`). Otherwise the step records what it did and what
the month holds (an AssetObservation, and the month's check verdicts) and then fails, so the month's
partition shows Failed, not a green materialization that hides a FAILED file.
"""

from collections.abc import Iterator

import dagster as dg
from pydantic import Field
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql

from property_pipeline.db.schema import properties as properties_table
from property_pipeline.defs.io_managers import PROPERTIES_IO_MANAGER_KEY
from property_pipeline.defs.month_state import (
    PROPERTIES_KEY,
    database_verdicts,
    health_of,
    properties_metadata,
    unsettled_reason,
)
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.raw_payloads import GROUP, OWNERS, raw_property_payloads
from property_pipeline.defs.resources import PayloadStore, PipelineDatabase, QuarantinePolicy
from property_pipeline.processing import replay
from property_pipeline.processing.processor import FileOutcome, PayloadProcessor, new_worker_id
from property_pipeline.store import backend

# Processing steps share this pool: dagster.yaml sets how many run at once across all runs (default 1).
PROPERTY_DB_POOL = "property_db_writes"
# The Failure's metadata: the numbers a person reads on the run's step failure (the rest is on the observation).
FAILURE_KEYS = ("files_total", "files_pending", "files_processing", "files_failed", "first_errors")


class ProcessingConfig(dg.Config):
    """What a materialization of a month does. Both options show, typed, in the launchpad's config editor."""

    include_failed: bool = Field(
        default=False,
        description="Retry the month's FAILED files too (back to PENDING first, recorded), after fixing their cause. "
        "Set it on a backfill to retry failed months; the job retry_failed_months presets it.",
    )
    reprocess: bool = Field(
        default=False,
        description="Load the month's COMPLETED files again from their raw payload files (after a rule, mapping or "
        "bug was fixed): each goes COMPLETED -> PENDING, recorded with `reason`, then loads as on a first load. "
        "Files retention deleted need `property-pipeline restore --month M` first. The job reprocess_months "
        "presets it, for backfills.",
    )
    reason: str = Field(
        default="",
        description="With reprocess: why (recorded with every file). Empty: the run's id is recorded instead.",
    )
    record_only: bool = Field(
        default=False,
        description="Process nothing: record the month's state from the database (materialized when settled, "
        "failed otherwise). The month sensor launches such runs for months whose files FAILED outside Dagster.",
    )


COLUMN_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(column.name, str(column.type.compile(dialect=postgresql.dialect())).lower(), column.comment)
        for column in properties_table.columns
    ]
)


@dg.asset(
    key=PROPERTIES_KEY,
    partitions_def=monthly_partitions,
    deps=[raw_property_payloads],
    pool=PROPERTY_DB_POOL,
    group_name=GROUP,
    owners=OWNERS,
    # pii: owner names and mailing addresses.
    tags={"pii": "", "layer": "core"},
    kinds={"table"},  # and the database's kind (postgres or sqlite), added in definitions.py from the URL
    metadata={"dagster/table_name": "properties", "dagster/column_schema": COLUMN_SCHEMA},
    # Downstream assets read it as a pandas DataFrame of their month(s); nothing is written through it.
    io_manager_key=PROPERTIES_IO_MANAGER_KEY,
    description=(
        "One row per property. Materializing a month loads its PENDING payload files (and FAILED ones with "
        "`include_failed: true`), each file in one transaction with its status; the same code as "
        "`property-pipeline process --month`; with `reprocess: true` its COMPLETED files load again. A month is "
        "materialized only when all its files are settled (COMPLETED, or DISCARDED by an operator) afterwards; "
        "otherwise the step fails with the files' errors. Never materialized automatically. The row count is "
        "the whole table's; per month, rows_delivered_by_month_files."
    ),
)
def properties(
    context: dg.AssetExecutionContext,
    config: ProcessingConfig,
    payload_store: PayloadStore,
    database: PipelineDatabase,
    quarantine_policy: QuarantinePolicy,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    month = context.partition_key
    engine = database.engine
    report = None
    if config.record_only:
        context.log.info(f"{month}: record_only: nothing is processed, the month's state is recorded")
    else:
        processor = PayloadProcessor(
            engine,
            payload_store.store(),
            lease_seconds=database.lease_seconds,
            max_payload_bytes=payload_store.max_payload_bytes,
            worker=f"dagster-run:{context.run.run_id[:8]}:{new_worker_id()}",
        )

        def log_failure(outcome: FileOutcome) -> None:
            if outcome.error is not None:
                context.log.warning(f"{outcome.status} file {outcome.file_id} {outcome.file_path}: {outcome.error}")

        if config.reprocess:
            reprocess_month(context, engine, payload_store.store(), month, config.reason)
        report = processor.run(month=month, include_failed=config.include_failed, on_file=log_failure)
        context.log.info(
            f"{month}: {report.completed} files completed, {report.failed} failed; {report.records_loaded} records "
            f"loaded, {report.records_quarantined} quarantined in {report.seconds:.1f}s"
        )
    health = health_of(engine, month)
    metadata = properties_metadata(engine, health, report=report)
    if config.reprocess:
        metadata["run_reprocessed"] = True
    if health.settled:
        yield dg.MaterializeResult(metadata=metadata)
        return
    # Not settled: no materialization. The checks of this month are skipped once the step fails, so
    # their verdicts are logged here (Dagster records events logged before the next yield).
    for verdict in database_verdicts(engine, health, quarantine_policy.warn_share):
        context.log_event(verdict.evaluation(month))
    yield dg.AssetObservation(asset_key=PROPERTIES_KEY, partition=month, metadata=metadata)
    raise dg.Failure(
        description=unsettled_reason(engine, health),
        metadata={key: metadata[key] for key in FAILURE_KEYS},
        allow_retries=False,
    )


def reprocess_month(
    context: dg.AssetExecutionContext, engine: Engine, root: backend.PayloadStore, month: str, reason: str
) -> None:
    """COMPLETED -> PENDING for the month's files (the same core call as `property-pipeline reprocess --month`);
    the run's processing then loads them again."""
    reason = reason.strip() or f"Dagster run {context.run.run_id}"
    plan = replay.plan_reprocess(engine, month=month)
    marked = replay.mark_for_reprocessing(engine, root, f"dagster-run:{context.run.run_id[:8]}", plan, reason)
    context.log.info(f"{month}: {len(marked)} files COMPLETED -> PENDING to be reprocessed ({reason})")
    if plan.needs_restore:
        context.log.warning(
            f"{month}: {len(plan.needs_restore)} files were deleted by retention and are not reprocessed; "
            f"restore them first (property-pipeline restore --month {month}), then reprocess again: "
            + ", ".join(path for _, path in plan.needs_restore[:5])
        )
