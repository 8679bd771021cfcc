"""`quarantined_records`: the month's rejected records, visible as data in the catalog.

A materialized, monthly-partitioned asset rather than an observable source: processing writes the
quarantine rows in each file's own transaction, so the table is the data and materializing a month
only reads it. One materialization per month carries that month's counts, which is what the UI
plots across partitions and shows on each month's page; an observation of an unpartitioned source
asset would hold every month in one event. Materializing writes nothing.
"""

import dagster as dg

from property_pipeline.db.queries import month_quarantine, month_statuses, table_row_count
from property_pipeline.defs.metadata import markdown_table
from property_pipeline.defs.partitions import monthly_partitions
from property_pipeline.defs.properties import properties
from property_pipeline.defs.raw_payloads import GROUP, OWNERS
from property_pipeline.defs.resources import PipelineDatabase

TOP_REASONS = 10


@dg.asset(
    partitions_def=monthly_partitions,
    deps=[properties],
    group_name=GROUP,
    owners=OWNERS,
    tags={"pii": "", "layer": "quality"},  # the rejected records as received: owner names, addresses
    kinds={"table"},  # and the database's kind, added in definitions.py
    metadata={"dagster/table_name": "quarantined_records"},
    description=(
        "Records of the month's COMPLETED files that broke the contract, with the file, index and reason "
        "(the quarantined_records table, written by processing). Materializing a month reads it: counts, the "
        "share of the month's records, and the most common reasons. Export them with "
        "`property-pipeline export --quarantine --month YYYY-MM`."
    ),
)
def quarantined_records(context: dg.AssetExecutionContext, database: PipelineDatabase) -> dg.MaterializeResult:
    month = context.partition_key
    quarantine = month_quarantine(database.engine, month)
    statuses = month_statuses(database.engine, month)
    loaded = statuses[0].records_loaded if statuses else 0
    seen = loaded + quarantine.records
    context.log.info(f"{month}: {quarantine.records} quarantined records in {quarantine.files} files")
    return dg.MaterializeResult(
        metadata={
            # The table's size where Dagster shows it; the month's own count is quarantined_records.
            "dagster/row_count": table_row_count(database.engine, "quarantined_records").rows,
            "quarantined_records": quarantine.records,
            "files_with_quarantined_records": quarantine.files,
            "records_loaded": loaded,
            "quarantined_share": round(quarantine.records / seen, 6) if seen else 0.0,
            "reason_kinds": len(quarantine.reasons),
            "top_reasons": markdown_table(
                ["reason (values taken out)", "records", "share", "example"],
                [[r.kind, r.records, f"{r.records / quarantine.records:.1%}", r.example] for r in quarantine.reasons],
                max_rows=TOP_REASONS,
            ),
        }
    )
