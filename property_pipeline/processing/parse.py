"""Turn a payload file's bytes into valid records and rejected ones; file-level problems raise.

A page is cut into its records' JSON bytes as received (msgspec, without decoding them), and each
record is validated from its bytes (records.py: `read_record`). So every record is stored exactly as
the API sent it, and only the contract's fields are ever decoded. The cut needs a page orjson reads
(plain JSON); registration found out whether it is (payload_json.py), and processing, which checks
the bytes against the registered SHA-256, passes that on instead of decoding the page whole again.
A page that is not plain (a number beyond the double range, a lone surrogate) or not the expected
shape takes the reference path: decoded whole, each record checked by `validate_record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from property_pipeline.errors import PayloadError
from property_pipeline.payload_json import PayloadJsonError, decode_payload, escaped_text, quarantine_text
from property_pipeline.processing.records import (
    PropertyRecord,
    RecordRejected,
    content_hash,
    read_record,
    validate_record,
)

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


class _Envelope(msgspec.Struct, gc=False):
    """A page as msgspec cuts it: the records' bytes, and the count it declares (anything odd: the reference)."""

    data: list[msgspec.Raw]
    recordCount: int | None = None  # the API's name


_ENVELOPE = msgspec.json.Decoder(_Envelope)


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_REJECTED_RAW_CHARS else text[:MAX_REJECTED_RAW_CHARS] + "…(truncated)"


def _rejected(index: int, record: Any, reason: str, raw: bytes | memoryview | None) -> RejectedRecord:
    property_id = record.get("id") if isinstance(record, dict) else None
    return RejectedRecord(
        index,
        None if property_id is None else escaped_text(str(property_id))[:256],
        escaped_text(reason),
        # As received; bytes the tolerant decoder let through (an encoded surrogate) shown as escapes.
        _clipped(quarantine_text(record) if raw is None else str(raw, "utf-8", "backslashreplace")),
    )


class PayloadPage:
    """A page's records, validated on first use: `records()` the valid ones, `rejected` the others with reasons.

    Built by `read_page`, from the records' bytes (`cut`) or, for a page only the tolerant decoder reads
    whole, from the decoded records (`decoded`).
    """

    def __init__(self, items: list[Any], *, cut: bool, plain: bool = True, may_hold_nul: bool = True) -> None:
        self._items = items
        self._cut = cut
        self._plain = plain
        self._may_hold_nul = may_hold_nul
        self.rejected: list[RejectedRecord] = []
        self.accepted = 0
        self._valid: list[PropertyRecord] | None = None
        self._guessed: list[str | None] | None = None

    @property
    def properties_count(self) -> int:
        return len(self._items)

    @property
    def validated(self) -> bool:
        """True once the records were validated (by `validate_all` or `records`)."""
        return self._valid is not None

    def validate_all(self) -> None:
        """Validate every record now (a processor reading ahead does it while the previous file commits)."""
        if self._valid is None:
            self._valid = self._validated({})

    def records(self, *, by_id: bool = False, stored: Mapping[str, bytes | None] | None = None) -> list[PropertyRecord]:
        """The valid records, in file order or ordered by id; the first valid one of an id wins either way.

        `stored`: the content hash of the rows the database holds, by property id (from `id_guesses`). A record
        whose bytes hash to its property's stored hash is the very record that row was loaded from, under the same
        rules: it is valid and is not decoded again (its `values` are None)."""
        if self._valid is None:
            self._valid = self._validated(stored or {})
        return sorted(self._valid, key=_property_id) if by_id else list(self._valid)

    def id_guesses(self) -> list[str]:
        """The property ids the records most likely have, read cheaply from their bytes (for looking up what the
        database holds before validating). A guess is never trusted: a record is only taken as stored when its
        whole bytes hash to the stored row's hash. Records whose id cannot be guessed are left out."""
        return [guess for guess in self._guesses() if guess is not None]

    def _guesses(self) -> list[str | None]:
        """Each record's guessed id (None: not guessed), in file order, read once."""
        if self._guessed is None:
            self._guessed = [_guess_id(memoryview(item)) for item in self._items] if self._cut else []
        return self._guessed

    def _validated(self, stored: Mapping[str, bytes | None]) -> list[PropertyRecord]:
        valid: list[PropertyRecord] = []
        first_index: dict[str, int] = {}
        guesses = self._guesses() if stored else []
        for index, item in enumerate(self._items):
            try:
                record = self._unchanged(item, guesses[index], stored) if stored else None
                if record is None:
                    record = self._validate(item)
            except RecordRejected as reason:
                self.rejected.append(self._rejection(index, item, str(reason)))
                continue
            earlier = first_index.get(record.property_id)
            if earlier is not None:
                duplicate = f"duplicate id in the file (first at index {earlier})"
                self.rejected.append(RejectedRecord(index, record.property_id, duplicate, _clipped(record.raw_json)))
                continue
            first_index[record.property_id] = index
            valid.append(record)
        self.accepted = len(valid)
        return valid

    def _unchanged(
        self, item: Any, property_id: str | None, stored: Mapping[str, bytes | None]
    ) -> PropertyRecord | None:
        """The record as stored (not decoded), when its bytes are those its property's row was loaded from."""
        stored_hash = None if property_id is None else stored.get(property_id)
        if stored_hash is None or property_id is None:
            return None
        raw = memoryview(item)
        raw_hash = content_hash(raw)
        return PropertyRecord(property_id, None, raw, raw_hash) if raw_hash == stored_hash else None

    def _validate(self, item: Any) -> PropertyRecord:
        if not self._cut:
            return validate_record(item)
        raw = memoryview(item)
        if self._plain:
            return read_record(raw, may_hold_nul=self._may_hold_nul)
        return validate_record(_decoded(raw), raw)

    def _rejection(self, index: int, item: Any, reason: str) -> RejectedRecord:
        if not self._cut:
            return _rejected(index, item, reason, None)
        raw = memoryview(item)
        return _rejected(index, _decoded(raw), reason, raw)


def _property_id(record: PropertyRecord) -> str:
    return record.property_id


_ID_TEXT = b'{"id":"'
_ID_NUMBER = b'{"id":'
_GUESS_BYTES = 300  # an id is at most 256 characters


def _guess_id(raw: memoryview) -> str | None:
    """The id of a record that starts `{"id":"...` or `{"id":123`, as the API writes them; None otherwise."""
    head = bytes(raw[:_GUESS_BYTES])
    if head.startswith(_ID_TEXT):
        end = head.find(b'"', len(_ID_TEXT))
        if end < 0 or b"\\" in head[len(_ID_TEXT) : end]:
            return None
        return head[len(_ID_TEXT) : end].decode("utf-8", "replace")
    if head.startswith(_ID_NUMBER):
        digits = head[len(_ID_NUMBER) :].split(b",", 1)[0].split(b"}", 1)[0]
        return digits.decode() if digits.isdigit() or (digits[:1] == b"-" and digits[1:].isdigit()) else None
    return None


def _decoded(raw: memoryview) -> Any:
    """One record of a page that decoded whole, decoded on its own (tolerantly, as the page was)."""
    try:
        return decode_payload(bytes(raw))[0]
    except PayloadJsonError:  # cannot happen for a part of a page that decoded; quarantined if it does
        return None


def _check_count(declared: Any, records: int) -> None:
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != records:
        raise PayloadFormatError(f"recordCount says {declared} but 'data' holds {records} records")


def read_page(body: bytes, *, plain: bool = False) -> PayloadPage:
    """Parse one API page's JSON and check its shape; its records are validated when first taken.

    `plain=True`: these very bytes are known to be plain JSON (see the module's docstring)."""
    try:
        envelope: _Envelope | None = _ENVELOPE.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        envelope = None  # not JSON, the wrong shape, or JSON msgspec does not cut: the reference path says which
    if envelope is not None and not plain:
        try:
            orjson.loads(body)
            plain = True
        except orjson.JSONDecodeError:
            try:
                decode_payload(body)
            except PayloadJsonError:
                envelope = None  # not JSON after all (invalid UTF-8 in a value msgspec skipped): said below
    if envelope is None:
        return _read_whole(body)
    _check_count(envelope.recordCount, len(envelope.data))
    return PayloadPage(envelope.data, cut=True, plain=plain, may_hold_nul=b"\\u0000" in body)


def _read_whole(body: bytes) -> PayloadPage:
    """The reference path: the page decoded whole, its shape checked, its records decoded."""
    try:
        document, _plain = decode_payload(body)
    except PayloadJsonError as error:
        raise PayloadFormatError(f"not valid JSON (file truncated or corrupted?): {error}") from None
    if not isinstance(document, dict):
        raise PayloadFormatError(f"top level is a JSON {type(document).__name__}, expected an object with 'data'")
    data = document.get("data")
    if not isinstance(data, list):
        raise PayloadFormatError("no 'data' list at the top level: this is not a property-search page")
    _check_count(document.get("recordCount"), len(data))
    return PayloadPage(data, cut=False)


def parse_payload(body: bytes) -> ParsedPayload:
    """Parse one API page; valid records in order, in-file duplicate ids and contract breaches rejected."""
    page = read_page(body)
    records = page.records()
    return ParsedPayload(records, page.rejected)
