"""The loaded data as pandas DataFrames: the properties a month's COMPLETED files delivered, and its quarantine.

One row per property, with its current values (the `properties` table keeps only the newest record
of each property, so a property loaded in March and updated by a May file shows May's values in
March too). A property that two files of the month (or two months of a range) delivered appears once.

Reading is chunked on the database side (a server-side cursor on PostgreSQL, `CHUNK_ROWS` rows at a
time). The rows are counted first, in the same snapshot, so every column is allocated at its final
size and each chunk of Python rows is written into the columns and dropped: no more than one chunk
of Python rows exists beside the DataFrame's own arrays, and nothing is concatenated at the end.
The cost, measured with `python -m benchmarks.frames_memory`, is in the README ("Using the data").

`property_dtypes()` is the one definition of the columns and their dtypes: the Dagster IO manager,
the exports and an empty result all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, Connection, Engine, Select, Text, cast, func, select

from property_pipeline.db.engine import SQLITE_DEFERRED
from property_pipeline.db.schema import batch_file_status as files
from property_pipeline.db.schema import file_properties, quarantined_records
from property_pipeline.db.schema import properties as properties_table
from property_pipeline.processing.records import FIELDS
from property_pipeline.states import FileStatus
from property_pipeline.store.layout import validate_month

# Rows per chunk: larger chunks cost more memory beside the DataFrame (about 10 MB per 1,000 rows of
# chunk, measured) and are not faster.
CHUNK_ROWS = 5_000
# Dates and times as microseconds, the resolution of Python's datetime and of PostgreSQL timestamps.
DATE = np.dtype("datetime64[us]")
UTC_TIME = pd.DatetimeTZDtype("us", "UTC")
_KIND_DTYPES: dict[str, Any] = {
    "int32": pd.Int32Dtype(),
    "int64": pd.Int64Dtype(),
    "number": pd.Float64Dtype(),
    "lat": pd.Float64Dtype(),
    "lon": pd.Float64Dtype(),
    "bool": pd.BooleanDtype(),
    "date": DATE,
}  # every other kind (text, state, zip) is text


def text_dtype() -> pd.StringDtype:
    """pandas' `string` dtype (missing values are pd.NA), with pandas' default storage at the time of the call:
    Arrow when pyarrow is installed (the `parquet` extra; about a third of the memory), Python objects otherwise.
    `pd.set_option("mode.string_storage", "python")` chooses Python objects."""
    return pd.StringDtype()


Months = str | Iterable[str] | None


def property_dtypes(include_raw: bool = False) -> dict[str, Any]:
    """The DataFrame's columns in order, with their dtypes: id, the typed fields, lineage, and `raw` if asked."""
    text = text_dtype()
    dtypes: dict[str, Any] = {"property_id": text}
    dtypes.update((column, _KIND_DTYPES.get(kind, text)) for column, _path, kind in FIELDS)
    dtypes.update(
        source_file_id=pd.Int64Dtype(),  # the file the current values came from
        campaign_id=text,
        captured_at=UTC_TIME,
        first_seen_at=UTC_TIME,
        last_seen_at=UTC_TIME,
    )
    if include_raw:
        dtypes["raw"] = text  # the record's JSON text as received; json.loads gives the dict
    return dtypes


def quarantine_dtypes() -> dict[str, Any]:
    """The columns of quarantined records, with the file each came from."""
    text = text_dtype()
    return {
        "quarantine_id": pd.Int64Dtype(),
        "file_id": pd.Int64Dtype(),
        "file_path": text,
        "campaign_id": text,
        "month": text,
        "record_index": pd.Int32Dtype(),
        "property_id": text,
        "reason": text,
        "raw": text,  # the record's JSON text
        "quarantined_at": UTC_TIME,
    }


def empty_frame(dtypes: Mapping[str, Any]) -> pd.DataFrame:
    """A DataFrame with no rows and exactly these columns and dtypes."""
    return pd.DataFrame({column: pd.array([], dtype=dtype) for column, dtype in dtypes.items()})


def normalise_months(months: Months) -> tuple[str, ...] | None:
    """`None` (every month), or the months as sorted, validated `YYYY-MM` keys."""
    if months is None:
        return None
    if isinstance(months, str):
        months = [months]
    return tuple(sorted({validate_month(month) for month in months}))


def _delivered(months: tuple[str, ...] | None, campaign: str | None) -> Select[Any]:
    """Ids of the properties that the COMPLETED files of these months (and campaign) delivered."""
    query = (
        select(file_properties.c.property_id)
        .join(files, files.c.file_id == file_properties.c.file_id)
        .where(files.c.status == FileStatus.COMPLETED)
    )
    if months is not None:
        query = query.where(files.c.month.in_(months))
    if campaign is not None:
        query = query.where(files.c.campaign_id == campaign)
    return query


def _properties_queries(
    months: tuple[str, ...] | None, campaign: str | None, include_raw: bool
) -> tuple[Select[Any], Select[Any]]:
    # A semi-join (IN), not DISTINCT over the rows: one row per property whatever the number of files
    # that delivered it, and PostgreSQL's `json` has no equality operator for DISTINCT anyway.
    delivered = properties_table.c.property_id.in_(_delivered(months, campaign))
    columns: list[ColumnElement[Any]] = [
        properties_table.c[name] for name in property_dtypes() if name in properties_table.c
    ]
    if include_raw:
        columns.append(cast(properties_table.c.raw, Text).label("raw"))  # the text, not a parsed dict
    rows = select(*columns).where(delivered).order_by(properties_table.c.property_id)
    count = select(func.count()).select_from(properties_table).where(delivered)
    return rows, count


def _quarantine_queries(months: tuple[str, ...] | None, campaign: str | None) -> tuple[Select[Any], Select[Any]]:
    q = quarantined_records
    source = q.join(files, files.c.file_id == q.c.file_id)
    conditions = [files.c.status == FileStatus.COMPLETED]
    if months is not None:
        conditions.append(files.c.month.in_(months))
    if campaign is not None:
        conditions.append(files.c.campaign_id == campaign)
    rows = (
        select(
            q.c.quarantine_id,
            q.c.file_id,
            files.c.file_path,
            files.c.campaign_id,
            files.c.month,
            q.c.record_index,
            q.c.property_id,
            q.c.reason,
            q.c.raw,
            q.c.quarantined_at,
        )
        .select_from(source)
        .where(*conditions)
        .order_by(q.c.file_id, q.c.record_index)
    )
    count = select(func.count()).select_from(source).where(*conditions)
    return rows, count


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.date().toordinal()
_ONE_US = timedelta(microseconds=1)
_US_PER_DAY = 86_400_000_000
_NUMPY_TYPES = {"integer32": np.int32, "integer64": np.int64, "float": np.float64, "boolean": np.bool_}


def _storage_kind(dtype: Any) -> str:
    """How a column of this dtype is held while it is filled."""
    if isinstance(dtype, pd.StringDtype):
        return "arrow_text" if dtype.storage == "pyarrow" else "text"
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "utc"
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        return "date"
    if isinstance(dtype, pd.BooleanDtype):
        return "boolean"
    if isinstance(dtype, pd.Float64Dtype):
        return "float"
    if isinstance(dtype, pd.Int32Dtype):
        return "integer32"
    if isinstance(dtype, pd.Int64Dtype):
        return "integer64"
    raise TypeError(f"no column storage for dtype {dtype}")


class _Column:
    """One column of `length` rows, filled chunk by chunk from Python values (None is missing).

    Numbers, flags and times go into preallocated numpy arrays (values and a missing-value mask), so
    no per-chunk arrays pile up to be concatenated; Python text into a preallocated object array;
    Arrow text as one Arrow array per chunk, which pandas takes as it is (a chunked array, no copy).
    """

    def __init__(self, dtype: Any, length: int) -> None:
        self.dtype = dtype
        self.kind = _storage_kind(self.dtype)
        self.chunks: list[Any] = []
        self.values: np.ndarray[Any, Any] = np.empty(0)
        self.mask: np.ndarray[Any, Any] = np.empty(0, dtype=bool)
        if self.kind == "text":
            self.values = np.empty(length, dtype=object)
        elif self.kind != "arrow_text":
            self.values = np.zeros(length, dtype=_NUMPY_TYPES.get(self.kind, np.int64))  # dates, times: µs
            self.mask = np.zeros(length, dtype=bool)

    def fill(self, start: int, values: list[Any]) -> None:
        """Put `values` at rows start, start + 1, ..."""
        stop = start + len(values)
        if self.kind == "arrow_text":
            pa = _pyarrow()
            # The system allocator: Arrow's default (mimalloc) kept about 200 MB per million rows of freed
            # builder memory that it did not reuse (measured with benchmarks/frames_memory.py).
            self.chunks.append(pa.array(values, type=pa.large_string(), memory_pool=pa.system_memory_pool()))
        elif self.kind == "text":
            self.values[start:stop] = [pd.NA if value is None else value for value in values]
        else:
            self.mask[start:stop] = [value is None for value in values]
            if self.kind == "date":  # days since 1970 in microseconds
                values = [0 if v is None else (v.toordinal() - _EPOCH_ORDINAL) * _US_PER_DAY for v in values]
            elif self.kind == "utc":  # microseconds since 1970 (the values are UTC-aware datetimes)
                values = [0 if v is None else (v - _EPOCH) // _ONE_US for v in values]
            else:
                values = [0 if v is None else v for v in values]
            self.values[start:stop] = values

    def array(self, rows: int) -> Any:
        """The filled column as a pandas array of `rows` rows."""
        if self.kind == "arrow_text":
            pa = _pyarrow()
            return pd.arrays.ArrowStringArray(pa.chunked_array(self.chunks, type=pa.large_string()))
        values, mask = self.values[:rows], self.mask[:rows]
        if self.kind == "text":
            return pd.arrays.StringArray(values)
        if self.kind in ("date", "utc"):
            moments = values.view("datetime64[us]")
            moments[mask] = np.datetime64("NaT")
            return pd.array(moments, dtype=self.dtype)
        if self.kind == "boolean":
            return pd.arrays.BooleanArray(values, mask)
        if self.kind == "float":
            return pd.arrays.FloatingArray(values, mask)
        return pd.arrays.IntegerArray(values, mask)


def _pyarrow() -> Any:
    import pyarrow  # only reached when pandas stores text in Arrow, so pyarrow is installed

    return pyarrow


def _build(dtypes: Mapping[str, Any], length: int, chunks: Iterable[list[Any]]) -> pd.DataFrame:
    """A DataFrame of at most `length` rows from chunks of Python rows (tuples in the dtypes' column order)."""
    columns = [_Column(dtype, length) for dtype in dtypes.values()]
    filled = 0
    for rows in chunks:
        if filled + len(rows) > length:
            raise RuntimeError(f"the read returned more rows than the {length} it counted")
        for index, column in enumerate(columns):
            column.fill(filled, [row[index] for row in rows])
        filled += len(rows)
        del rows  # the only Python rows alive are the current chunk's
    arrays = {}
    for name, column in zip(dtypes, columns, strict=True):
        arrays[name] = column.array(filled)
        column.values = column.mask = np.empty(0)  # free the fill buffers one column at a time
    return pd.DataFrame(arrays, copy=False)


@dataclass
class FrameStream:
    """The rows of one read: `total` of them (counted in the same snapshot), in chunks of at most `chunk_rows`."""

    total: int
    dtypes: dict[str, Any]
    _chunks: Iterator[list[Any]]

    def __iter__(self) -> Iterator[pd.DataFrame]:
        """Each chunk as a DataFrame of its own (to write out as it comes)."""
        for rows in self._chunks:
            yield _build(self.dtypes, len(rows), [rows])

    def frame(self) -> pd.DataFrame:
        """Every remaining row as one DataFrame, filled in place with one chunk of Python rows beside it."""
        return _build(self.dtypes, self.total, self._chunks)


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One transaction whose reads (the count, then the rows) see the same committed state.

    PostgreSQL: REPEATABLE READ. SQLite: a deferred transaction (WAL gives it a snapshot at its first
    read), so a long read does not hold the write lock that processing needs.
    """
    if engine.dialect.name == "postgresql":
        options: dict[str, Any] = {"isolation_level": "REPEATABLE READ"}
    else:
        options = {SQLITE_DEFERRED: True}
    with engine.connect().execution_options(**options) as connection, connection.begin():
        yield connection


@contextmanager
def _stream(
    engine: Engine, rows: Select[Any], count: Select[Any], dtypes: dict[str, Any], chunk_rows: int
) -> Iterator[FrameStream]:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    with _snapshot(engine) as connection:
        total = int(connection.execute(count).scalar_one())
        # A server-side cursor on PostgreSQL: the database sends `chunk_rows` rows at a time.
        result = connection.execution_options(stream_results=True, yield_per=chunk_rows).execute(rows)
        yield FrameStream(total, dtypes, (list(chunk) for chunk in result.partitions(chunk_rows)))


@contextmanager
def stream_properties(
    engine: Engine,
    months: Months = None,
    *,
    campaign: str | None = None,
    include_raw: bool = False,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[FrameStream]:
    """The properties these months' COMPLETED files delivered (all months when None), in chunks, ordered by id."""
    rows, count = _properties_queries(normalise_months(months), campaign, include_raw)
    with _stream(engine, rows, count, property_dtypes(include_raw), chunk_rows) as stream:
        yield stream


def read_properties(
    engine: Engine,
    months: Months = None,
    *,
    campaign: str | None = None,
    include_raw: bool = False,
    chunk_rows: int = CHUNK_ROWS,
) -> pd.DataFrame:
    """One DataFrame of the properties these months' COMPLETED files delivered (every month when None)."""
    with stream_properties(engine, months, campaign=campaign, include_raw=include_raw, chunk_rows=chunk_rows) as stream:
        return stream.frame()


@contextmanager
def stream_quarantine(
    engine: Engine, months: Months = None, *, campaign: str | None = None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[FrameStream]:
    """The records these months' COMPLETED files quarantined, with file and reason, in file and record order."""
    rows, count = _quarantine_queries(normalise_months(months), campaign)
    with _stream(engine, rows, count, quarantine_dtypes(), chunk_rows) as stream:
        yield stream


def read_quarantine(
    engine: Engine, months: Months = None, *, campaign: str | None = None, chunk_rows: int = CHUNK_ROWS
) -> pd.DataFrame:
    """One DataFrame of the records these months' COMPLETED files quarantined."""
    with stream_quarantine(engine, months, campaign=campaign, chunk_rows=chunk_rows) as stream:
        return stream.frame()
