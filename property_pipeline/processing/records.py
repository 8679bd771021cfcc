"""The typed property record and its validator (the contract's fields, mapped to snake_case columns).

A record is validated in one of two ways that accept exactly the same records with the same values:

- `read_record` takes the record's JSON bytes as received (a slice of its page) and decodes only the
  contract's fields, in compiled code (msgspec, with the contract's types and bounds). It is the
  processor's path. Whatever it does not accept outright (a float where an integer belongs, a
  malformed value, anything unusual) is handed to the reference validator below, which converts
  the value or rejects the record with its reason.
- `validate_record` checks a decoded record field by field in Python: the reference, and the only
  path for a page that only the tolerant decoder reads (see payload_json.py).

`tests/processing/test_record_decoding.py` holds the two paths to the same answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson
import xxhash
from msgspec import Meta

from property_pipeline.errors import PayloadError
from property_pipeline.payload_json import (
    PayloadJsonError,
    UnrepresentableNumber,
    decode_payload_json,
    describe_unstorable,
    encode_for_storage,
    find_unstorable,
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# Bounds of the floating-point kinds (inclusive).
FLOAT_BOUNDS = {"number": (-1e15, 1e15), "lat": (-90.0, 90.0), "lon": (-180.0, 180.0)}
MAX_ID_CHARS = 256
STATE_PATTERN = "[A-Z]{2}"
ZIP_PATTERN = "[0-9]{5}"  # ASCII digits: `\d` would take any Unicode digit ("７８７０１")
STATE_RE = re.compile(STATE_PATTERN)
ZIP_RE = re.compile(ZIP_PATTERN)


class RecordRejected(PayloadError, ValueError):
    """A record breaks the contract; it goes to quarantine with this reason."""


# (column, path in the record, kind). Kinds: text, int32, int64, number, lat, lon, bool, date, state, zip.
FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("apn", ("apn",), "text"),
    ("address", ("address", "address"), "text"),
    ("street", ("address", "street"), "text"),
    ("city", ("address", "city"), "text"),
    ("state", ("address", "state"), "state"),
    ("zip", ("address", "zip"), "zip"),
    ("county", ("address", "county"), "text"),
    ("latitude", ("latitude",), "lat"),
    ("longitude", ("longitude",), "lon"),
    ("bedrooms", ("bedrooms",), "int32"),
    ("bathrooms", ("bathrooms",), "number"),
    ("square_feet", ("squareFeet",), "int64"),
    ("lot_square_feet", ("lotSquareFeet",), "int64"),
    ("year_built", ("yearBuilt",), "int32"),
    ("property_type", ("propertyType",), "text"),
    ("estimated_value", ("estimatedValue",), "int64"),
    ("estimated_equity", ("estimatedEquity",), "int64"),
    ("last_sale_date", ("lastSaleDate",), "date"),
    ("last_sale_amount", ("lastSaleAmount",), "int64"),
    ("owner1_first_name", ("owner1FirstName",), "text"),
    ("owner1_last_name", ("owner1LastName",), "text"),
    ("owner_occupied", ("ownerOccupied",), "bool"),
    ("absentee_owner", ("absenteeOwner",), "bool"),
    ("mail_address", ("mailAddress", "address"), "text"),
    ("mail_street", ("mailAddress", "street"), "text"),
    ("mail_city", ("mailAddress", "city"), "text"),
    ("mail_state", ("mailAddress", "state"), "state"),
    ("mail_zip", ("mailAddress", "zip"), "zip"),
    ("mail_county", ("mailAddress", "county"), "text"),
)
COLUMNS: tuple[str, ...] = tuple(column for column, _, _ in FIELDS)
NESTED_OBJECTS = ("address", "mailAddress")


def _rules_fingerprint() -> int:
    """What a row's content is a function of, besides the record's bytes: this module (the contract's fields and
    how they are validated and converted) and the decoder's version. Any change to either gives every record a
    new content hash, so a re-capture after an upgrade loads every row again once."""
    try:
        source = Path(__file__).read_bytes()
    except OSError:  # installed without its source: the package's version stands for it
        source = version("property_pipeline").encode()
    return xxhash.xxh3_64_intdigest(source + msgspec.__version__.encode())


RULES_FINGERPRINT = _rules_fingerprint()


@dataclass(frozen=True, slots=True)
class PropertyRecord:
    """A record that passed validation: its id, typed column values (in `COLUMNS` order), its JSON text as
    received, and its content hash (two records with the same hash load the same row).

    `values` is None for a record accepted as the very bytes its property's row was loaded from, under the same
    rules (parse.py): the row already holds its values, and `with_values` decodes them when they are needed."""

    property_id: str
    values: tuple[Any, ...] | None
    raw: bytes | memoryview
    content_hash: bytes

    @property
    def raw_json(self) -> str:
        return str(self.raw, "utf-8")

    @classmethod
    def of(cls, property_id: str, values: tuple[Any, ...], raw: bytes | memoryview) -> PropertyRecord:
        return cls(property_id, values, raw, content_hash(raw))

    def with_values(self) -> PropertyRecord:
        """This record with its typed values decoded (itself when they are)."""
        return self if self.values is not None else read_record(self.raw)

    def typed_values(self) -> tuple[Any, ...]:
        """The typed values, decoded now if they were not."""
        values = self.with_values().values
        assert values is not None
        return values


def content_hash(raw: bytes | memoryview) -> bytes:
    """XXH3-128 of a row's content: the record's bytes as received, seeded with the rules that turn them into a row
    (RULES_FINGERPRINT). Rows are only ever compared with the row of the same property, so a 128-bit hash makes a
    false "unchanged" a 2^-128 event per comparison."""
    return xxhash.xxh3_128_digest(raw, seed=RULES_FINGERPRINT)


# --- the reference validator -----------------------------------------------------------------------------


def _integer(value: Any, bounds: tuple[int, int], label: str) -> int:
    if isinstance(value, UnrepresentableNumber):
        raise RecordRejected(f"{label} {value.text} is outside the range of a double")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordRejected(f"{label} must be an integer, got {type(value).__name__} {value!r:.40}")
    whole = value
    if isinstance(value, float):
        if not value.is_integer():
            raise RecordRejected(f"{label} must be an integer, got {value!r}")
        whole = int(value)
    if not bounds[0] <= whole <= bounds[1]:
        raise RecordRejected(f"{label} {whole} is out of range")
    return int(whole)


def _number(value: Any, label: str, bounds: tuple[float, float]) -> float:
    if isinstance(value, UnrepresentableNumber):
        raise RecordRejected(f"{label} {value.text} is outside the range of a double")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordRejected(f"{label} must be a number, got {type(value).__name__} {value!r:.40}")
    low, high = bounds
    if not low <= value <= high:
        raise RecordRejected(f"{label} {value} is out of range [{low}, {high}]")
    return float(value)


def _text(value: Any, label: str) -> str:
    if not isinstance(value, str):
        raise RecordRejected(f"{label} must be a string, got {type(value).__name__} {value!r:.40}")
    return value


def _convert(kind: str, value: Any, label: str) -> Any:
    if kind == "text":
        return _text(value, label)
    if kind == "int64":
        return _integer(value, INT64, label)
    if kind == "int32":
        return _integer(value, INT32, label)
    if kind in FLOAT_BOUNDS:
        return _number(value, label, FLOAT_BOUNDS[kind])
    if kind == "bool":
        if not isinstance(value, bool):
            raise RecordRejected(f"{label} must be true or false, got {value!r:.40}")
        return value
    if kind == "date":
        text = _text(value, label)
        try:
            if len(text) != 10:
                raise ValueError
            return date.fromisoformat(text)
        except ValueError:
            raise RecordRejected(f"{label} {text!r:.40} is not a date of the form YYYY-MM-DD") from None
    if kind == "state":
        text = _text(value, label)
        if not STATE_RE.fullmatch(text):
            raise RecordRejected(f"{label} {text!r:.40} is not a 2-letter state code")
        return text
    if kind == "zip":
        text = _text(value, label)
        if not ZIP_RE.fullmatch(text):
            raise RecordRejected(f"{label} {text!r:.40} is not a 5-digit zip code")
        return text
    raise AssertionError(f"unknown field kind {kind}")


def _in(bounds: tuple[float, float]) -> Callable[[Any], bool]:
    low, high = bounds
    return lambda value: low <= value <= high


# Values taken exactly as parsed, per kind: (the one type that needs no conversion, its range check or None).
# Anything else goes through `_convert`, which converts it (3.0 → 3, 2 → 2.0, dates) or rejects it with a reason.
_AS_PARSED: dict[str, tuple[type | None, Callable[[Any], object] | None]] = {
    "text": (str, None),
    "int64": (int, _in(INT64)),
    "int32": (int, _in(INT32)),
    **{kind: (float, _in(bounds)) for kind, bounds in FLOAT_BOUNDS.items()},
    "bool": (bool, None),
    "date": (None, None),  # always converted to a date
    "state": (str, STATE_RE.fullmatch),
    "zip": (str, ZIP_RE.fullmatch),
}
# (key, key inside the nested object or None, kind, label, type taken as parsed, range check), in COLUMNS order.
_PLAN = tuple(
    (path[0], path[1] if len(path) == 2 else None, kind, ".".join(path), *_AS_PARSED[kind])
    for _column, path, kind in FIELDS
)


def _text_id(raw_id: str) -> str:
    if not raw_id.strip():
        raise RecordRejected("id is an empty string")
    # Kept exactly as sent, never trimmed: " 1" trimmed would silently become the property "1".
    if raw_id != raw_id.strip():
        raise RecordRejected(f"id {raw_id[:40]!r} has leading or trailing whitespace")
    if len(raw_id) > MAX_ID_CHARS or "\x00" in raw_id:
        raise RecordRejected(f"id {raw_id[:40]!r} is too long or holds a NUL character")
    return raw_id


def property_id_of(record: Any) -> str:
    """The record's id as text (integer ids as their decimal text); RecordRejected when missing or malformed."""
    if not isinstance(record, dict):
        raise RecordRejected(f"record must be a JSON object, got {type(record).__name__}")
    raw_id = record.get("id")
    if raw_id is None:
        raise RecordRejected("record has no id")
    if isinstance(raw_id, bool):
        raise RecordRejected("id must be a string or an integer, got a boolean")
    if isinstance(raw_id, int):
        return str(raw_id)
    if isinstance(raw_id, str):
        return _text_id(raw_id)
    raise RecordRejected(f"id must be a string or an integer, got {type(raw_id).__name__}")


def _refuse_nul(raw: bytes | memoryview | str) -> None:
    # PostgreSQL text and jsonb cannot hold U+0000; refuse it on every database alike. JSON can only write it as
    # the escape \u0000, so the record's text holds that escape exactly when a value or key holds the character.
    found = "\\u0000" in raw if isinstance(raw, str) else b"\\u0000" in (raw if isinstance(raw, bytes) else bytes(raw))
    if found:
        raise RecordRejected("record holds a NUL character (\\u0000), which the database cannot store")


def validate_record(record: Any, raw: bytes | memoryview | None = None) -> PropertyRecord:
    """Check one decoded record against the contract and return it typed; raise RecordRejected with the reason.

    `raw` is the record's JSON as received; without it (a page only the tolerant decoder reads, whose records
    cannot be cut out of it) the record is encoded again for storage."""
    property_id = property_id_of(record)
    for nested in NESTED_OBJECTS:
        value = record.get(nested)
        if value is not None and not isinstance(value, dict):
            raise RecordRejected(f"{nested} must be an object, got {type(value).__name__}")
    values: list[Any] = []
    append = values.append
    get = record.get
    for key, subkey, kind, label, exact_type, in_range in _PLAN:
        value = get(key)
        if subkey is not None and value is not None:
            value = value.get(subkey)
        # The common case (null, or already the right type and in range) costs a type check, not a call.
        if value is None or (type(value) is exact_type and (in_range is None or in_range(value))):
            append(value)
        else:
            append(_convert(kind, value, label))
    if raw is None:
        text = encode_for_storage(record)
        if text is None:
            raise RecordRejected(f"record cannot be stored as JSON: {describe_unstorable(record)}")
        raw = text.encode()
    else:
        # Decoded by the tolerant decoder, the record may hold what no reader of its JSON can take.
        problem = find_unstorable(record)
        if problem is not None:
            raise RecordRejected(f"record cannot be stored as JSON: {problem}")
    _refuse_nul(raw)
    return PropertyRecord.of(property_id, tuple(values), raw)


# --- the compiled decoder ------------------------------------------------------------------------------------


def _spec_type(kind: str) -> Any:
    """The msgspec type of a kind: the contract's type and bounds, null allowed."""
    if kind == "int32":
        kind_type: Any = Annotated[int, Meta(ge=INT32[0], le=INT32[1])]
    elif kind == "int64":
        kind_type = Annotated[int, Meta(ge=INT64[0], le=INT64[1])]
    elif kind in FLOAT_BOUNDS:
        low, high = FLOAT_BOUNDS[kind]
        kind_type = Annotated[float, Meta(ge=low, le=high)]
    else:  # states and zip codes are checked after decoding (_CODES): a pattern costs a regex call per value
        kind_type = {"text": str, "state": str, "zip": str, "bool": bool, "date": date}[kind]
    return kind_type | None


def _record_spec() -> tuple[type[msgspec.Struct], tuple[tuple[int, int, int], ...]]:
    """The record as msgspec decodes it, built from FIELDS: the id, then the fields in FIELDS order, the fields of a
    nested object as one struct; and how its decoded fields lay out in COLUMNS order (see _SEGMENTS)."""
    top: list[tuple[str, Any, Any]] = []
    nested: dict[str, list[tuple[str, Any, Any]]] = {}
    for _column, path, kind in FIELDS:
        if len(path) == 1:
            top.append((path[0], _spec_type(kind), None))
            continue
        if path[0] not in nested:
            nested[path[0]] = []
            top.append((path[0], None, None))  # its type is set below, once its fields are known
        nested[path[0]].append((path[1], _spec_type(kind), None))
    fields: list[tuple[str, Any, Any]] = [
        ("id", str | Annotated[int, Meta(ge=INT64[0], le=INT64[1])], msgspec.NODEFAULT)
    ]
    segments: list[tuple[int, int, int]] = []
    for position, (name, field_type, default) in enumerate(top, start=1):
        if name in nested:
            struct = msgspec.defstruct(f"_{name}", nested[name], gc=False)
            fields.append((name, struct | None, default))
            segments.append((position, position + 1, len(nested[name])))
        else:
            fields.append((name, field_type, default))
            if segments and segments[-1][2] == 0:  # extends the run of plain values before it
                segments[-1] = (segments[-1][0], position + 1, 0)
            else:
                segments.append((position, position + 1, 0))
    return msgspec.defstruct("_PropertySpec", fields, gc=False), tuple(segments)


# The decoded struct's fields laid out in COLUMNS order: (start, stop, 0) a run of plain values, (position,
# position + 1, width) a nested object's `width` values.
_SPEC, _SEGMENTS = _record_spec()
_DECODER = msgspec.json.Decoder(_SPEC)
_astuple = msgspec.structs.astuple


def _is_state(value: str) -> bool:
    return len(value) == 2 and value.isascii() and value.isalpha() and value.isupper()  # STATE_PATTERN


def _is_zip(value: str) -> bool:
    return len(value) == 5 and value.isascii() and value.isdigit()  # ZIP_PATTERN


# (position in COLUMNS, check) of the coded text values: the compiled path's equivalent of the patterns.
_CODES = tuple(
    (position, _is_state if kind == "state" else _is_zip)
    for position, (_column, _path, kind) in enumerate(FIELDS)
    if kind in ("state", "zip")
)


def _values_of(spec: Any) -> tuple[Any, ...]:
    decoded = _astuple(spec)
    values: tuple[Any, ...] = ()
    for start, stop, width in _SEGMENTS:
        if not width:
            values += decoded[start:stop]
        else:
            nested = decoded[start]
            values += (None,) * width if nested is None else _astuple(nested)
    return values


def read_record(raw: bytes | memoryview, *, may_hold_nul: bool = True) -> PropertyRecord:
    """Validate one record given as its JSON bytes as received, from a page orjson reads (valid UTF-8, every number
    a double); RecordRejected with the reason. The same answer as `validate_record` of the decoded record.
    `may_hold_nul=False`: the page was found not to hold the escape \\u0000 at all."""
    try:
        spec: Any = _DECODER.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        try:
            record = decode_payload_json(bytes(raw))
        except PayloadJsonError as error:  # not expected in a page that decoded as a whole
            raise RecordRejected(f"record is not valid JSON: {error}") from None
        return validate_record(record, raw)
    values = _values_of(spec)
    for position, is_valid in _CODES:
        code = values[position]
        if code is not None and not is_valid(code):
            return validate_record(orjson.loads(raw), raw)  # which says what is wrong with it
    raw_id = spec.id
    property_id = _text_id(raw_id) if type(raw_id) is str else str(raw_id)
    if may_hold_nul:
        _refuse_nul(raw)
    return PropertyRecord(property_id, values, raw, content_hash(raw))
