"""A canonical SHA-256 of what the database holds, to prove that two loads of the same files agree.

What it covers, exactly:

- **properties**: every row, ordered by `property_id` (code-point order on both databases), as one
  canonical JSON line: `property_id`, every typed column in table order, `raw` as the stored text of
  the record, `campaign_id`, `captured_at`, `first_seen_at`, `last_seen_at` (ISO 8601, UTC), and the
  *path* of the file the values came from (file ids differ between databases; paths do not).
- **quarantine**: every quarantined record, ordered by file path and position in the file:
  the path, `record_index`, `property_id`, `reason` and the record's text.
- **per month**: the rows whose current values came from that month's files (so the months partition
  the table), and the month's quarantine, each with its own SHA-256.

Left out: times of the load itself (`processed_at`, `quarantined_at`, `created_at`), file ids,
the status table and its events (how the load went, not what it gave), and `file_properties`
(its content follows from the files' pages; its counts are checked by `row_counts_agree`). Two
databases loaded from the same files have the same digests whatever the order of processing, the
number of processors, or reprocessing in between; ties in capture time are broken by registration
order, which a rebuild keeps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, Text, cast, select
from sqlalchemy.sql.elements import ColumnElement

from property_pipeline.db.schema import as_utc, properties, quarantined_records
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.processing.records import COLUMNS

LINEAGE = ("campaign_id", "captured_at", "first_seen_at", "last_seen_at")
BATCH_ROWS = 5_000


@dataclass
class _Running:
    """A SHA-256 over canonical lines, with the number of lines."""

    hasher: Any = field(default_factory=hashlib.sha256)
    count: int = 0

    def add(self, values: Iterable[Any]) -> None:
        line = json.dumps([_canonical(value) for value in values], ensure_ascii=False, separators=(",", ":"))
        self.hasher.update(line.encode("utf-8"))
        self.hasher.update(b"\n")
        self.count += 1

    def hexdigest(self) -> str:
        return str(self.hasher.hexdigest())


@dataclass(frozen=True)
class MonthDigest:
    month: str
    rows: int  # rows whose current values came from this month's files
    rows_sha256: str
    quarantined: int
    quarantine_sha256: str


@dataclass(frozen=True)
class Digest:
    rows: int
    rows_sha256: str
    quarantined: int
    quarantine_sha256: str
    months: list[MonthDigest]

    @property
    def sha256(self) -> str:
        """One value for the whole database: the rows' digest and the quarantine's, combined."""
        return hashlib.sha256(f"{self.rows_sha256}\n{self.quarantine_sha256}\n".encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        moment = as_utc(value)
        assert moment is not None
        return moment.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _in_code_point_order(engine: Engine, column: ColumnElement[Any]) -> ColumnElement[Any]:
    # PostgreSQL sorts text by the database's collation; "C" is byte order, which for UTF-8 is code-point
    # order: SQLite's default (BINARY) order.
    return column.collate("C") if engine.dialect.name == "postgresql" else column


def compute_digest(engine: Engine, month: str | None = None) -> Digest:
    """Digests of the properties table and the quarantine, and of each month (only `month` when given: then the
    totals cover that month's rows and quarantine alone)."""
    row_source = files.alias("row_source")
    rows_query = (
        select(
            properties.c.property_id,
            *(properties.c[name] for name in COLUMNS),
            cast(properties.c.raw, Text).label("raw_text"),
            *(properties.c[name] for name in LINEAGE),
            row_source.c.file_path,
            row_source.c.month,
        )
        .join(row_source, row_source.c.file_id == properties.c.source_file_id)
        .order_by(_in_code_point_order(engine, properties.c.property_id))
    )
    quarantine_query = (
        select(
            files.c.file_path,
            quarantined_records.c.record_index,
            quarantined_records.c.property_id,
            quarantined_records.c.reason,
            quarantined_records.c.raw,
            files.c.month,
        )
        .join(files, files.c.file_id == quarantined_records.c.file_id)
        .order_by(_in_code_point_order(engine, files.c.file_path), quarantined_records.c.record_index)
    )
    if month is not None:
        rows_query = rows_query.where(row_source.c.month == month)
        quarantine_query = quarantine_query.where(files.c.month == month)
    rows, quarantine = _Running(), _Running()
    month_rows: dict[str, _Running] = {}
    month_quarantine: dict[str, _Running] = {}
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=BATCH_ROWS).execute(rows_query):
            line = tuple(row)[:-1]  # everything but the month, which only sorts the row into its partition
            rows.add(line)
            month_rows.setdefault(row.month, _Running()).add(line)
        for entry in conn.execution_options(yield_per=BATCH_ROWS).execute(quarantine_query):
            quarantined = tuple(entry)[:-1]
            quarantine.add(quarantined)
            month_quarantine.setdefault(entry.month, _Running()).add(quarantined)
    empty = _Running()
    months = [
        MonthDigest(
            name,
            month_rows.get(name, empty).count,
            month_rows.get(name, empty).hexdigest(),
            month_quarantine.get(name, empty).count,
            month_quarantine.get(name, empty).hexdigest(),
        )
        for name in sorted(set(month_rows) | set(month_quarantine))
    ]
    return Digest(rows.count, rows.hexdigest(), quarantine.count, quarantine.hexdigest(), months)
