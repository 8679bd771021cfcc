"""The API client against real HTTP servers on loopback: paging, exact bytes, retries, rejections, secrecy."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from property_pipeline.api.client import (
    ApiPage,
    ApiRequestRejected,
    ApiUnavailable,
    PropertySearchClient,
)
from property_pipeline.api.sandbox import FaultConfig, SandboxConfig, SandboxServer

CLIENT_KEY = "pk-live-Zq7xW2-distinctive-do-not-leak"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


def sandbox_with(**config: Any) -> SandboxServer:
    return SandboxServer(SandboxConfig(**config))


def client_for(base_url: str, sleeps: list[float], **options: Any) -> PropertySearchClient:
    return PropertySearchClient(base_url, sleep=sleeps.append, **options)


# --- a scripted provider: a real HTTP server that misbehaves exactly as told -----------------


@dataclass
class ScriptedProvider:
    """Answers each POST with the next scripted (status, headers, body); the last answer repeats."""

    answers: list[tuple[int, dict[str, str], bytes]]
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    base_url: str = ""


@contextmanager
def scripted_provider(*answers: tuple[int, dict[str, str], bytes]) -> Iterator[ScriptedProvider]:
    provider = ScriptedProvider(list(answers))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            provider.received.append((dict(self.headers.items()), body))
            status, headers, answer = provider.answers[min(len(provider.received), len(provider.answers)) - 1]
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    provider.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield provider
    finally:
        httpd.shutdown()
        httpd.server_close()


def page_json(result_index: int = 0, records: int = 1, result_count: int = 1) -> bytes:
    data = [{"id": f"P-{result_index + n}"} for n in range(records)]
    return orjson.dumps(
        {
            "statusCode": 200,
            "resultCount": result_count,
            "resultIndex": result_index,
            "recordCount": records,
            "data": data,
        }
    )


# --- paging ----------------------------------------------------------------------------------


def test_pages_run_to_the_last_partial_page(sandbox: SandboxServer, sleeps: list[float]) -> None:
    with client_for(sandbox.base_url, sleeps) as client:
        pages = list(client.iter_pages({"records": 1001}))
    assert [(page.result_index, page.record_count) for page in pages] == [(0, 400), (400, 400), (800, 201)]
    assert {page.result_count for page in pages} == {1001}
    assert {page.attempts for page in pages} == {1}
    assert sandbox.requests_served == 3
    assert sleeps == []


def test_exact_multiple_of_the_page_size_needs_no_extra_request(sandbox: SandboxServer, sleeps: list[float]) -> None:
    with client_for(sandbox.base_url, sleeps) as client:
        pages = list(client.iter_pages({"records": 800}))
    assert [(page.result_index, page.record_count) for page in pages] == [(0, 400), (400, 400)]
    assert sandbox.requests_served == 2


def test_empty_result_is_one_page_with_no_records(sandbox: SandboxServer, sleeps: list[float]) -> None:
    with client_for(sandbox.base_url, sleeps) as client:
        pages = list(client.iter_pages({"records": 0}))
    assert [(page.result_index, page.record_count, page.result_count) for page in pages] == [(0, 0, 0)]


def test_max_pages_bounds_the_pages_fetched(sandbox: SandboxServer, sleeps: list[float]) -> None:
    with client_for(sandbox.base_url, sleeps) as client:
        assert [page.result_index for page in client.iter_pages({}, max_pages=2)] == [0, 400]
        assert list(client.iter_pages({}, max_pages=0)) == []
    assert sandbox.requests_served == 2


def test_start_index_resumes_a_capture_midway(sandbox: SandboxServer, sleeps: list[float]) -> None:
    with client_for(sandbox.base_url, sleeps) as client:
        pages = list(client.iter_pages({}, start_index=2800))
    assert [(page.result_index, page.record_count) for page in pages] == [(2800, 200)]


def test_page_bodies_are_the_exact_bytes_the_server_sent(sandbox: SandboxServer, sleeps: list[float]) -> None:
    criteria = {"state": "WA"}
    with client_for(sandbox.base_url, sleeps, page_size=150) as client:
        pages = list(client.iter_pages(criteria))
    assert len(pages) > 1
    for page in pages:
        assert page.body == sandbox.page_body(criteria, page.result_index, 150)
    assert sum(page.record_count for page in pages) == pages[0].result_count


def test_request_sends_criteria_with_size_and_result_index_and_the_key_only_when_set(sleeps: list[float]) -> None:
    with scripted_provider((200, {}, page_json(result_index=30))) as provider:
        with client_for(provider.base_url, sleeps, api_key=CLIENT_KEY, page_size=25) as client:
            client.fetch_page({"state": "TX", "size": 9999, "resultIndex": 7}, 30)
        with client_for(provider.base_url, sleeps) as client:
            client.fetch_page({}, 30)
    (keyed_headers, keyed_body), (plain_headers, _) = provider.received
    assert orjson.loads(keyed_body) == {"state": "TX", "size": 25, "resultIndex": 30}
    assert keyed_headers["x-api-key"] == CLIENT_KEY
    assert keyed_headers["Content-Type"] == "application/json"
    assert "x-api-key" not in {name.lower() for name in plain_headers}


# --- retries ---------------------------------------------------------------------------------


def test_rate_limit_waits_as_long_as_retry_after_says(sleeps: list[float]) -> None:
    with sandbox_with(records=1001, faults=FaultConfig(fail_first=1)) as server:
        with client_for(server.base_url, sleeps) as client:
            pages = list(client.iter_pages({}))
            assert client.total_retries == 3
    assert [page.attempts for page in pages] == [2, 2, 2]
    assert sleeps == [1.0, 1.0, 1.0]


def test_retry_after_is_capped_at_backoff_max(sleeps: list[float]) -> None:
    with sandbox_with(records=10, faults=FaultConfig(fail_first=1)) as server:
        with client_for(server.base_url, sleeps, backoff_max=0.25) as client:
            client.fetch_page({}, 0)
    assert sleeps == [0.25]


def test_429_503_and_truncated_bodies_are_retried_until_the_page_arrives(sleeps: list[float]) -> None:
    with sandbox_with(records=500, faults=FaultConfig(fail_first=3)) as server:
        with client_for(server.base_url, sleeps, backoff_base=0.5) as client:
            pages = list(client.iter_pages({}))
        assert [page.attempts for page in pages] == [4, 4]
        for page in pages:
            assert page.body == server.page_body({}, page.result_index, 400)
        assert server.requests_served == 8
    first_page_sleeps = sleeps[:3]
    assert first_page_sleeps[0] == 1.0  # Retry-After of the 429
    assert 0.0 <= first_page_sleeps[1] <= 1.0  # jitter within base * 2**1 after the 503
    assert 0.0 <= first_page_sleeps[2] <= 2.0  # and within base * 2**2 after the truncated body


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap(sleeps: list[float]) -> None:
    with sandbox_with(records=10, faults=FaultConfig(server_error=1.0)) as server:
        with client_for(server.base_url, sleeps, max_attempts=7, backoff_base=1.0, backoff_max=4.0) as client:
            with pytest.raises(ApiUnavailable):
                client.fetch_page({}, 0)
    assert len(sleeps) == 6
    for retry, delay in enumerate(sleeps):
        assert 0.0 <= delay <= min(4.0, 2**retry)


def test_retries_are_bounded_and_then_the_api_is_unavailable(sleeps: list[float]) -> None:
    with sandbox_with(records=10, faults=FaultConfig(server_error=1.0)) as server:
        with client_for(server.base_url, sleeps, max_attempts=3) as client:
            with pytest.raises(ApiUnavailable) as raised:
                client.fetch_page({}, 0)
            assert client.total_retries == 2
        assert server.requests_served == 3
    error = raised.value
    assert error.attempts == 3
    assert error.status in {500, 502, 503, 504}
    assert "after 3 attempt" in str(error)
    assert f"HTTP {error.status}" in str(error)
    assert len(sleeps) == 2


def test_truncated_bodies_never_pass_as_pages(sleeps: list[float]) -> None:
    with sandbox_with(records=10, faults=FaultConfig(truncate=1.0)) as server:
        with client_for(server.base_url, sleeps, max_attempts=2) as client:
            with pytest.raises(ApiUnavailable, match="not valid JSON"):
                client.fetch_page({}, 0)


def test_read_timeouts_are_retried_then_reported(sleeps: list[float]) -> None:
    started = time.monotonic()
    with sandbox_with(records=10, faults=FaultConfig(slow=1.0, slow_seconds=5.0)) as server:
        with client_for(server.base_url, sleeps, read_timeout=0.2, max_attempts=2) as client:
            with pytest.raises(ApiUnavailable, match=r"0\.2s read timeout"):
                client.fetch_page({}, 0)
        assert server.requests_served == 2
    assert time.monotonic() - started < 3.0


def test_slow_responses_are_retried_until_one_arrives_in_time(sleeps: list[float]) -> None:
    faults = FaultConfig(slow=0.5, slow_seconds=5.0, seed=0)
    with sandbox_with(records=1000, faults=faults) as server:
        with client_for(server.base_url, sleeps, read_timeout=0.3, max_attempts=10) as client:
            pages = list(client.iter_pages({}))
            assert client.total_retries >= 1
        for page in pages:
            assert page.body == server.page_body({}, page.result_index, 400)
    assert sum(page.record_count for page in pages) == 1000


def test_refused_connections_are_retried_then_reported(sleeps: list[float]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with client_for(f"http://127.0.0.1:{closed_port}", sleeps, max_attempts=3) as client:
        with pytest.raises(ApiUnavailable, match="connection failed") as raised:
            client.fetch_page({}, 0)
    assert raised.value.attempts == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html><body>Bad gateway</body></html>", "not valid JSON"),
        (b"[]", "not an object"),
        (b'{"resultCount":1,"resultIndex":0,"recordCount":1}', "data is NoneType, not a list"),
        (b'{"resultCount":2,"resultIndex":0,"recordCount":2,"data":[{"id":"a"}]}', "holds 1 records but recordCount"),
        (b'{"resultCount":1,"resultIndex":0,"recordCount":"1","data":[{}]}', "recordCount is '1'"),
        (b'{"resultCount":true,"resultIndex":0,"recordCount":0,"data":[]}', "resultCount is True"),
        (page_json(result_index=7), "resultIndex is 7 but 0 was asked for"),
        (b'{"statusCode":500,"message":"upstream down"}', "statusCode 500 upstream down"),
    ],
)
def test_bad_200_bodies_are_retried_and_reported_with_the_reason(body: bytes, reason: str, sleeps: list[float]) -> None:
    with scripted_provider((200, {}, body)) as provider:
        with client_for(provider.base_url, sleeps, max_attempts=2) as client:
            with pytest.raises(ApiUnavailable) as raised:
                client.fetch_page({}, 0)
    assert len(provider.received) == 2
    assert reason in raised.value.last_failure
    assert reason in str(raised.value)


def test_a_bad_body_then_a_good_one_yields_the_good_one(sleeps: list[float]) -> None:
    good = page_json(records=3, result_count=3)
    with scripted_provider((200, {}, b"<html>oops</html>"), (200, {}, good)) as provider:
        with client_for(provider.base_url, sleeps) as client:
            page = client.fetch_page({}, 0)
    assert page == ApiPage(body=good, result_index=0, record_count=3, result_count=3, attempts=2)


# --- rejections and secrecy ------------------------------------------------------------------


def test_wrong_key_fails_at_once_and_the_key_never_shows(caplog: pytest.LogCaptureFixture, sleeps: list[float]) -> None:
    caplog.set_level(logging.DEBUG)
    with sandbox_with(records=10, api_key="the-sandbox-key") as server:
        with client_for(server.base_url, sleeps, api_key=CLIENT_KEY) as client:
            with pytest.raises(ApiRequestRejected) as raised:
                client.fetch_page({}, 0)
            client_repr = repr(client)
        assert server.requests_served == 1
    error = raised.value
    assert error.status == 401
    assert "PROPERTY_API_KEY" in str(error)
    assert sleeps == []
    for text in (str(error), repr(error), repr(error.args), error.server_message, client_repr, caplog.text):
        assert CLIENT_KEY not in text


def test_missing_key_is_rejected_and_the_right_key_accepted(sleeps: list[float]) -> None:
    with sandbox_with(records=10, api_key=CLIENT_KEY) as server:
        with client_for(server.base_url, sleeps) as client:
            with pytest.raises(ApiRequestRejected, match="HTTP 401"):
                client.fetch_page({}, 0)
        with client_for(server.base_url, sleeps, api_key=CLIENT_KEY) as client:
            assert client.fetch_page({}, 0).record_count == 10


def test_retry_warnings_name_status_and_attempt_but_never_the_key(
    caplog: pytest.LogCaptureFixture, sleeps: list[float]
) -> None:
    caplog.set_level(logging.DEBUG)
    with sandbox_with(records=10, api_key=CLIENT_KEY, faults=FaultConfig(fail_first=2)) as server:
        with client_for(server.base_url, sleeps, api_key=CLIENT_KEY) as client:
            client.fetch_page({}, 0)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "HTTP 429" in warnings[0] and "attempt 1 of 6" in warnings[0]
    assert "HTTP 503" in warnings[1] and "attempt 2 of 6" in warnings[1]
    assert CLIENT_KEY not in caplog.text


def test_bad_criteria_fail_at_once_with_the_server_message(sandbox: SandboxServer, sleeps: list[float]) -> None:
    with client_for(sandbox.base_url, sleeps) as client:
        with pytest.raises(ApiRequestRejected) as raised:
            client.fetch_page({"state": "California"}, 0)
    assert raised.value.status == 400
    assert "state must be a two-letter code" in raised.value.server_message
    assert "state must be a two-letter code" in str(raised.value)
    assert sandbox.requests_served == 1
    assert sleeps == []


def test_page_size_above_the_provider_maximum_is_rejected(sandbox: SandboxServer, sleeps: list[float]) -> None:
    with client_for(sandbox.base_url, sleeps, page_size=2000) as client:
        with pytest.raises(ApiRequestRejected, match="size must be an integer from 1 to 1000"):
            client.fetch_page({}, 0)


def test_wrong_base_url_is_rejected_as_404(sandbox: SandboxServer, sleeps: list[float]) -> None:
    with client_for(sandbox.base_url + "/wrong", sleeps) as client:
        with pytest.raises(ApiRequestRejected, match="PROPERTY_API_BASE_URL") as raised:
            client.fetch_page({}, 0)
    assert raised.value.status == 404


def test_server_messages_are_scrubbed_of_the_key_and_truncated(sleeps: list[float]) -> None:
    echo = orjson.dumps({"message": f"key {CLIENT_KEY} is not allowed here " + "x" * 3000})
    with scripted_provider((403, {}, echo)) as provider:
        with client_for(provider.base_url, sleeps, api_key=CLIENT_KEY) as client:
            with pytest.raises(ApiRequestRejected) as raised:
                client.fetch_page({}, 0)
    error = raised.value
    assert error.status == 403
    assert CLIENT_KEY not in str(error)
    assert error.server_message.startswith("key *** is not allowed here")
    assert len(error.server_message) <= 501


def test_redirects_are_not_followed_so_the_key_stays_with_the_api(sleeps: list[float]) -> None:
    with scripted_provider((302, {"Location": "http://203.0.113.9/steal"}, b"")) as provider:
        with client_for(provider.base_url, sleeps, api_key=CLIENT_KEY) as client:
            with pytest.raises(ApiRequestRejected) as raised:
                client.fetch_page({}, 0)
    assert raised.value.status == 302
    assert len(provider.received) == 1


def test_client_rejects_unusable_settings() -> None:
    with pytest.raises(ValueError, match="http"):
        PropertySearchClient("ftp://example.com")
    with pytest.raises(ValueError):
        PropertySearchClient("http://127.0.0.1:1", page_size=0)
    with pytest.raises(ValueError):
        PropertySearchClient("http://127.0.0.1:1", max_attempts=0)
    with pytest.raises(ValueError):
        PropertySearchClient("http://127.0.0.1:1").iter_pages({}, start_index=-1)
