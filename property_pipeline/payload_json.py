"""Decoding a payload page's JSON: orjson first, and a strict standard-library decode for what orjson refuses.

orjson refuses two things that are valid JSON grammar: a number beyond the double range (`1e400`)
and a string holding a lone UTF-16 surrogate escape (`"\\ud835"`). Both are one record's problem,
not the page's: the fallback decodes such a page so that the validator can quarantine the record
that holds the value and the rest of the page loads. The fallback is as strict as orjson otherwise
(no `NaN`/`Infinity` literals, valid UTF-8 only), and costs nothing on pages orjson reads.

A page orjson reads is *plain*: valid UTF-8, every number a double, no lone surrogate. Whoever
decodes a page whole (registration, capture) records that, so that processing can trust it for the
same bytes (same SHA-256) and decode only the fields it needs (processing/parse.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from property_pipeline.errors import PayloadError


class PayloadJsonError(PayloadError, ValueError):
    """The bytes are not JSON (truncated, corrupted, not UTF-8, or not JSON at all)."""


class UnrepresentableNumber:
    """A JSON number outside the double range, kept as its text so the record that holds it can be rejected."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _float_or_marker(text: str) -> float | UnrepresentableNumber:
    value = float(text)
    return value if math.isfinite(value) else UnrepresentableNumber(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def decode_payload(body: bytes) -> tuple[Any, bool]:
    """The decoded document and whether it is plain (orjson read it); PayloadJsonError (with orjson's message)
    when the bytes are not JSON."""
    try:
        return orjson.loads(body), True
    except orjson.JSONDecodeError as error:
        first_error = error
    try:
        return json.loads(body, parse_float=_float_or_marker, parse_constant=_refuse_constant), False
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PayloadJsonError(str(first_error)) from None


def decode_payload_json(body: bytes) -> Any:
    """The decoded document; PayloadJsonError (with orjson's message) when the bytes are not JSON."""
    return decode_payload(body)[0]


def encode_for_storage(value: Any) -> str | None:
    """The value as JSON text a database can store, or None when it holds a lone surrogate or an unrepresentable
    number; callers treat None as "this record cannot be stored". What orjson cannot write but is plain JSON
    (nesting beyond its 254 levels, integers beyond 64 bits) is written by the standard library's encoder."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: surrogates, markers, deep nesting, big integers
        pass
    if find_unstorable(value) is not None:
        return None
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (ValueError, RecursionError):
        return None


def describe_unstorable(value: Any) -> str:
    """Why `encode_for_storage` refused a value, in words a user can act on."""
    return find_unstorable(value) or "it is nested deeper than the JSON encoder can write"


def find_unstorable(value: Any) -> str | None:
    """What in a decoded value no JSON reader can take back (a number beyond the double range, a lone surrogate),
    or None. Only the tolerant decoder produces such values."""
    return _find_unstorable(value, 0)


def _find_unstorable(value: Any, depth: int) -> str | None:
    if depth > 900:  # below Python's recursion limit; what lies deeper is left to the encoder
        return None
    if isinstance(value, UnrepresentableNumber):
        return f"the number {value.text} is outside the range of a double"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"the text {escaped_text(value)[:60]!r} holds a lone UTF-16 surrogate, which is not valid Unicode"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_unstorable(key, depth + 1) or _find_unstorable(item, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _find_unstorable(item, depth + 1)
            if found:
                return found
    return None


def escaped_text(text: str) -> str:
    """Text any database can store: NUL as `\\x00`, lone surrogates as `\\udXXX` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def quarantine_text(value: Any) -> str:
    """A rejected record as JSON text for the quarantine table, whatever it holds."""
    text = encode_for_storage(value)
    if text is not None:
        return text
    try:
        # ensure_ascii escapes lone surrogates as \\udXXX; unrepresentable numbers are shown as their text.
        return json.dumps(value, ensure_ascii=True, default=repr)
    except (ValueError, RecursionError):
        return f"<a JSON {type(value).__name__} that cannot be shown>"
