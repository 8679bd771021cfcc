"""Client for the paged property-search API (POST /v2/PropertySearch; the contract is in docs/design.md)."""

from __future__ import annotations

import http.client
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import orjson
import requests
import urllib3

from property_pipeline.errors import PipelineError
from property_pipeline.payload_json import PayloadJsonError, decode_payload

logger = logging.getLogger(__name__)

SEARCH_PATH = "/v2/PropertySearch"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_MESSAGE_CHARS = 500
REDACTED = "***"
BODY_CHUNK = 1 << 16
DEFAULT_MAX_PAGE_BYTES = 64 * 1024 * 1024  # as PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES: processing reads no larger file
DEFAULT_PAGE_DEADLINE_SECONDS = 120.0
_TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass(frozen=True)
class ApiPage:
    """One page of search results, with the response body exactly as received."""

    body: bytes
    result_index: int
    record_count: int
    result_count: int
    attempts: int
    plain_json: bool = True  # the body decodes as plain JSON (orjson reads it): see payload_json.py


class PropertyApiError(PipelineError):
    """Base of the client's errors; messages never contain the API key."""


class ApiRequestRejected(PropertyApiError):
    """The API refused the request (400/401/403/404, any other non-retryable status); retrying will not help."""

    def __init__(
        self, message: str, *, status: int | None = None, server_message: str = "", result_index: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.result_index = result_index


class ApiPageTooLarge(PropertyApiError):
    """A page is larger than the payload size limit: it was not stored (processing would refuse it unread)."""

    def __init__(self, message: str, *, result_index: int, limit: int) -> None:
        super().__init__(message)
        self.result_index = result_index
        self.limit = limit


class ApiUnavailable(PropertyApiError):
    """Every attempt at a page failed transiently (429, 5xx, timeouts, broken connections, bad 200 bodies)."""

    def __init__(
        self,
        message: str,
        *,
        result_index: int | None = None,
        attempts: int = 0,
        last_failure: str = "",
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.result_index = result_index
        self.attempts = attempts
        self.last_failure = last_failure
        self.status = status


class _TransientFailure(PipelineError):
    """One attempt failed in a way a retry may fix."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class PropertySearchClient:
    """Fetches pages of property records over one HTTP session, retrying transient failures with backoff."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        page_size: int = 400,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        page_deadline: float = DEFAULT_PAGE_DEADLINE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ) -> None:
        self._api_key = api_key or None
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(self._scrub(f"base_url must start with http:// or https://, got {base_url!r}"))
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("connect_timeout and read_timeout must be positive")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must not be negative")
        if max_page_bytes < 1 or page_deadline <= 0:
            raise ValueError("max_page_bytes and page_deadline must be positive")
        self._base_url = base_url.rstrip("/")
        self._search_url = self._base_url + SEARCH_PATH
        self._page_size = page_size
        self._timeout = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_page_bytes = max_page_bytes
        self._page_deadline = page_deadline
        self._sleep = sleep
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._random = random.Random()  # noqa: S311 - backoff jitter, not secrets
        self._total_retries = 0

    def __repr__(self) -> str:
        key = "<set>" if self._api_key else None
        return (
            f"{type(self).__name__}(base_url={self._scrub(self._base_url)!r}, api_key={key}, "
            f"page_size={self._page_size}, max_attempts={self._max_attempts})"
        )

    @property
    def base_url(self) -> str:
        """The API root this client talks to, without a trailing slash."""
        return self._base_url

    @property
    def page_size(self) -> int:
        """Records asked for per page (the request's `size`)."""
        return self._page_size

    @property
    def total_retries(self) -> int:
        """Retries (attempts beyond the first) across the client's life."""
        return self._total_retries

    def fetch_page(self, criteria: Mapping[str, Any], result_index: int) -> ApiPage:
        """Fetch the page starting at `result_index`, retrying transient failures up to `max_attempts` tries."""
        if result_index < 0:
            raise ValueError(f"result_index must not be negative, got {result_index}")
        try:
            payload = orjson.dumps({**criteria, "size": self._page_size, "resultIndex": result_index})
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise PropertyApiError(self._scrub(f"search criteria cannot be sent as JSON: {exc}")) from None

        failure: _TransientFailure | None = None
        for attempt in range(1, self._max_attempts + 1):
            try:
                body, doc, plain = self._post_once(payload, result_index)
            except _TransientFailure as exc:
                failure = exc
                if attempt == self._max_attempts:
                    break
                delay = self._retry_delay(attempt, exc.retry_after)
                logger.warning(
                    "Property API resultIndex=%d attempt %d of %d failed (%s); retrying in %.2fs",
                    result_index,
                    attempt,
                    self._max_attempts,
                    exc.reason,
                    delay,
                )
                self._total_retries += 1
                self._sleep(delay)
                continue
            logger.debug(
                "Property API resultIndex=%d: %d of %d records in %d attempt(s)",
                result_index,
                doc["recordCount"],
                doc["resultCount"],
                attempt,
            )
            return ApiPage(
                body=body,
                result_index=doc["resultIndex"],
                record_count=doc["recordCount"],
                result_count=doc["resultCount"],
                attempts=attempt,
                plain_json=plain,
            )

        assert failure is not None
        raise ApiUnavailable(
            f"Property API unavailable: gave up on POST {self._scrub(self._search_url)} (resultIndex={result_index}) "
            f"after {self._max_attempts} attempt(s); last failure: {failure.reason}. "
            f"The capture can be resumed from resultIndex={result_index} once the API recovers.",
            result_index=result_index,
            attempts=self._max_attempts,
            last_failure=failure.reason,
            status=failure.status,
        )

    def iter_pages(
        self, criteria: Mapping[str, Any], start_index: int = 0, max_pages: int | None = None
    ) -> Iterator[ApiPage]:
        """Yield pages from `start_index` until the last record (or an empty page), at most `max_pages` of them."""
        if start_index < 0:
            raise ValueError(f"start_index must not be negative, got {start_index}")
        if max_pages is not None and max_pages < 0:
            raise ValueError(f"max_pages must not be negative, got {max_pages}")
        return self._pages(criteria, start_index, max_pages)

    def close(self) -> None:
        """Release pooled connections (an injected session is left to its owner)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> PropertySearchClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _pages(self, criteria: Mapping[str, Any], index: int, max_pages: int | None) -> Iterator[ApiPage]:
        yielded = 0
        while max_pages is None or yielded < max_pages:
            page = self.fetch_page(criteria, index)
            yield page
            yielded += 1
            if page.record_count == 0 or page.result_index + page.record_count >= page.result_count:
                return
            index = page.result_index + page.record_count

    def _post_once(self, payload: bytes, result_index: int) -> tuple[bytes, dict[str, Any], bool]:
        """One HTTP attempt: the body, its parsed document and whether it is plain JSON, or _TransientFailure /
        ApiRequestRejected."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        deadline = time.monotonic() + self._page_deadline
        try:
            # Redirects are refused: following one would hand the x-api-key header to another address.
            response = self._session.post(
                self._search_url,
                data=payload,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            )
            try:
                body = self._read_body(response, result_index, deadline)
            finally:
                response.close()
        except requests.exceptions.ConnectTimeout:
            raise _TransientFailure(f"could not connect within {self._timeout[0]}s") from None
        except (requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError):
            raise _TransientFailure(f"no response within the {self._timeout[1]}s read timeout") from None
        except (*_TRANSIENT_ERRORS, urllib3.exceptions.HTTPError, http.client.HTTPException) as exc:
            raise _TransientFailure(self._clip(f"connection failed: {type(exc).__name__}: {exc}")) from None
        except requests.exceptions.RequestException as exc:
            raise PropertyApiError(self._clip(f"request could not be sent: {type(exc).__name__}: {exc}")) from None
        except OSError as exc:  # the socket broke while the body was read
            raise _TransientFailure(self._clip(f"connection failed: {type(exc).__name__}: {exc}")) from None

        status = response.status_code
        if 200 <= status < 300:
            return body, *self._checked_page(body, status, result_index)
        message = self._server_message(body)
        if status in RETRYABLE_STATUSES:
            raise _TransientFailure(
                f"HTTP {status} {response.reason}: {message}",
                status=status,
                retry_after=_retry_after_seconds(response.headers.get("Retry-After")),
            )
        raise ApiRequestRejected(
            f"Property API rejected the request: HTTP {status} {response.reason} from POST "
            f"{self._scrub(self._search_url)} (resultIndex={result_index}): {message}. {_next_step(status)}",
            status=status,
            server_message=message,
            result_index=result_index,
        )

    def _read_body(self, response: requests.Response, result_index: int, deadline: float) -> bytes:
        """The whole body, read as it arrives: bounded in size (refused unstored above the limit) and in time (one
        deadline for the page, however slowly the bytes come)."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_page_bytes:
            self._refuse_large_page(result_index, f"{int(declared):,} bytes announced")
        chunks: list[bytes] = []
        size = 0
        raw = response.raw
        while True:
            if time.monotonic() > deadline:
                raise _TransientFailure(
                    f"page not complete within the {self._page_deadline:g}s page deadline ({size:,} bytes received)"
                )
            chunk = raw.read1(BODY_CHUNK, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_page_bytes:
                self._refuse_large_page(result_index, f"more than {size:,} bytes received")
            chunks.append(chunk)

    def _refuse_large_page(self, result_index: int, seen: str) -> None:
        raise ApiPageTooLarge(
            f"the page at resultIndex={result_index} is larger than the payload limit of {self._max_page_bytes:,} "
            f"bytes ({seen}); it was not stored. Lower PROPERTY_API_PAGE_SIZE or raise "
            "PROPERTY_PIPELINE_MAX_PAYLOAD_BYTES, then resume the capture",
            result_index=result_index,
            limit=self._max_page_bytes,
        )

    def _checked_page(self, body: bytes, status: int, result_index: int) -> tuple[dict[str, Any], bool]:
        """Parse a 2xx body and check it has the contract's shape (and whether it is plain JSON); anything else is a
        transient failure."""
        prefix = f"HTTP {status} with a bad body ({len(body)} bytes)"
        try:
            doc, plain = decode_payload(body)
        except PayloadJsonError as exc:
            raise _TransientFailure(f"{prefix}: not valid JSON ({exc})", status=status) from None
        if not isinstance(doc, dict):
            raise _TransientFailure(f"{prefix}: a JSON {type(doc).__name__}, not an object", status=status)
        if "statusCode" in doc and doc["statusCode"] != 200:
            detail = self._clip(str(doc.get("message", "")))
            raise _TransientFailure(f"{prefix}: statusCode {doc['statusCode']!r} {detail}".rstrip(), status=status)
        for key in ("resultCount", "resultIndex", "recordCount"):
            value = doc.get(key)
            if type(value) is not int or value < 0:
                raise _TransientFailure(f"{prefix}: {key} is {value!r:.40}, not a non-negative integer", status=status)
        data = doc.get("data")
        if not isinstance(data, list):
            raise _TransientFailure(f"{prefix}: data is {type(data).__name__}, not a list", status=status)
        if len(data) != doc["recordCount"]:
            raise _TransientFailure(
                f"{prefix}: data holds {len(data)} records but recordCount is {doc['recordCount']}", status=status
            )
        if doc["resultIndex"] != result_index:
            raise _TransientFailure(
                f"{prefix}: resultIndex is {doc['resultIndex']} but {result_index} was asked for", status=status
            )
        return doc, plain

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._backoff_max)
        # Full jitter: spreads retries from many clients instead of having them hit the API in step.
        return self._random.uniform(0.0, min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1)))

    def _server_message(self, body: bytes) -> str:
        text = body.decode("utf-8", errors="replace")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            for key in ("message", "error", "detail"):
                if isinstance(doc.get(key), str) and doc[key]:
                    text = doc[key]
                    break
        return self._clip(" ".join(text.split())) or "(empty response body)"

    def _clip(self, text: str) -> str:
        # Scrub before cutting, so a cut can never leave part of the key behind.
        text = self._scrub(text)
        return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "…"

    def _scrub(self, text: str) -> str:
        if self._api_key:
            for form in {self._api_key, quote(self._api_key, safe="")}:
                text = text.replace(form, REDACTED)
        return text


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds; None when absent or not a number (HTTP dates fall back to backoff)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0.0 <= seconds < float("inf") else None


def _next_step(status: int) -> str:
    if status in (401, 403):
        return "Check the API key (PROPERTY_API_KEY)."
    if status == 404:
        return "Check the API base URL (PROPERTY_API_BASE_URL)."
    if 300 <= status < 400:
        return "Set PROPERTY_API_BASE_URL to the address the API redirects to."
    return "Check the campaign's search criteria."
