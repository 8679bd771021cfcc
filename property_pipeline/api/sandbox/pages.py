"""Search requests checked against the contract, and the pages of records that answer them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from property_pipeline.api.sandbox.config import MAX_RECORDS, SandboxConfig
from property_pipeline.api.sandbox.records import _state_of, generate_record
from property_pipeline.errors import PipelineError


class InvalidSearchRequest(PipelineError, ValueError):
    """The request breaks the contract; the sandbox answers 400 with this message."""


@dataclass(frozen=True)
class _PageRequest:
    """A validated search: which dataset, filtered how, and which slice of it."""

    records: int
    state: str | None
    result_index: int
    size: int


def _page_request(criteria: Mapping[str, Any], result_index: Any, size: Any, config: SandboxConfig) -> _PageRequest:
    """Check a request against the contract; InvalidSearchRequest says what is wrong."""
    if type(size) is not int or not 1 <= size <= config.max_page_size:
        raise InvalidSearchRequest(f"size must be an integer from 1 to {config.max_page_size}, got {str(size)[:40]}")
    if type(result_index) is not int or result_index < 0:
        raise InvalidSearchRequest(f"resultIndex must be a non-negative integer, got {str(result_index)[:40]}")
    records = criteria.get("records", config.records)
    if type(records) is not int or not 0 <= records <= MAX_RECORDS:
        raise InvalidSearchRequest(f"records must be an integer from 0 to {MAX_RECORDS}, got {str(records)[:40]}")
    state = criteria.get("state")
    if state is not None and not (isinstance(state, str) and len(state) == 2 and state.isascii() and state.isalpha()):
        raise InvalidSearchRequest(f"state must be a two-letter code such as 'CA', got {str(state)[:40]!r}")
    return _PageRequest(records, state.upper() if state else None, result_index, size)


@lru_cache(maxsize=32)
def _indexes_in_state(records: int, seed: int, state: str) -> tuple[int, ...]:
    return tuple(index for index in range(records) if _state_of(index, seed).code == state)


# Retries ask for the same page again; a few cached pages spare regenerating hundreds of records each time.
@lru_cache(maxsize=8)
def _page_bytes(request: _PageRequest, seed: int) -> bytes:
    matched: Sequence[int] = (
        range(request.records) if request.state is None else _indexes_in_state(request.records, seed, request.state)
    )
    chosen = matched[request.result_index : request.result_index + request.size]
    data = [generate_record(index, seed) for index in chosen]
    return orjson.dumps(
        {
            "statusCode": 200,
            "resultCount": len(matched),
            "resultIndex": request.result_index,
            "recordCount": len(data),
            "data": data,
        }
    )
