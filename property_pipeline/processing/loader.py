"""Bulk upsert of one file's records, its link rows and its quarantine, inside the caller's transaction.

Newest wins: a row is only overwritten by a record captured later (ties broken by file id),
so reprocessing an older file never replaces newer data.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, insert

from property_pipeline.db.schema import quarantined_records, utcnow
from property_pipeline.db.status import PayloadFile
from property_pipeline.processing.parse import RejectedRecord
from property_pipeline.processing.records import COLUMNS, PropertyRecord

LINEAGE = ("raw", "source_file_id", "campaign_id", "captured_at", "first_seen_at", "last_seen_at")
ALL_COLUMNS = ("property_id", *COLUMNS, *LINEAGE)
UPDATED = (*COLUMNS, "raw", "source_file_id", "campaign_id", "captured_at", "last_seen_at")


def _upsert_tail(least: str) -> str:
    assignments = ", ".join(f"{column} = excluded.{column}" for column in UPDATED)
    return (
        f"ON CONFLICT (property_id) DO UPDATE SET {assignments}, "
        f"first_seen_at = {least}(properties.first_seen_at, excluded.first_seen_at) "
        "WHERE (properties.captured_at, properties.source_file_id) < (excluded.captured_at, excluded.source_file_id)"
    )


SQLITE_UPSERT = (
    f"INSERT INTO properties ({', '.join(ALL_COLUMNS)}) VALUES ({', '.join('?' for _ in ALL_COLUMNS)}) "
    + _upsert_tail("min")
)
PG_STAGE = "property_stage"
PG_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {PG_STAGE} (LIKE properties INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
PG_COPY = f"COPY {PG_STAGE} ({', '.join(ALL_COLUMNS)}) FROM STDIN"
PG_MERGE = (
    f"INSERT INTO properties ({', '.join(ALL_COLUMNS)}) SELECT {', '.join(ALL_COLUMNS)} FROM {PG_STAGE} "
    + _upsert_tail("LEAST")
)
PG_LINKS = f"INSERT INTO file_properties (file_id, property_id) SELECT %s, property_id FROM {PG_STAGE}"


def _sqlite_time(moment: datetime) -> str:
    # The text format SQLAlchemy's SQLite DateTime uses, so Core queries read these rows back.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _sqlite_value(value: object) -> object:
    if isinstance(value, bool):
        return int(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()  # type: ignore[union-attr]
    return value


def load_records(
    conn: Connection, payload: PayloadFile, records: Sequence[PropertyRecord], rejected: Sequence[RejectedRecord]
) -> None:
    """Upsert `records`, link them to the file, quarantine `rejected`; no commit (the caller owns the transaction)."""
    dialect = conn.dialect.name
    if records:
        if dialect == "postgresql":
            _load_postgresql(conn, payload, records)
        elif dialect == "sqlite":
            _load_sqlite(conn, payload, records)
        else:
            raise NotImplementedError(f"database {dialect!r} is not supported (use SQLite or PostgreSQL)")
    if rejected:
        now = utcnow()
        conn.execute(
            insert(quarantined_records),
            [
                {
                    "file_id": payload.file_id,
                    "record_index": item.record_index,
                    "property_id": item.property_id,
                    "reason": item.reason,
                    "raw": item.raw_json,
                    "quarantined_at": now,
                }
                for item in rejected
            ],
        )


def _load_sqlite(conn: Connection, payload: PayloadFile, records: Sequence[PropertyRecord]) -> None:
    captured = _sqlite_time(payload.captured_at)
    lineage = (payload.file_id, payload.campaign_id, captured, captured, captured)
    rows = [(record.property_id, *map(_sqlite_value, record.values), record.raw_json, *lineage) for record in records]
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(SQLITE_UPSERT, rows)
        cursor.executemany(
            "INSERT INTO file_properties (file_id, property_id) VALUES (?, ?)",
            [(payload.file_id, record.property_id) for record in records],
        )
    finally:
        cursor.close()


def _load_postgresql(conn: Connection, payload: PayloadFile, records: Sequence[PropertyRecord]) -> None:
    captured = payload.captured_at
    lineage = (payload.file_id, payload.campaign_id, captured, captured, captured)
    driver = conn.connection.driver_connection  # psycopg 3
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(PG_CREATE_STAGE)
        with cursor.copy(PG_COPY) as copy:
            for record in records:
                copy.write_row((record.property_id, *record.values, record.raw_json, *lineage))
        cursor.execute(PG_MERGE)
        cursor.execute(PG_LINKS, (payload.file_id,))
