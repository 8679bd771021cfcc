"""Turn a payload file's bytes into valid records and rejected ones; file-level problems raise."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from property_pipeline.errors import PayloadError
from property_pipeline.payload_json import PayloadJsonError, decode_payload_json, escaped_text, quarantine_text
from property_pipeline.processing.records import PropertyRecord, RecordRejected, property_id_of, validate_record

MAX_REJECTED_RAW_CHARS = 100_000


class PayloadFormatError(PayloadError, ValueError):
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
    text = quarantine_text(record)
    return text if len(text) <= MAX_REJECTED_RAW_CHARS else text[:MAX_REJECTED_RAW_CHARS] + "…(truncated)"


class PayloadPage:
    """A page read as JSON whose records are validated one at a time, as they are taken.

    The loader takes them while its COPY streams, so the database stores one record while the next
    is validated. Take `records()` once: rejected records are added to `rejected` as they are met.
    """

    def __init__(self, data: list[Any]) -> None:
        self.data = data
        self.rejected: list[RejectedRecord] = []
        self.accepted = 0
        self._ids: list[str | None] | None = None
        self._taken: tuple[bool, list[PropertyRecord]] | None = None

    @property
    def properties_count(self) -> int:
        return len(self.data)

    def ids(self) -> list[str | None]:
        """Each record's id as it will be stored, or None where it has none usable (nothing else is checked)."""
        if self._ids is None:
            self._ids = []
            for raw in self.data:
                try:
                    self._ids.append(property_id_of(raw))
                except RecordRejected:
                    self._ids.append(None)
        return self._ids

    def validate_all(self, *, by_id: bool = False) -> None:
        """Validate every record now (a processor reading ahead does it while the previous file commits);
        `records()` in the same order then hands them out without validating them again."""
        if self._taken is None:
            self._taken = (by_id, list(self._validated(by_id)))

    def records(self, *, by_id: bool = False) -> Iterator[PropertyRecord]:
        """The valid records, in file order or ordered by id; the first valid one of an id wins either way."""
        if self._taken is not None:
            taken_by_id, taken = self._taken
            if taken_by_id != by_id:
                raise ValueError("the records were validated in the other order")
            return iter(taken)
        return self._validated(by_id)

    def _validated(self, by_id: bool) -> Iterator[PropertyRecord]:
        indexes: Iterable[int] = range(len(self.data))
        if by_id:
            keys = [property_id or "" for property_id in self.ids()]
            indexes = sorted(indexes, key=keys.__getitem__)  # a stable sort: file order among equal ids
        first_index: dict[str, int] = {}
        for index in indexes:
            raw = self.data[index]
            try:
                record = validate_record(raw)
            except RecordRejected as reason:
                property_id = raw.get("id") if isinstance(raw, dict) else None
                self.rejected.append(
                    RejectedRecord(
                        index,
                        None if property_id is None else escaped_text(str(property_id))[:256],
                        escaped_text(str(reason)),
                        _raw_text(raw),
                    )
                )
                continue
            earlier = first_index.get(record.property_id)
            if earlier is not None:
                self.rejected.append(
                    RejectedRecord(
                        index,
                        record.property_id,
                        f"duplicate id in the file (first at index {earlier})",
                        record.raw_json,
                    )
                )
                continue
            first_index[record.property_id] = index
            self.accepted += 1
            yield record


def read_page(body: bytes) -> PayloadPage:
    """Parse one API page's JSON and check its shape; its records are validated when taken."""
    try:
        document = decode_payload_json(body)
    except PayloadJsonError as error:
        raise PayloadFormatError(f"not valid JSON (file truncated or corrupted?): {error}") from None
    if not isinstance(document, dict):
        raise PayloadFormatError(f"top level is a JSON {type(document).__name__}, expected an object with 'data'")
    data = document.get("data")
    if not isinstance(data, list):
        raise PayloadFormatError("no 'data' list at the top level: this is not a property-search page")
    declared = document.get("recordCount")
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != len(data):
        raise PayloadFormatError(f"recordCount says {declared} but 'data' holds {len(data)} records")
    return PayloadPage(data)


def parse_payload(body: bytes) -> ParsedPayload:
    """Parse one API page; valid records in order, in-file duplicate ids and contract breaches rejected."""
    page = read_page(body)
    records = list(page.records())
    return ParsedPayload(records, page.rejected)
