"""Bulk upsert of one file's records, its link rows and its quarantine, inside the caller's transaction.

Newest wins: a row is only overwritten by a record of the file its values came from or of a file
captured later (ties broken by file id), so reprocessing an older file never replaces newer data,
and reprocessing the file a row came from rewrites it with the new parse. A file loaded before
(a reprocess, or a retry after a failed reload) has its link and quarantine rows replaced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import JSON, Connection, Text, cast, delete, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from property_pipeline.db.schema import file_properties, properties, quarantined_records, utcnow
from property_pipeline.db.status import PayloadFile
from property_pipeline.processing.parse import PayloadPage, RejectedRecord
from property_pipeline.processing.records import COLUMNS, FIELDS, PropertyRecord

LINEAGE = ("raw", "source_file_id", "campaign_id", "captured_at", "first_seen_at", "last_seen_at")
ALL_COLUMNS = ("property_id", *COLUMNS, *LINEAGE)
UPDATED = (*COLUMNS, "raw", "source_file_id", "campaign_id", "captured_at", "last_seen_at")


def _upsert_tail(least: str, distinct: str, raw_text: str) -> str:
    """Newest wins for the values; the first-seen time is the earliest of all loads, in whatever order they come
    (an older file loaded after a newer one keeps the newer values but lowers first_seen_at). A record that
    would write exactly what the row holds (the file it came from, reloaded with nothing changed) writes
    nothing: no new row version, no index or WAL work."""
    newer = "(properties.captured_at, properties.source_file_id) <= (excluded.captured_at, excluded.source_file_id)"
    assignments = ", ".join(
        f"{column} = CASE WHEN {newer} THEN excluded.{column} ELSE properties.{column} END" for column in UPDATED
    )
    held = ", ".join(
        raw_text.format(f"properties.{column}") if column == "raw" else f"properties.{column}" for column in UPDATED
    )
    incoming = ", ".join(
        raw_text.format(f"excluded.{column}") if column == "raw" else f"excluded.{column}" for column in UPDATED
    )
    return (
        f"ON CONFLICT (property_id) DO UPDATE SET {assignments}, "
        f"first_seen_at = {least}(properties.first_seen_at, excluded.first_seen_at) "
        f"WHERE ({newer} AND ({held}) {distinct} ({incoming})) OR excluded.first_seen_at < properties.first_seen_at"
    )


SQLITE_UPSERT = (
    f"INSERT INTO properties ({', '.join(ALL_COLUMNS)}) VALUES ({', '.join('?' for _ in ALL_COLUMNS)}) "
    + _upsert_tail("min", "IS NOT", "{}")
)
# PostgreSQL. Properties the database does not hold yet are copied straight into `properties`: the
# cost of a plain COPY. Known ones go through a staging table and an upsert that keeps the newest.
PG_KNOWN = "SELECT property_id FROM properties WHERE property_id = ANY(%s::text[])"
# Binary COPY: the client sends values as they are in memory instead of formatting each as text,
# which is most of the client's COPY work. The types must be the columns' types exactly.
_PG_TYPE_OF_KIND = {
    "text": "text",
    "state": "text",
    "zip": "text",
    "int32": "int4",
    "int64": "int8",
    "number": "float8",
    "lat": "float8",
    "lon": "float8",
    "bool": "bool",
    "date": "date",
}
PG_COPY_TYPES = (
    "text",
    *(_PG_TYPE_OF_KIND[kind] for _column, _path, kind in FIELDS),
    "text",  # raw: json's binary form is its text, so the JSON goes as it is
    "int8",
    "text",
    "timestamptz",
    "timestamptz",
    "timestamptz",
)
PG_COPY_NEW = f"COPY properties ({', '.join(ALL_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
PG_STAGE = "property_stage"
# INCLUDING COMPRESSION: values are compressed once, in the stage, with the column's method (lz4),
# and INSERT ... SELECT moves them into `properties` without compressing them again.
PG_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {PG_STAGE} (LIKE properties INCLUDING DEFAULTS INCLUDING COMPRESSION) "
    "ON COMMIT DELETE ROWS"
)
PG_COPY = f"COPY {PG_STAGE} ({', '.join(ALL_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
PG_MERGE = (
    f"INSERT INTO properties ({', '.join(ALL_COLUMNS)}) SELECT {', '.join(ALL_COLUMNS)} FROM {PG_STAGE} "
    "ORDER BY property_id " + _upsert_tail("LEAST", "IS DISTINCT FROM", "{}::text")  # json has no equality
)
PG_LINKS = "INSERT INTO file_properties (file_id, property_id) SELECT %s, unnest(%s::text[])"


def _sqlite_time(moment: datetime) -> str:
    # The text format SQLAlchemy's SQLite DateTime uses, so Core queries read these rows back.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


# SQLite: dates go in as ISO text (what SQLAlchemy's Date reads back); booleans are stored as 1 and 0 as
# they are. Only the date columns need converting.
_DATE_POSITIONS = tuple(position for position, (_column, _path, kind) in enumerate(FIELDS) if kind == "date")


def _sqlite_row(record: PropertyRecord, lineage: tuple[Any, ...]) -> tuple[Any, ...]:
    values = list(record.values)
    for position in _DATE_POSITIONS:
        if values[position] is not None:
            values[position] = values[position].isoformat()
    return (record.property_id, *values, record.raw_json, *lineage)


@contextmanager
def _driver_errors_as_sqlalchemy(conn: Connection, what: str) -> Iterator[None]:
    """The bulk paths use the driver's cursor directly: raise its errors as SQLAlchemy's DBAPIError subclasses.

    The processor gives the claim back on OperationalError (connection lost, statement cancelled) and
    marks the file FAILED on other DBAPIErrors; a raw driver error would escape both and stop the run.
    """
    driver_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except driver_error as error:
        raise DBAPIError.instance(what, None, error, driver_error, dialect=conn.dialect) from error


def load_records(conn: Connection, payload: PayloadFile, page: PayloadPage) -> frozenset[str]:
    """Upsert the page's valid records, link them to the file, quarantine the rest; no commit (the caller's).

    The records are validated as they are taken (see PayloadPage): afterwards `page.accepted` and
    `page.rejected` hold the counts the file's status records. Returns the ids the file delivered in
    an earlier load and no longer does (always empty on a first load): their rows may need another
    source (processing/replay.py).
    """
    # A reload (a reprocess, or a retry after a reload failed) replaces the file's quarantine, and its links
    # only where they changed: a link kept is not written again.
    previous = _previous_load(conn, payload.file_id) if payload.attempts > 1 else frozenset()
    dialect = conn.dialect.name
    with _driver_errors_as_sqlalchemy(conn, f"bulk load of file {payload.file_id}"):
        if dialect == "postgresql":
            accepted = _load_postgresql(conn, payload, page, previous)
        elif dialect == "sqlite":
            records = list(page.records())
            _load_sqlite(conn, payload, records, previous)
            accepted = [record.property_id for record in records]
        else:
            raise NotImplementedError(f"database {dialect!r} is not supported (use SQLite or PostgreSQL)")
    dropped = previous.difference(accepted) if previous else frozenset()
    if dropped:
        conn.execute(
            delete(file_properties).where(
                file_properties.c.file_id == payload.file_id, file_properties.c.property_id.in_(sorted(dropped))
            )
        )
    if page.rejected:
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
                for item in sorted(page.rejected, key=_record_index)
            ],
        )
    return dropped


def upsert_from_source(
    conn: Connection, record: PropertyRecord, file_id: int, campaign_id: str, captured_at: datetime
) -> None:
    """Give one property the values of `record` from file `file_id`, whatever the row held (the caller knows it
    is now the newest file that delivers it: see processing/replay.py). first_seen_at is the caller's."""
    # The record's text goes in as it is (as a bulk load puts it), not re-serialized from a dict.
    raw_text = literal(record.raw_json, Text)
    values: dict[str, Any] = dict(zip(COLUMNS, record.values, strict=True))
    lineage: dict[str, Any] = {
        "raw": cast(raw_text, JSON) if conn.dialect.name == "postgresql" else raw_text,
        "source_file_id": file_id,
        "campaign_id": campaign_id,
        "captured_at": captured_at,
        "last_seen_at": captured_at,
    }
    inserted = {"property_id": record.property_id, **values, **lineage, "first_seen_at": captured_at}
    if conn.dialect.name == "postgresql":
        pg_statement = postgresql.insert(properties).values(**inserted)
        conn.execute(pg_statement.on_conflict_do_update(index_elements=["property_id"], set_={**values, **lineage}))
    else:
        lite_statement = sqlite.insert(properties).values(**inserted)
        conn.execute(lite_statement.on_conflict_do_update(index_elements=["property_id"], set_={**values, **lineage}))


def _previous_load(conn: Connection, file_id: int) -> frozenset[str]:
    """Delete the quarantine rows an earlier load of the file left; the ids it had delivered (its links)."""
    conn.execute(delete(quarantined_records).where(quarantined_records.c.file_id == file_id))
    return frozenset(
        conn.execute(select(file_properties.c.property_id).where(file_properties.c.file_id == file_id)).scalars()
    )


def forget_previous_load(conn: Connection, file_id: int) -> frozenset[str]:
    """Delete the link and quarantine rows an earlier load of the file left; the ids it had delivered."""
    delivered = frozenset(
        conn.execute(select(file_properties.c.property_id).where(file_properties.c.file_id == file_id)).scalars()
    )
    if delivered:
        conn.execute(delete(file_properties).where(file_properties.c.file_id == file_id))
    conn.execute(delete(quarantined_records).where(quarantined_records.c.file_id == file_id))
    return delivered


def _record_index(item: RejectedRecord) -> int:
    return item.record_index


def _load_sqlite(
    conn: Connection, payload: PayloadFile, records: Sequence[PropertyRecord], linked: frozenset[str]
) -> None:
    if not records:
        return
    captured = _sqlite_time(payload.captured_at)
    lineage = (payload.file_id, payload.campaign_id, captured, captured, captured)
    rows = [_sqlite_row(record, lineage) for record in records]
    cursor = _driver(conn).cursor()
    try:
        cursor.executemany(SQLITE_UPSERT, rows)
        cursor.executemany(
            "INSERT INTO file_properties (file_id, property_id) VALUES (?, ?)",
            [(payload.file_id, record.property_id) for record in records if record.property_id not in linked],
        )
    finally:
        cursor.close()


def _load_postgresql(conn: Connection, payload: PayloadFile, page: PayloadPage, linked: frozenset[str]) -> list[str]:
    """Stream the records into a COPY as they are validated, so the server works while Python validates.

    Properties the table does not hold yet go straight into `properties` (the cost of a plain COPY);
    known ones are upserted from a staging table, newest wins. Every transaction takes its row locks
    in the same order, new ids first (ascending) then known ids (ascending), which cannot deadlock:
    an id known to one transaction is committed, so no other one can hold it as a new insert. When a
    "new" id was committed by another processor meanwhile, the COPY fails on it: everything since the
    savepoint is undone and the load starts again from a fresh look at which ids are known.
    """
    captured = payload.captured_at
    lineage = (payload.file_id, payload.campaign_id, captured, captured, captured)
    ids_list = [i for i in page.ids() if i is not None]
    ids = _text_array(ids_list)
    driver = _driver(conn)  # psycopg 3
    first_pass: Iterator[PropertyRecord] | None = page.records(by_id=True)  # validated as the first COPY takes them
    every_record: list[PropertyRecord] = []  # all of them, once the first pass was cut short
    with driver.cursor() as cursor:
        # Each lost race means another processor committed one of this file's "new" ids, so the known ids
        # grow with every attempt: at most one attempt per id, and in practice a few.
        for _attempt in range(len(ids_list) + 1):
            cursor.execute(PG_KNOWN, (ids,))
            known = {row[0] for row in cursor}
            accepted: list[PropertyRecord] = []
            to_upsert: list[PropertyRecord] = []
            cursor.execute("SAVEPOINT load_records")
            try:
                with cursor.copy(PG_COPY_NEW) as copy:
                    copy.set_types(PG_COPY_TYPES)
                    for record in first_pass if first_pass is not None else every_record:
                        accepted.append(record)
                        if record.property_id in known:
                            to_upsert.append(record)
                        else:
                            copy.write_row((record.property_id, *record.values, record.raw_json, *lineage))
            except psycopg.errors.UniqueViolation:
                cursor.execute("ROLLBACK TO SAVEPOINT load_records")
                if first_pass is not None:
                    every_record = accepted + list(first_pass)  # validate the records the COPY had not reached
                    first_pass = None
                continue
            cursor.execute("RELEASE SAVEPOINT load_records")
            break
        else:
            raise AssertionError("every id became known, yet the COPY of new ids kept failing")
        if to_upsert:
            cursor.execute(PG_CREATE_STAGE)
            with cursor.copy(PG_COPY) as copy:
                copy.set_types(PG_COPY_TYPES)
                for record in to_upsert:
                    copy.write_row((record.property_id, *record.values, record.raw_json, *lineage))
            cursor.execute(PG_MERGE)
        accepted_ids = [record.property_id for record in accepted]
        new_links = [property_id for property_id in accepted_ids if property_id not in linked]
        if new_links:
            cursor.execute(PG_LINKS, (payload.file_id, _text_array(new_links)))
    return accepted_ids


def _driver(conn: Connection) -> Any:
    """The DBAPI connection under a Connection (sqlite3's or psycopg's), for the bulk paths."""
    driver = conn.connection.driver_connection
    if driver is None:
        raise RuntimeError("the connection was invalidated before the load")
    return driver


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL text[] literal: every element quoted, with its backslashes and double quotes escaped.

    One string parameter instead of a list that the driver adapts element by element (a tenth of the time).
    """
    return "{" + ",".join('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values) + "}"
