"""The typed property record and its validator (the contract's fields, mapped to snake_case columns)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from property_pipeline.errors import PayloadError
from property_pipeline.payload_json import UnrepresentableNumber, describe_unstorable, encode_for_storage

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
MAX_ID_CHARS = 256
STATE_RE = re.compile(r"[A-Z]{2}")
ZIP_RE = re.compile(r"\d{5}")


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


@dataclass(frozen=True, slots=True)
class PropertyRecord:
    """A record that passed validation: its id, typed column values (in `COLUMNS` order) and raw JSON text."""

    property_id: str
    values: tuple[Any, ...]
    raw_json: str


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


def _number(value: Any, label: str, low: float = -1e15, high: float = 1e15) -> float:
    if isinstance(value, UnrepresentableNumber):
        raise RecordRejected(f"{label} {value.text} is outside the range of a double")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordRejected(f"{label} must be a number, got {type(value).__name__} {value!r:.40}")
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
    if kind == "number":
        return _number(value, label)
    if kind == "lat":
        return _number(value, label, -90.0, 90.0)
    if kind == "lon":
        return _number(value, label, -180.0, 180.0)
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


# Values taken exactly as parsed, per kind: (the one type that needs no conversion, its range check or None).
# Anything else goes through `_convert`, which converts it (3.0 → 3, 2 → 2.0, dates) or rejects it with a reason.
_AS_PARSED: dict[str, tuple[type | None, Callable[[Any], object] | None]] = {
    "text": (str, None),
    "int64": (int, lambda value: INT64[0] <= value <= INT64[1]),
    "int32": (int, lambda value: INT32[0] <= value <= INT32[1]),
    "number": (float, lambda value: -1e15 <= value <= 1e15),
    "lat": (float, lambda value: -90.0 <= value <= 90.0),
    "lon": (float, lambda value: -180.0 <= value <= 180.0),
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
        if not raw_id.strip():
            raise RecordRejected("id is an empty string")
        # Kept exactly as sent, never trimmed: " 1" trimmed would silently become the property "1".
        if raw_id != raw_id.strip():
            raise RecordRejected(f"id {raw_id[:40]!r} has leading or trailing whitespace")
        if len(raw_id) > MAX_ID_CHARS or "\x00" in raw_id:
            raise RecordRejected(f"id {raw_id[:40]!r} is too long or holds a NUL character")
        return raw_id
    raise RecordRejected(f"id must be a string or an integer, got {type(raw_id).__name__}")


def validate_record(record: Any) -> PropertyRecord:
    """Check one record against the contract and return it typed; raise RecordRejected with the reason."""
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
    raw_json = encode_for_storage(record)
    if raw_json is None:
        raise RecordRejected(f"record cannot be stored as JSON: {describe_unstorable(record)}")
    # PostgreSQL text and jsonb cannot hold U+0000; refuse it on every database alike.
    if "\\u0000" in raw_json:
        raise RecordRejected("record holds a NUL character (\\u0000), which the database cannot store")
    return PropertyRecord(property_id, tuple(values), raw_json)
