"""Bulk load of one file's records, its link rows and its quarantine, inside the caller's transaction.

A property is two rows: its content (`property_records`: the typed columns and the record as
received) and its sighting (`property_sightings`: the newest file that delivered it, that file's
campaign and capture time, the first-seen time, and the hash of the content). The view
`properties` joins them.

Newest wins. For each valid record of the file, against the property's sighting:

- a property the database does not hold: both rows are inserted (binary COPY on PostgreSQL);
- the file is newer than the last sighting (capture time, then file id), or is that very file
  loaded again: the sighting moves to this file, and the content is rewritten only when the
  record's content hash differs from the stored one. A record seen again unchanged costs its
  narrow sighting row and its link row, never a new version of the wide content row; a reload
  that changes nothing writes nothing;
- the file is older: the rows keep the newer data; only an earlier first-seen time is recorded.

The sightings of the file's properties are read before its records are validated: a record whose
bytes hash to its property's stored content hash is the record that row was loaded from (under the
same rules, see records.py) and is not decoded again. A file whose properties are most likely all
new (the previous file's were) skips that read and is inserted at once; an id that exists after all
fails the insert, which is undone, and the file is loaded the general way.

The decisions are made on the sightings as read. Every write of a sighting also checks that the row
is still as it was read (its hash, last sighting and file), so a concurrent processor's change can
never be overwritten unseen: when one is found, everything since the savepoint is undone and the
load starts again from a fresh read. Content rows are written only by the holder of their sighting's
row lock. Locks are taken new ids first (ascending), then known ids (ascending, one statement): an
id known to one transaction is committed, so no other one can hold it as a new insert; a "new" id
another processor committed meanwhile fails the insert, and the load starts again. A file loaded
before (a reprocess, or a retry after a failed reload) has its link and quarantine rows replaced.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
import psycopg
from sqlalchemy import JSON, Connection, Text, cast, delete, insert, literal, select, update
from sqlalchemy.exc import DBAPIError

from property_pipeline.db.schema import (
    as_utc,
    file_properties,
    property_records,
    property_sightings,
    quarantined_records,
    utcnow,
)
from property_pipeline.db.status import PayloadFile
from property_pipeline.processing.parse import PayloadPage, RejectedRecord
from property_pipeline.processing.records import COLUMNS, FIELDS, PropertyRecord

CONTENT_COLUMNS = ("property_id", *COLUMNS, "raw")
SIGHTING_COLUMNS = ("property_id", "content_hash", "source_file_id", "campaign_id", "last_seen_at", "first_seen_at")

# --- PostgreSQL ---------------------------------------------------------------------------------------------

PG_SIGHTINGS_OF = (
    "SELECT property_id, content_hash, last_seen_at, source_file_id, first_seen_at "
    "FROM property_sightings WHERE property_id = ANY(%s::text[])"
)
# Binary COPY: the client sends values as they are in memory instead of formatting each as text, which is most
# of the client's COPY work. The types must be the columns' types exactly; `raw` is sent as its bytes as
# received (json's binary form is its text; the server checks it is UTF-8 and JSON).
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
PG_CONTENT_TYPES = ("text", *(_PG_TYPE_OF_KIND[kind] for _column, _path, kind in FIELDS), "bytea")
PG_COPY_CONTENT = f"COPY property_records ({', '.join(CONTENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# New sightings from two arrays (ids as one text[] literal, hashes as bytea[]) and the file's lineage: one statement
# instead of a row-by-row COPY.
PG_INSERT_SIGHTINGS = (
    f"INSERT INTO property_sightings ({', '.join(SIGHTING_COLUMNS)}) "
    "SELECT id, hash, %(file)s, %(campaign)s, %(at)s, %(at)s "
    "FROM unnest(%(ids)s::text[], %(hashes)s::bytea[]) AS n(id, hash)"
)
# The file's sightings change where each is still as read. Staged by a binary COPY (a temporary table, emptied at
# each commit, no WAL): per row the id, the hash, last sighting and file read, whether the sighting moves to this
# file, and the record's hash. A row that moves takes the file's lineage; an older file only lowers the first-seen
# time.
SIGHTING_STAGE_COLUMNS = ("property_id", "read_hash", "read_seen", "read_file", "moves", "content_hash")
PG_SIGHTING_STAGE_TYPES = ("text", "bytea", "timestamptz", "int8", "bool", "bytea")
# Every processor locks sightings in id order, so that two of them never wait on each other in a circle: the UPDATE
# reaches property_sightings only by a nested loop over the stage in id order, probing the primary key (never by a
# sequential, bitmap or hash-joined scan, whose order is the rows' places on disk, nor by a merge join, which
# would walk the whole index for a few hundred rows). The settings last until PG_ANY_ORDER (or the transaction's
# end).
PG_STAGE_SIGHTINGS_IN_ID_ORDER = (
    'CREATE TEMP TABLE IF NOT EXISTS sighting_stage (property_id text COLLATE "C", read_hash bytea, '
    "read_seen timestamptz, read_file bigint, moves boolean, content_hash bytea) ON COMMIT DELETE ROWS; "
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true), "
    "set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true), "
    "set_config('jit', 'off', true)"  # the disabled paths' penalty inflates the plan's cost past the JIT's threshold
)
PG_COPY_SIGHTING_STAGE = f"COPY sighting_stage ({', '.join(SIGHTING_STAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
PG_UPDATE_SIGHTINGS = (
    "UPDATE property_sightings s SET content_hash = CASE WHEN n.moves THEN n.content_hash ELSE s.content_hash END, "
    "source_file_id = CASE WHEN n.moves THEN %(file)s ELSE s.source_file_id END, "
    "campaign_id = CASE WHEN n.moves THEN %(campaign)s ELSE s.campaign_id END, "
    "last_seen_at = CASE WHEN n.moves THEN %(at)s ELSE s.last_seen_at END, "
    "first_seen_at = LEAST(s.first_seen_at, %(at)s) "
    "FROM (SELECT * FROM sighting_stage ORDER BY property_id) n "
    "WHERE s.property_id = n.property_id AND s.content_hash IS NOT DISTINCT FROM n.read_hash "
    "AND s.last_seen_at = n.read_seen AND s.source_file_id = n.read_file"
)
PG_ANY_ORDER = "RESET enable_seqscan; RESET enable_bitmapscan; RESET enable_hashjoin; RESET enable_mergejoin; RESET jit"
# A changed content row is replaced: deleted, then copied in with the new values (the COPY path is the cheapest way
# into the table; an UPDATE from a staging table would copy, compress and check every record twice). The holder
# of the sighting's row lock is the only writer of its content row, so no one sees or takes it in between.
PG_DELETE_CONTENT = "DELETE FROM property_records WHERE property_id = ANY(%s::text[])"
PG_LINKS = "INSERT INTO file_properties (file_id, property_id) SELECT %s, unnest(%s::text[])"
PG_SAVEPOINT = "SAVEPOINT load_records"
PG_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT load_records"
PG_RELEASE_SAVEPOINT = "RELEASE SAVEPOINT load_records"

# --- SQLite -------------------------------------------------------------------------------------------------

SQLITE_SIGHTINGS_OF = (
    "SELECT property_id, content_hash, last_seen_at, source_file_id, first_seen_at "
    "FROM property_sightings WHERE property_id IN (SELECT value FROM json_each(?))"
)
# The record's bytes are stored as text, as received (the page was checked to be UTF-8).
SQLITE_INSERT_CONTENT = (
    f"INSERT INTO property_records ({', '.join(CONTENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in CONTENT_COLUMNS[:-1])}, CAST(? AS TEXT))"
)
SQLITE_INSERT_SIGHTING = "INSERT INTO property_sightings ({}) VALUES ({})".format(
    ", ".join(SIGHTING_COLUMNS), ", ".join("?" for _ in SIGHTING_COLUMNS)
)
SQLITE_UPDATE_SIGHTING = (
    "UPDATE property_sightings SET content_hash = CASE WHEN ?5 THEN ?6 ELSE content_hash END, "
    "source_file_id = CASE WHEN ?5 THEN ?7 ELSE source_file_id END, "
    "campaign_id = CASE WHEN ?5 THEN ?8 ELSE campaign_id END, "
    "last_seen_at = CASE WHEN ?5 THEN ?9 ELSE last_seen_at END, first_seen_at = min(first_seen_at, ?9) "
    "WHERE property_id = ?1 AND content_hash IS ?2 AND last_seen_at = ?3 AND source_file_id = ?4"
)
SQLITE_UPDATE_CONTENT = (
    f"UPDATE property_records SET {', '.join(f'{name} = ?' for name in CONTENT_COLUMNS[1:-1])}, "
    "raw = CAST(? AS TEXT) WHERE property_id = ?"
)
SQLITE_LINK = "INSERT INTO file_properties (file_id, property_id) VALUES (?, ?)"
SQLITE_SAVEPOINT = "SAVEPOINT load_records"
SQLITE_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT load_records"
SQLITE_RELEASE_SAVEPOINT = "RELEASE SAVEPOINT load_records"

# SQLite: dates go in as ISO text (what SQLAlchemy's Date reads back); booleans are stored as 1 and 0 as
# they are. Only the date columns need converting.
_DATE_POSITIONS = tuple(position for position, (_column, _path, kind) in enumerate(FIELDS) if kind == "date")


@dataclass(frozen=True)
class Loaded:
    """What a file's load found: the ids an earlier load of the file delivered and this one no longer does
    (always empty on a first load; their rows may need another source, see processing/replay.py), and whether
    every record was a property the database did not hold."""

    dropped: frozenset[str]
    all_new: bool


class LoadRace(Exception):
    """Another processor changed or added one of the file's properties after they were read: start again."""


@dataclass(frozen=True, slots=True)
class _Sighting:
    """A property's sighting as read; `last_seen_at` as the driver gave it (the checks hand it back to the
    database as it is)."""

    content_hash: bytes | None
    last_seen_at: Any
    source_file_id: int
    seen: datetime  # last_seen_at as an aware datetime
    first: datetime  # first_seen_at, the same


@dataclass
class _Plan:
    """What the file's records do to the database, decided from the sightings as read."""

    new: list[PropertyRecord] = field(default_factory=list)
    # Sightings to change, in id order: (id, its hash, last sighting and file as read; the writes check that it
    # is still so), whether it moves to this file (False: an older file, only an earlier first-seen time), the
    # record's hash.
    sightings: list[tuple[str, bytes | None, Any, int, bool, bytes]] = field(default_factory=list)
    contents: list[PropertyRecord] = field(default_factory=list)  # content rewrites (their sightings move)


def _plan(records: Sequence[PropertyRecord], known: dict[str, _Sighting], payload: PayloadFile) -> _Plan:
    """Newest wins, decided per record (see the module's docstring); `records` in id order."""
    plan = _Plan()
    incoming = (payload.captured_at, payload.file_id)
    for record in records:
        seen = known.get(record.property_id)
        if seen is None:
            plan.new.append(record.with_values())
            continue
        read = (record.property_id, seen.content_hash, seen.last_seen_at, seen.source_file_id)
        last = (seen.seen, seen.source_file_id)
        if incoming >= last:
            changed = record.content_hash != seen.content_hash
            if incoming == last and not changed:
                continue  # the file the row came from, loaded again with nothing changed: nothing to write
            plan.sightings.append((*read, True, record.content_hash))
            if changed:
                plan.contents.append(record.with_values())
        elif payload.captured_at < seen.first:
            plan.sightings.append((*read, False, record.content_hash))
    return plan


def load_records(conn: Connection, payload: PayloadFile, page: PayloadPage, *, expect_new: bool = False) -> Loaded:
    """Load the page's valid records, link them to the file, quarantine the rest; no commit (the caller's).

    Afterwards `page.accepted` and `page.rejected` hold the counts the file's status records.
    `expect_new`: the file's properties are most likely all new to the database (the previous file's were):
    they are inserted at once, and looked up only if one turns out to exist already.
    """
    # A reload (a reprocess, or a retry after a reload failed) replaces the file's quarantine, and its links
    # only where they changed: a link kept is not written again.
    previous = _previous_load(conn, payload.file_id) if payload.attempts > 1 else frozenset()
    expect_new = expect_new and not previous
    dialect = conn.dialect.name
    with _driver_errors_as_sqlalchemy(conn, f"bulk load of file {payload.file_id}"):
        if dialect == "postgresql":
            with _driver(conn).cursor() as cursor:
                records, all_new = _load_postgresql(cursor, payload, page, expect_new)
                ids = [r.property_id for r in records if r.property_id not in previous]
                cursor.execute(PG_LINKS, (payload.file_id, _text_array(ids)))
        elif dialect == "sqlite":
            cursor = _driver(conn).cursor()
            try:
                records, all_new = _load_sqlite(cursor, payload, page, expect_new)
                links = [(payload.file_id, r.property_id) for r in records if r.property_id not in previous]
                cursor.executemany(SQLITE_LINK, links)
            finally:
                cursor.close()
        else:
            raise NotImplementedError(f"database {dialect!r} is not supported (use SQLite or PostgreSQL)")
    dropped = previous.difference(record.property_id for record in records) if previous else frozenset()
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
    return Loaded(dropped, all_new)


def _validated(
    page: PayloadPage, sightings_of: Callable[[Sequence[str]], dict[str, _Sighting]]
) -> tuple[list[PropertyRecord], dict[str, _Sighting]]:
    """The page's valid records in id order, and the sightings of their properties as read now.

    The sightings of the ids the records most likely have are read first, so that a record whose bytes are the
    very ones its property's row was loaded from is taken as it is, not decoded again (parse.py); the ids no
    guess covered are read after validation."""
    # A page validated already (read ahead while the previous file committed) has nothing left to skip.
    guesses = [] if page.validated else page.id_guesses()
    known = sightings_of(guesses) if guesses else {}
    stored = {property_id: sighting.content_hash for property_id, sighting in known.items()}
    records = page.records(by_id=True, stored=stored)
    guessed = set(guesses)
    unread = [record.property_id for record in records if record.property_id not in guessed]
    if unread:
        known.update(sightings_of(unread))
    return records, known


def _pg_sightings_of(cursor: Any, property_ids: Sequence[str]) -> dict[str, _Sighting]:
    cursor.execute(PG_SIGHTINGS_OF, (_text_array(property_ids),))
    return {row[0]: _pg_sighting(row) for row in cursor.fetchall()}


def _load_postgresql(
    cursor: Any, payload: PayloadFile, page: PayloadPage, expect_new: bool
) -> tuple[list[PropertyRecord], bool]:
    """The page's records loaded (see the module's docstring); the valid records, and whether all were new."""
    if expect_new:
        records = page.records(by_id=True)
        ids = _text_array([record.property_id for record in records])
        cursor.execute(PG_SAVEPOINT)
        try:
            _write_postgresql(cursor, _Plan(new=list(records)), payload, ids)
        except psycopg.errors.UniqueViolation:  # not all new after all: the general way
            cursor.execute(PG_ROLLBACK_TO_SAVEPOINT)
        else:
            cursor.execute(PG_RELEASE_SAVEPOINT)
            return records, True
        known = _pg_sightings_of(cursor, [record.property_id for record in records])
    else:
        records, known = _validated(page, partial(_pg_sightings_of, cursor))
        ids = _text_array([record.property_id for record in records])
    # Each race lost means another processor committed a change to one of the file's properties, which the next
    # read sees: at most one attempt per record, and in practice one or two.
    for attempt in range(len(records) + 1):
        if attempt:
            cursor.execute(PG_SIGHTINGS_OF, (ids,))
            known = {row[0]: _pg_sighting(row) for row in cursor.fetchall()}
        plan = _plan(records, known, payload)
        cursor.execute(PG_SAVEPOINT)
        try:
            _write_postgresql(cursor, plan, payload, ids if not known else None)
        except (psycopg.errors.UniqueViolation, LoadRace):
            cursor.execute(PG_ROLLBACK_TO_SAVEPOINT)
            continue
        cursor.execute(PG_RELEASE_SAVEPOINT)
        return records, not known
    raise AssertionError("every read was current, yet the load kept finding its properties changed")


def _write_postgresql(cursor: Any, plan: _Plan, payload: PayloadFile, new_ids: str | None) -> None:
    """`new_ids`: the new records' ids as a text[] literal when already built (every record is new)."""
    if plan.new:
        _copy_content(cursor, plan.new)
        cursor.execute(
            PG_INSERT_SIGHTINGS,
            {
                "ids": new_ids or _text_array([record.property_id for record in plan.new]),
                "hashes": _bytea_array([record.content_hash for record in plan.new]),
                "file": payload.file_id,
                "campaign": payload.campaign_id,
                "at": payload.captured_at,
            },
        )
    if plan.sightings:
        cursor.execute(PG_STAGE_SIGHTINGS_IN_ID_ORDER)
        with cursor.copy(PG_COPY_SIGHTING_STAGE) as copy:
            copy.set_types(PG_SIGHTING_STAGE_TYPES)
            for row in plan.sightings:
                copy.write_row(row)
        lineage = {"file": payload.file_id, "campaign": payload.campaign_id, "at": payload.captured_at}
        cursor.execute(PG_UPDATE_SIGHTINGS, lineage)
        if cursor.rowcount != len(plan.sightings):
            raise LoadRace
        cursor.execute(PG_ANY_ORDER)
    if plan.contents:
        cursor.execute(PG_DELETE_CONTENT, (_text_array([record.property_id for record in plan.contents]),))
        _copy_content(cursor, plan.contents)


def _copy_content(cursor: Any, records: Sequence[PropertyRecord]) -> None:
    with cursor.copy(PG_COPY_CONTENT) as copy:
        copy.set_types(PG_CONTENT_TYPES)
        for record in records:
            copy.write_row((record.property_id, *record.typed_values(), record.raw))


def _pg_sighting(row: tuple[Any, ...]) -> _Sighting:
    return _Sighting(row[1], row[2], row[3], row[2], row[4])


def _sqlite_sightings_of(cursor: Any, property_ids: Sequence[str]) -> dict[str, _Sighting]:
    cursor.execute(SQLITE_SIGHTINGS_OF, (_json_array(property_ids),))
    return {row[0]: _sqlite_sighting(row) for row in cursor.fetchall()}


def _load_sqlite(
    cursor: Any, payload: PayloadFile, page: PayloadPage, expect_new: bool
) -> tuple[list[PropertyRecord], bool]:
    """SQLite has one writer and the file's transaction holds it (BEGIN IMMEDIATE): the sightings read are
    current, and the checks of the updates always pass. The valid records, and whether all were new."""
    at = _sqlite_time(payload.captured_at)
    if expect_new:
        records = page.records(by_id=True)
        cursor.execute(SQLITE_SAVEPOINT)
        try:
            _write_sqlite(cursor, _Plan(new=list(records)), payload, at)
        except sqlite3.IntegrityError:  # not all new after all: the general way
            cursor.execute(SQLITE_ROLLBACK_TO_SAVEPOINT)
        else:
            cursor.execute(SQLITE_RELEASE_SAVEPOINT)
            return records, True
        known = _sqlite_sightings_of(cursor, [record.property_id for record in records])
    else:
        records, known = _validated(page, partial(_sqlite_sightings_of, cursor))
    _write_sqlite(cursor, _plan(records, known, payload), payload, at)
    return records, not known


def _write_sqlite(cursor: Any, plan: _Plan, payload: PayloadFile, at: str) -> None:
    if plan.new:
        cursor.executemany(SQLITE_INSERT_CONTENT, [_sqlite_content(record) for record in plan.new])
        cursor.executemany(
            SQLITE_INSERT_SIGHTING,
            [(r.property_id, r.content_hash, payload.file_id, payload.campaign_id, at, at) for r in plan.new],
        )
    if plan.sightings:
        lineage = (payload.file_id, payload.campaign_id, at)
        cursor.executemany(SQLITE_UPDATE_SIGHTING, [(*sighting, *lineage) for sighting in plan.sightings])
        if cursor.rowcount != len(plan.sightings):
            raise AssertionError("a SQLite sighting changed under the writer's own transaction")
    if plan.contents:
        cursor.executemany(
            SQLITE_UPDATE_CONTENT,
            [(*_sqlite_content(record)[1:], record.property_id) for record in plan.contents],
        )


def _sqlite_sighting(row: tuple[Any, ...]) -> _Sighting:
    _id, content_hash, last_seen_at, source_file_id, first_seen_at = row
    seen, first = as_utc(last_seen_at), as_utc(first_seen_at)
    assert seen is not None and first is not None
    return _Sighting(content_hash, last_seen_at, source_file_id, seen, first)


def _sqlite_content(record: PropertyRecord) -> tuple[Any, ...]:
    values = list(record.typed_values())
    for position in _DATE_POSITIONS:
        if values[position] is not None:
            values[position] = values[position].isoformat()
    return (record.property_id, *values, record.raw)


def _sqlite_time(moment: datetime) -> str:
    # The text format SQLAlchemy's SQLite DateTime uses, so Core queries read these rows back.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


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


def write_from_source(
    conn: Connection, record: PropertyRecord, file_id: int, campaign_id: str, captured_at: datetime
) -> None:
    """Give one property the values of `record` from file `file_id`, whatever its rows held (the caller knows the
    file is now the newest that delivers it: see processing/replay.py). first_seen_at is the caller's."""
    sighting = {
        "content_hash": record.content_hash,
        "source_file_id": file_id,
        "campaign_id": campaign_id,
        "last_seen_at": captured_at,
    }
    # The record's text goes in as it is (as a bulk load puts it), not serialized again as a JSON value.
    raw_text = literal(record.raw_json, Text)
    raw = cast(raw_text, JSON) if conn.dialect.name == "postgresql" else raw_text
    content = {"raw": raw, **dict(zip(COLUMNS, record.typed_values(), strict=True))}
    # The sighting first: its row lock is what every writer of the property's rows holds.
    written = conn.execute(
        update(property_sightings).where(property_sightings.c.property_id == record.property_id).values(**sighting)
    ).rowcount
    if written:
        conn.execute(
            update(property_records).where(property_records.c.property_id == record.property_id).values(**content)
        )
        return
    conn.execute(
        insert(property_sightings).values(property_id=record.property_id, first_seen_at=captured_at, **sighting)
    )
    conn.execute(insert(property_records).values(property_id=record.property_id, **content))


def delete_property(conn: Connection, property_id: str) -> None:
    """Remove a property no settled file delivers any more (its sighting first, as every writer locks it)."""
    conn.execute(delete(property_sightings).where(property_sightings.c.property_id == property_id))
    conn.execute(delete(property_records).where(property_records.c.property_id == property_id))


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
    joined = '","'.join(values)
    if "\\" in joined or joined.count('"') != 2 * (len(values) - 1):  # an id holds a backslash or a quote
        joined = '","'.join(value.replace("\\", "\\\\").replace('"', '\\"') for value in values)
    return '{"' + joined + '"}' if values else "{}"


def _bytea_array(values: Sequence[bytes]) -> str:
    """A PostgreSQL bytea[] literal of hex values: one string parameter, like `_text_array`."""
    return '{"\\\\x' + '","\\\\x'.join(value.hex() for value in values) + '"}' if values else "{}"


def _json_array(values: Sequence[str]) -> str:
    """A JSON array of the ids, one parameter for SQLite's json_each (no limit on the number of variables)."""
    return orjson.dumps(list(values)).decode()
