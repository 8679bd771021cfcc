"""Turn a payload file's bytes into valid records and rejected ones; file-level problems raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from property_pipeline.processing.records import PropertyRecord, RecordRejected, validate_record

MAX_REJECTED_RAW_CHARS = 100_000


class PayloadFormatError(ValueError):
    """The file as a whole is not a usable payload (not JSON, truncated, or the wrong shape)."""


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    record_index: int
    property_id: str | None
    reason: str
    raw_json: str


@dataclass(frozen=True)
class ParsedPayload:
    records: list[PropertyRecord]
    rejected: list[RejectedRecord]

    @property
    def properties_count(self) -> int:
        return len(self.records) + len(self.rejected)


def _raw_text(record: Any) -> str:
    try:
        text = orjson.dumps(record).decode()
    except TypeError:
        text = repr(record)
    return text if len(text) <= MAX_REJECTED_RAW_CHARS else text[:MAX_REJECTED_RAW_CHARS] + "…(truncated)"


def parse_payload(body: bytes) -> ParsedPayload:
    """Parse one API page; valid records in order, in-file duplicate ids and contract breaches rejected."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise PayloadFormatError(f"not valid JSON (file truncated or corrupted?): {error}") from None
    if not isinstance(document, dict):
        raise PayloadFormatError(f"top level is a JSON {type(document).__name__}, expected an object with 'data'")
    data = document.get("data")
    if not isinstance(data, list):
        raise PayloadFormatError("no 'data' list at the top level: this is not a property-search page")
    declared = document.get("recordCount")
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != len(data):
        raise PayloadFormatError(f"recordCount says {declared} but 'data' holds {len(data)} records")
    records: list[PropertyRecord] = []
    rejected: list[RejectedRecord] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(data):
        try:
            record = validate_record(raw)
        except RecordRejected as reason:
            property_id = raw.get("id") if isinstance(raw, dict) else None
            rejected.append(
                RejectedRecord(
                    index, None if property_id is None else str(property_id)[:256], str(reason), _raw_text(raw)
                )
            )
            continue
        earlier = first_index.get(record.property_id)
        if earlier is not None:
            rejected.append(
                RejectedRecord(
                    index, record.property_id, f"duplicate id in the file (first at index {earlier})", record.raw_json
                )
            )
            continue
        first_index[record.property_id] = index
        records.append(record)
    return ParsedPayload(records, rejected)
