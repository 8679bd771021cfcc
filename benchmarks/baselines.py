"""The baselines, each run in its own child process: `python -m benchmarks.baselines <name> '<json arguments>'`.

Each prints one JSON object (`seconds` measured inside, around the work only, plus counts). They read
the same payload files the pipeline processes and do the least work that still loads the same rows:
no validation, no status table, no exactly-once. That is what makes them floors.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from benchmarks.data import Dataset
from property_pipeline.processing.records import COLUMNS, FIELDS
from property_pipeline.store.layout import PAYLOADS_DIR, parse_payload_name

# (key, key inside a nested object or None, is the date column) in the column order of `properties`.
_PATHS = tuple((path[0], path[1] if len(path) == 2 else None, kind == "date") for _column, path, kind in FIELDS)
CAMPAIGN = "bench"
# As in `properties` (and the loader); spelled out so that a baseline process imports no SQLAlchemy: a
# bigger heap would make its garbage collector slower and the baseline weaker than it is.
ALL_COLUMNS = (
    "property_id",
    *COLUMNS,
    "raw",
    "source_file_id",
    "campaign_id",
    "captured_at",
    "first_seen_at",
    "last_seen_at",
)
_PG_TYPES = {
    "int32": "int4",
    "int64": "int8",
    "number": "float8",
    "lat": "float8",
    "lon": "float8",
    "bool": "bool",
    "date": "date",
}
# Binary COPY needs each column's exact type; "raw" depends on the table (jsonb or json).
_COPY_TYPES = (
    "text",
    *(_PG_TYPES.get(kind, "text") for _column, _path, kind in FIELDS),
    "raw",
    "int8",
    "text",
    "timestamptz",
    "timestamptz",
    "timestamptz",
)


def _values(record: dict[str, Any], *, dates_as_text: bool) -> list[Any]:
    """The typed columns straight from the record (no checks: the benchmark records are valid)."""
    values = []
    for key, subkey, is_date in _PATHS:
        value = record.get(key)
        if subkey is not None and value is not None:
            value = value.get(subkey)
        if is_date and value is not None and not dates_as_text:
            value = date.fromisoformat(value)
        values.append(value)
    return values


def _files(arguments: dict[str, Any]) -> list[Path]:
    return list(Dataset.from_argument(arguments["data"]).paths())


def _records(paths: list[Path]) -> Iterator[tuple[int, Any, dict[str, Any]]]:
    """(file number, capture time, record) for every record of every file, reading each file once."""
    for number, path in enumerate(paths, start=1):
        captured_at = parse_payload_name(path.name).captured_at
        for record in orjson.loads(path.read_bytes())["data"]:
            yield number, captured_at, record


def _as_is(text: str) -> str:
    return text


def _cut_rows(paths: list[Path], *, as_jsonb: bool) -> Iterator[tuple[Any, ...]]:
    """The rows of every file from a client as light as the pipeline's: each page cut into its records' bytes by
    msgspec, the typed fields decoded by the pipeline's compiled decoder, the bytes sent as they are."""
    from psycopg.types.json import Jsonb

    from property_pipeline.processing.parse import _ENVELOPE
    from property_pipeline.processing.records import _DECODER, _values_of

    for number, path in enumerate(paths, start=1):
        captured_at = parse_payload_name(path.name).captured_at
        lineage = (number, CAMPAIGN, captured_at, captured_at, captured_at)
        for raw in _ENVELOPE.decode(path.read_bytes()).data:
            spec: Any = _DECODER.decode(raw)
            record_bytes = memoryview(raw)
            value: Any = Jsonb(str(record_bytes, "utf-8"), dumps=_as_is) if as_jsonb else record_bytes
            yield (str(spec.id), *_values_of(spec), value, *lineage)


def copy_into_table(arguments: dict[str, Any]) -> dict[str, Any]:
    """Plain COPY of every record into an empty one-table `properties`: one stream, one transaction.

    `raw_type` and `compression` say how the table keeps the raw record: `jsonb` with the server's
    default compression is `properties` as it was before migration 0004. Binary COPY with the column
    types set, like the loader: the strongest plain COPY from Python.
    """
    import psycopg
    from psycopg.types.json import Jsonb

    table, raw_type, compression = arguments["table"], arguments["raw_type"], arguments["compression"]
    types = [("jsonb" if raw_type == "jsonb" else "text") if kind == "raw" else kind for kind in _COPY_TYPES]
    with psycopg.connect(arguments["db_url"]) as conn:
        # The table (benchmarks/common.py: create_wide_table) is empty; only `raw` may be kept another way.
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN raw TYPE {raw_type} USING raw::{raw_type}")
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN raw SET COMPRESSION {compression}")
        conn.commit()
        conn.execute("CHECKPOINT")
        conn.commit()
        started = time.perf_counter()
        rows = 0
        statement = f"COPY {table} ({', '.join(ALL_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            if arguments.get("client") == "msgspec":
                raw_sent = "bytea" if raw_type == "json" else "jsonb"  # json's binary form: the text's bytes
                copy.set_types([raw_sent if kind == "raw" else kind for kind in _COPY_TYPES])
                for row in _cut_rows(_files(arguments), as_jsonb=raw_type == "jsonb"):
                    copy.write_row(row)
                    rows += 1
            else:
                copy.set_types(types)
                for number, captured_at, record in _records(_files(arguments)):
                    text = orjson.dumps(record).decode()
                    raw = Jsonb(text, dumps=_as_is) if raw_type == "jsonb" else text
                    lineage = (number, CAMPAIGN, captured_at, captured_at, captured_at)
                    copy.write_row((str(record["id"]), *_values(record, dates_as_text=False), raw, *lineage))
                    rows += 1
        conn.commit()
        seconds = time.perf_counter() - started
        stored = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        method = conn.execute(f"SELECT pg_column_compression(raw) FROM {table} LIMIT 1").fetchone()
        conn.execute(f"DROP TABLE {table}")
        conn.commit()
    return {"seconds": seconds, "rows": rows, "stored": stored, "compression": method[0] if method else None}


# The least exactly-once pipeline (`least_pipeline`): the statements `process` runs for a first load and for a
# re-capture, spelled out without SQLAlchemy (see ALL_COLUMNS).
_CONTENT_COLUMNS = ("property_id", *COLUMNS, "raw")
_LEAST_CLAIM = (
    "UPDATE batch_file_status SET status = 'PROCESSING', locked_by = %(worker)s, "
    "locked_until = now() + interval '5 minutes', attempts = attempts + 1 "
    "WHERE file_id = (SELECT file_id FROM batch_file_status WHERE status = 'PENDING' ORDER BY file_id LIMIT 1 "
    "FOR UPDATE SKIP LOCKED) AND status = 'PENDING' RETURNING file_id, file_path, campaign_id, captured_at, "
    "checksum_sha256"
)
_LEAST_EVENT = (
    "INSERT INTO file_status_events (file_id, at, from_status, to_status, actor, detail) "
    "VALUES (%s, now(), %s, %s, %s, %s)"
)
_LEAST_HOLD = (
    "SELECT file_id FROM batch_file_status WHERE file_id = %s AND status = 'PROCESSING' AND locked_by = %s FOR UPDATE"
)
_LEAST_COPY_CONTENT = f"COPY property_records ({', '.join(_CONTENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_LEAST_SIGHTINGS = (
    "INSERT INTO property_sightings (property_id, content_hash, source_file_id, campaign_id, last_seen_at, "
    "first_seen_at) SELECT id, hash, %(file)s, %(campaign)s, %(at)s, %(at)s "
    "FROM unnest(%(ids)s::text[], %(hashes)s::bytea[]) AS n(id, hash)"
)
_LEAST_LINKS = "INSERT INTO file_properties (file_id, property_id) SELECT %s, unnest(%s::text[])"
_LEAST_COMPLETE = (
    "UPDATE batch_file_status SET status = 'COMPLETED', processed_at = now(), properties_count = %(count)s, "
    "success_count = %(count)s, error_count = 0, processing_time_ms = %(ms)s, error_details = NULL, "
    "locked_by = NULL, locked_until = NULL WHERE file_id = %(file)s AND status = 'PROCESSING' "
    "AND locked_by = %(worker)s"
)
_LEAST_SIGHTINGS_OF = "SELECT property_id, content_hash FROM property_sightings WHERE property_id = ANY(%s::text[])"
# A few hundred staged rows against the whole table: only probing its primary key row by row is cheap (as in
# `process`); the planner, which knows nothing of a temporary table's rows, is told so.
_LEAST_STAGE = (
    'CREATE TEMP TABLE IF NOT EXISTS least_stage (property_id text COLLATE "C", content_hash bytea) '
    "ON COMMIT DELETE ROWS; SELECT set_config('enable_seqscan', 'off', true), "
    "set_config('enable_bitmapscan', 'off', true), set_config('enable_hashjoin', 'off', true), "
    "set_config('enable_mergejoin', 'off', true), set_config('jit', 'off', true)"
)
_LEAST_COPY_STAGE = "COPY least_stage (property_id, content_hash) FROM STDIN (FORMAT BINARY)"
_LEAST_MOVE_SIGHTINGS = (
    "UPDATE property_sightings s SET content_hash = n.content_hash, source_file_id = %(file)s, "
    "campaign_id = %(campaign)s, last_seen_at = %(at)s FROM least_stage n WHERE s.property_id = n.property_id"
)
_LEAST_DELETE_CONTENT = "DELETE FROM property_records WHERE property_id = ANY(%s::text[])"
# The id and the typed columns as in the wide table, then `raw` as the record's bytes (json's binary form is its text).
_CONTENT_TYPES = (*_COPY_TYPES[: len(FIELDS) + 1], "bytea")


def _text_array(values: list[str]) -> str:
    return "{" + ",".join(f'"{value}"' for value in values) + "}"  # the benchmark's ids need no escapes


def _copy_content(cursor: Any, rows: list[tuple[str, tuple[Any, ...], memoryview]]) -> None:
    with cursor.copy(_LEAST_COPY_CONTENT) as copy:
        copy.set_types(_CONTENT_TYPES)
        for property_id, values, raw in rows:
            copy.write_row((property_id, *values, raw))


def _least_first_load(cursor: Any, body: bytes, lineage: dict[str, Any], *, link_rows: bool = True) -> int:
    """Every record of the page new: content rows, sightings and (unless told not to) links inserted."""
    from property_pipeline.processing.parse import _ENVELOPE
    from property_pipeline.processing.records import _DECODER, _values_of, content_hash

    records = []
    for raw in _ENVELOPE.decode(body).data:
        spec: Any = _DECODER.decode(raw)
        records.append((str(spec.id), _values_of(spec), memoryview(raw), content_hash(raw)))
    records.sort(key=_first)
    ids = _text_array([record[0] for record in records])
    _copy_content(cursor, [record[:3] for record in records])
    hashes = "{" + ",".join(f'"\\\\x{record[3].hex()}"' for record in records) + "}"
    cursor.execute(_LEAST_SIGHTINGS, {**lineage, "ids": ids, "hashes": hashes})
    if link_rows:
        cursor.execute(_LEAST_LINKS, (lineage["file"], ids))
    return len(records)


def _least_recapture(cursor: Any, body: bytes, lineage: dict[str, Any]) -> int:
    """Every record of the page known and this file the newest: a record whose bytes hash to the stored hash only
    moves its sighting; a changed one is decoded and its content row replaced; every record gets its link row."""
    from property_pipeline.processing.parse import _ENVELOPE, _guess_id
    from property_pipeline.processing.records import _DECODER, _values_of, content_hash

    raws = [memoryview(raw) for raw in _ENVELOPE.decode(body).data]
    ids = [_guess_id(raw) for raw in raws]  # the ids as `process` reads them before validating
    cursor.execute(_LEAST_SIGHTINGS_OF, (_text_array([i for i in ids if i is not None]),))
    stored = dict(cursor.fetchall())
    moves: list[tuple[str, bytes]] = []
    changed: list[tuple[str, tuple[Any, ...], memoryview]] = []
    for guessed, raw in zip(ids, raws, strict=True):
        raw_hash = content_hash(raw)
        if guessed is not None and stored.get(guessed) == raw_hash:
            moves.append((guessed, raw_hash))
            continue
        spec: Any = _DECODER.decode(raw)
        property_id = str(spec.id)
        moves.append((property_id, raw_hash))
        changed.append((property_id, _values_of(spec), raw))
    moves.sort(key=_first)
    changed.sort(key=_first)
    cursor.execute(_LEAST_STAGE)
    with cursor.copy(_LEAST_COPY_STAGE) as copy:
        copy.set_types(("text", "bytea"))
        for move in moves:
            copy.write_row(move)
    cursor.execute(_LEAST_MOVE_SIGHTINGS, lineage)
    if changed:
        cursor.execute(_LEAST_DELETE_CONTENT, (_text_array([row[0] for row in changed]),))
        _copy_content(cursor, changed)
    cursor.execute(_LEAST_LINKS, (lineage["file"], _text_array([move[0] for move in moves])))
    return len(moves)


def _least_worker(db_url: str, payloads: Path, worker: str, load: Callable[[Any, bytes, dict[str, Any]], int]) -> None:
    """Claim and load files with `load` until none is PENDING (see `least_pipeline`)."""
    import psycopg

    with psycopg.connect(db_url) as conn, conn.cursor() as cursor:
        while True:
            started = time.perf_counter()
            cursor.execute("SET LOCAL synchronous_commit TO OFF")  # as the pipeline's claim: flushed by the load
            cursor.execute(_LEAST_CLAIM, {"worker": worker})
            claimed = cursor.fetchone()
            if claimed is None:
                conn.commit()
                return
            file_id, file_path, campaign_id, captured_at, checksum = claimed
            cursor.execute(_LEAST_EVENT, (file_id, "PENDING", "PROCESSING", worker, None))
            conn.commit()
            body = (payloads / file_path).read_bytes()
            if hashlib.sha256(body).hexdigest() != checksum:
                raise RuntimeError(f"{file_path}: checksum mismatch")
            cursor.execute(_LEAST_HOLD, (file_id, worker))
            loaded = load(cursor, body, {"file": file_id, "campaign": campaign_id, "at": captured_at})
            milliseconds = max(1, round((time.perf_counter() - started) * 1000))
            cursor.execute(_LEAST_COMPLETE, {"count": loaded, "ms": milliseconds, "file": file_id, "worker": worker})
            if cursor.rowcount != 1:
                raise RuntimeError(f"file {file_id}: the claim was lost")
            cursor.execute(_LEAST_EVENT, (file_id, "PROCESSING", "COMPLETED", worker, f"{loaded} loaded"))
            conn.commit()


def _first(record: tuple[Any, ...]) -> Any:
    return record[0]


def least_pipeline(arguments: dict[str, Any]) -> dict[str, Any]:
    """The least a pipeline with `process`'s guarantees can do to load a registered backlog into this schema, from
    `workers` forked processes (as `process` runs them). Per file: a committed claim (`FOR UPDATE SKIP LOCKED`, a
    lease, an event), the bytes checked against their SHA-256, then one transaction that holds the claim, loads
    the page and records COMPLETED with its counts and an event.

    `recapture` false (a first load): every record is cut, decoded by the pipeline's compiled decoder and hashed;
    its content row, sighting and link row are inserted (`link_rows` false: no link rows, the most any other way
    of keeping them could save; the result then breaks the lineage invariant). True (every property known, this
    file the newest): a record whose bytes hash to the stored hash moves its sighting only (staged by COPY, one
    UPDATE); a changed one is decoded and its content row replaced (DELETE, COPY); every record gets its link row.

    Left out, because a pipeline that keeps its promises cannot do less: SQLAlchemy, the payload root's markers,
    the lease's heartbeat, the state, zip and NUL checks, duplicate ids in a file, quarantine, the newest-wins
    test and the checks against concurrent processors, lock ordering, errors and retries. So it is a floor for
    `process` on this machine, and the most a change to its code (not to the schema) could reach.
    """
    payloads = Path(arguments["logs_dir"]) / PAYLOADS_DIR
    if arguments.get("recapture"):
        load: Callable[[Any, bytes, dict[str, Any]], int] = _least_recapture
    else:
        load = partial(_least_first_load, link_rows=arguments.get("link_rows", True))
    started = time.perf_counter()
    children = []
    for number in range(int(arguments["workers"])):
        pid = os.fork()
        if pid == 0:  # a worker: its exit status says whether it finished
            status = 1
            try:
                _least_worker(arguments["db_url"], payloads, f"least-{os.getpid()}-{number}", load)
                status = 0
            except BaseException as error:  # noqa: BLE001 - reported, and the parent fails the baseline
                print(f"least pipeline worker failed: {error!r}", file=sys.stderr)
            finally:
                os._exit(status)
        children.append(pid)
    failed = sum(1 for pid in children if os.waitpid(pid, 0)[1] != 0)
    seconds = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{failed} least-pipeline workers failed")
    return {"seconds": seconds, "workers": len(children)}


def staged_upsert(arguments: dict[str, Any]) -> dict[str, Any]:
    """The textbook merge of a re-capture into the loaded one-table `properties` (`table`, holding the first month):
    COPY every record into a temporary staging table, then one `INSERT ... SELECT ... ON CONFLICT DO UPDATE` of
    every column; one transaction.

    No newest-wins test, no link rows, no status: the floor a merge that writes every row has to pay.
    Source file ids continue after the `first_file_id - 1` files loaded before.
    """
    import psycopg

    types = ["text" if kind == "raw" else kind for kind in _COPY_TYPES]
    updated = [column for column in ALL_COLUMNS if column not in ("property_id", "first_seen_at")]
    table = arguments["table"]
    merge = (
        f"INSERT INTO {table} ({', '.join(ALL_COLUMNS)}) SELECT {', '.join(ALL_COLUMNS)} FROM stage "
        f"ON CONFLICT (property_id) DO UPDATE SET {', '.join(f'{column} = excluded.{column}' for column in updated)}"
    )
    offset = int(arguments["first_file_id"]) - 1
    with psycopg.connect(arguments["db_url"]) as conn:
        started = time.perf_counter()
        conn.execute(f"CREATE TEMP TABLE stage (LIKE {table} INCLUDING DEFAULTS INCLUDING COMPRESSION)")
        statement = f"COPY stage ({', '.join(ALL_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        rows = 0
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            for number, captured_at, record in _records(_files(arguments)):
                lineage = (offset + number, CAMPAIGN, captured_at, captured_at, captured_at)
                copy.write_row(
                    (str(record["id"]), *_values(record, dates_as_text=False), orjson.dumps(record).decode(), *lineage)
                )
                rows += 1
        merged = conn.execute(merge).rowcount
        conn.commit()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "merged": merged}


def dlt_merge(arguments: dict[str, Any]) -> dict[str, Any]:
    """dlt 1.31 with its defaults, `merge` on the primary key, into the same PostgreSQL server."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt  # the optional `bench` extra
    import psycopg
    from sqlalchemy import make_url

    paths = _files(arguments)

    @dlt.resource(name="properties", write_disposition="merge", primary_key="id")
    def properties() -> Iterator[dict[str, Any]]:
        for path in paths:
            for record in orjson.loads(path.read_bytes())["data"]:
                record["id"] = str(record["id"])  # the API mixes integer and text ids; the key must be one type
                yield record

    credentials = make_url(arguments["db_url"])
    if credentials.password is None:  # dlt insists on one; a server with trust authentication ignores it
        credentials = credentials.set(password="unused")
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{os.getpid()}",
        destination=dlt.destinations.postgres(credentials=credentials.render_as_string(hide_password=False)),
        dataset_name="dlt_bench",
        pipelines_dir=arguments["work_dir"],
    )
    started = time.perf_counter()
    pipeline.run(properties())
    seconds = time.perf_counter() - started
    with psycopg.connect(arguments["db_url"]) as conn:
        stored = conn.execute("SELECT count(*) FROM dlt_bench.properties").fetchone()[0]  # type: ignore[index]
    return {"seconds": seconds, "stored": stored, "dlt": dlt.__version__}


def sqlite_executemany(arguments: dict[str, Any]) -> dict[str, Any]:
    """One transaction, one `executemany` INSERT of every row into the empty one-table `properties` (`table`)."""
    connection = sqlite3.connect(arguments["db_path"], isolation_level=None)
    # The connection settings create_db_engine gives the pipeline.
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "wal_autocheckpoint=20000",
        "cache_size=-65536",
        "foreign_keys=ON",
    ):
        connection.execute(f"PRAGMA {pragma}")
    table = arguments["table"]
    statement = f"INSERT INTO {table} ({', '.join(ALL_COLUMNS)}) VALUES ({', '.join('?' for _ in ALL_COLUMNS)})"

    def rows() -> Iterator[tuple[Any, ...]]:
        for number, captured_at, record in _records(_files(arguments)):
            moment = captured_at.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
            yield (
                str(record["id"]),
                *_values(record, dates_as_text=True),
                orjson.dumps(record).decode(),
                number,
                CAMPAIGN,
                moment,
                moment,
                moment,
            )

    started = time.perf_counter()
    connection.execute("BEGIN")
    connection.executemany(statement, rows())
    connection.execute("COMMIT")
    seconds = time.perf_counter() - started
    stored = connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    connection.close()
    return {"seconds": seconds, "stored": stored}


def hash_and_parse(arguments: dict[str, Any]) -> dict[str, Any]:
    """Read each file, SHA-256 it and parse it with orjson: the least registration can do."""
    started = time.perf_counter()
    records = 0
    for path in _files(arguments):
        body = path.read_bytes()
        hashlib.sha256(body).hexdigest()
        records += len(orjson.loads(body)["data"])
    return {"seconds": time.perf_counter() - started, "records": records}


def bare_fetch(arguments: dict[str, Any]) -> dict[str, Any]:
    """Fetch the pages with one HTTP session and write each to a file with fsync: the least capture can do."""
    import requests

    folder = Path(arguments["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    url = arguments["base_url"] + "/v2/PropertySearch"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    started = time.perf_counter()
    written = 0
    with requests.Session() as session:
        for page in range(arguments["pages"]):
            body = orjson.dumps({**arguments["criteria"], "size": 400, "resultIndex": page * 400})
            response = session.post(url, data=body, headers=headers, timeout=(5, 60))
            response.raise_for_status()
            with open(folder / f"page{page}.json", "wb") as handle:
                handle.write(response.content)
                handle.flush()
                os.fsync(handle.fileno())
            written += len(response.content)
    return {"seconds": time.perf_counter() - started, "pages": arguments["pages"], "bytes": written}


BASELINES = {
    "copy": copy_into_table,
    "dlt_merge": dlt_merge,
    "sqlite_executemany": sqlite_executemany,
    "hash_and_parse": hash_and_parse,
    "bare_fetch": bare_fetch,
    "staged_upsert": staged_upsert,
    "least_pipeline": least_pipeline,
}

if __name__ == "__main__":
    name, raw_arguments = sys.argv[1], sys.argv[2]
    print(json.dumps(BASELINES[name](json.loads(raw_arguments))))
