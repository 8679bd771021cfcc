"""Exports of the loaded data to CSV, JSON lines or Parquet: the DataFrame's columns, written atomically.

The rows come chunk by chunk from `property_pipeline.frames` and are written as they come, so an
export of any size holds one chunk in memory (Parquet: one row group). The file is written under a
hidden temporary name in the target folder and renamed over the target only once it is complete
and on disk, so an interrupted export (an error, Ctrl-C, a full disk) leaves no partial file at the
target, and an earlier export there stays as it was.

Formats: CSV with a header line (a missing value is an empty field, so an empty text reads back as
missing); JSON lines, one object per row (missing values are null); Parquet through pyarrow (the
optional `parquet` extra), which keeps every dtype. In CSV and JSON lines, dates are written as
`YYYY-MM-DD` and times as UTC ISO 8601 (`2026-11-02T08:00:00.000000Z`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pandas as pd

from property_pipeline.errors import ConfigurationError
from property_pipeline.frames import empty_frame
from property_pipeline.store.publish import publishing

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
PARQUET_INSTALL = "pip install 'property_pipeline[parquet]'"
PARQUET_ROW_GROUP_ROWS = 100_000  # rows gathered per Parquet row group (chunks are smaller)
DATE_FORMAT = "%Y-%m-%d"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class ParquetUnavailable(ConfigurationError):
    """Parquet was asked for, but pyarrow is not installed."""


def require_pyarrow() -> Any:
    """pyarrow's parquet module; ParquetUnavailable saying how to install it when it is missing."""
    try:
        import pyarrow.parquet
    except ImportError:
        raise ParquetUnavailable(
            f"--format parquet needs pyarrow, which is not installed. Install it with: {PARQUET_INSTALL}"
        ) from None
    return pyarrow.parquet


def _text_times(chunk: pd.DataFrame) -> pd.DataFrame:
    """Dates and times as ISO 8601 text (for CSV and JSON lines); missing ones stay missing."""
    converted: dict[str, pd.Series[Any]] = {}
    for column, dtype in chunk.dtypes.items():
        if isinstance(dtype, pd.DatetimeTZDtype):
            converted[str(column)] = chunk[column].dt.tz_convert("UTC").dt.strftime(TIME_FORMAT).astype("string")
        elif getattr(dtype, "kind", "") == "M":
            converted[str(column)] = chunk[column].dt.strftime(DATE_FORMAT).astype("string")
    return chunk.assign(**converted) if converted else chunk


class _CsvWriter:
    def __init__(self, handle: BinaryIO, dtypes: Mapping[str, Any]) -> None:
        self.text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        empty_frame(dtypes).to_csv(self.text, index=False)

    def write(self, chunk: pd.DataFrame) -> None:
        _text_times(chunk).to_csv(self.text, index=False, header=False)

    def close(self) -> None:
        self.text.flush()
        self.text.detach()  # the handle stays open for the fsync


class _JsonLinesWriter:
    def __init__(self, handle: BinaryIO, dtypes: Mapping[str, Any]) -> None:
        self.text = io.TextIOWrapper(handle, encoding="utf-8", newline="\n")

    def write(self, chunk: pd.DataFrame) -> None:
        if len(chunk):
            _text_times(chunk).to_json(self.text, orient="records", lines=True, force_ascii=False)

    def close(self) -> None:
        self.text.flush()
        self.text.detach()


class _ParquetWriter:
    def __init__(self, handle: BinaryIO, dtypes: Mapping[str, Any]) -> None:
        parquet = require_pyarrow()
        import pyarrow

        self.pyarrow = pyarrow
        self.schema = pyarrow.Schema.from_pandas(empty_frame(dtypes), preserve_index=False)
        self.writer = parquet.ParquetWriter(handle, self.schema, compression="zstd")
        self.pending: list[Any] = []
        self.pending_rows = 0

    def write(self, chunk: pd.DataFrame) -> None:
        self.pending.append(self.pyarrow.Table.from_pandas(chunk, schema=self.schema, preserve_index=False))
        self.pending_rows += len(chunk)
        if self.pending_rows >= PARQUET_ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(self.pyarrow.concat_tables(self.pending))
            self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self.writer.close()


WRITERS: dict[Format, Callable[[BinaryIO, Mapping[str, Any]], Any]] = {
    "csv": _CsvWriter,
    "jsonl": _JsonLinesWriter,
    "parquet": _ParquetWriter,
}


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: Format
    rows: int
    bytes: int
    seconds: float


def export_frames(
    chunks: Iterable[pd.DataFrame],
    dtypes: Mapping[str, Any],
    fmt: Format,
    path: Path,
    on_rows: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write the chunks (DataFrames with exactly `dtypes`' columns) to `path` in `fmt`, atomically."""
    if fmt == "parquet":
        require_pyarrow()  # before anything is written
    started = time.perf_counter()
    rows = 0
    # Published crash-safely, replacing an earlier export at the same path; the analyst's file stays writable.
    with publishing(path, replace=True, read_only=False) as handle:
        writer = WRITERS[fmt](handle, dtypes)
        for chunk in chunks:
            writer.write(chunk)
            rows += len(chunk)
            if on_rows is not None:
                on_rows(rows)
        writer.close()
    return ExportReport(path, fmt, rows, path.stat().st_size, time.perf_counter() - started)
