"""`properties`: the month's payload files loaded into the properties table, each exactly once."""

import dagster as dg
from pydantic import Field
from sqlalchemy.dialects import postgresql

from property_pipeline.db.queries import month_statuses
from property_pipeline.db.schema import properties as properties_table
from property_pipeline.defs.io_managers import PROPERTIES_IO_MANAGER_KEY
from property_pipeline.defs.metadata import markdown_table
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.raw_payloads import GROUP, raw_property_payloads
from property_pipeline.defs.resources import PayloadStore, PipelineDatabase
from property_pipeline.processing.processor import FileOutcome, PayloadProcessor, ProcessingReport, new_worker_id

# Processing steps share this pool: dagster.yaml sets how many run at once across all runs (default 1).
PROPERTY_DB_POOL = "property_db_writes"
FIRST_ERRORS = 10


class ProcessingConfig(dg.Config):
    """Which of the month's files a materialization processes."""

    include_failed: bool = Field(
        default=False,
        description="Also retry the month's FAILED files (back to PENDING first). Set it in a backfill to retry "
        "failed months.",
    )


COLUMN_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(column.name, str(column.type.compile(dialect=postgresql.dialect())).lower(), column.comment)
        for column in properties_table.columns
    ]
)


@dg.asset(
    partitions_def=monthly_partitions,
    deps=[raw_property_payloads],
    pool=PROPERTY_DB_POOL,
    group_name=GROUP,
    kinds={"sql"},
    metadata={"dagster/table_name": "properties", "dagster/column_schema": COLUMN_SCHEMA},
    # Downstream assets read it as a pandas DataFrame of their month(s); nothing is written through it.
    io_manager_key=PROPERTIES_IO_MANAGER_KEY,
    description=(
        "One row per property. Materializing a month loads its PENDING payload files (and FAILED ones with "
        "`include_failed: true`), each file in one transaction with its status; the same code as "
        "`property-pipeline process --month`. Never materialized automatically. Downstream assets that take "
        "`properties: pd.DataFrame` get their month's properties (typed columns and lineage)."
    ),
)
def properties(
    context: dg.AssetExecutionContext, config: ProcessingConfig, payload_store: PayloadStore, database: PipelineDatabase
) -> dg.MaterializeResult:
    month = context.partition_key
    processor = PayloadProcessor(
        database.engine,
        payload_store.root(),
        lease_seconds=database.lease_seconds,
        max_payload_bytes=payload_store.max_payload_bytes,
        worker=f"dagster-run:{context.run.run_id[:8]}:{new_worker_id()}",
    )

    def log_failure(outcome: FileOutcome) -> None:
        if outcome.error is not None:
            context.log.warning(f"{outcome.status} file {outcome.file_id} {outcome.file_path}: {outcome.error}")

    report = processor.run(month=month, include_failed=config.include_failed, on_file=log_failure)
    context.log.info(
        f"{month}: {report.completed} files completed, {report.failed} failed; {report.records_loaded} records "
        f"loaded, {report.records_quarantined} quarantined in {report.seconds:.1f}s"
    )
    return dg.MaterializeResult(metadata=processing_metadata(database, month, report))


def processing_metadata(database: PipelineDatabase, month: str, report: ProcessingReport) -> dict[str, object]:
    """This run's counts and errors, and the month's totals after it (rows delivered, files still waiting)."""
    statuses = month_statuses(database.engine, month)
    after = statuses[0] if statuses else None
    return {
        "files_completed": report.completed,
        "files_failed": report.failed,
        "records_loaded": report.records_loaded,
        "records_quarantined": report.records_quarantined,
        "rows_per_second": round(report.rows_per_second, 1),
        "seconds": round(report.seconds, 3),
        "files_requeued_after_expired_lease": len(report.requeued),
        "failed_files_retried": len(report.retried),
        # Rows the month's COMPLETED files delivered, over every run so far.
        "dagster/row_count": after.records_loaded if after else 0,
        "month_files_pending": after.pending if after else 0,
        "month_files_failed": after.failed if after else 0,
        "first_errors": markdown_table(
            ["file", "path", "error"],
            [[o.file_id, o.file_path, o.error] for o in report.errors],
            max_rows=FIRST_ERRORS,
        ),
    }
