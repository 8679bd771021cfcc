"""The sandbox's HTTP server on loopback: the search endpoint, the key check, injected faults."""

from __future__ import annotations

import contextlib
import hmac
import logging
import random
import socket
import socketserver
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson

from property_pipeline.api.sandbox.config import SandboxConfig
from property_pipeline.api.sandbox.pages import InvalidSearchRequest, _page_bytes, _page_request

logger = logging.getLogger(__name__)

SEARCH_PATH = "/v2/PropertySearch"
DEFAULT_PAGE_SIZE = 400
MAX_REQUEST_BYTES = 1_000_000


@dataclass(frozen=True)
class _Fault:
    kind: str  # "rate_limit", "server_error", "truncate" or "slow"
    status: int = 200
    retry_after: str | None = None


# fail_first cycles through these, so a test sees every kind of transient failure in a fixed order.
_FAIL_FIRST_CYCLE = (_Fault("rate_limit", 429, "1"), _Fault("server_error", 503), _Fault("truncate"))
_ERROR_MESSAGES = {
    404: "Not found; the search endpoint is POST /v2/PropertySearch",
    405: "Method not allowed; use POST",
    429: "Too many requests; slow down",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


def _error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"statusCode": status, "message": message})


class _SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        super().__init__(address, _SandboxRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall for seconds on a machine without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("sandbox connection from %s failed", client_address, exc_info=True)


class _SandboxRequestHandler(BaseHTTPRequestHandler):
    server: _SandboxHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    timeout = 30  # idle keep-alive connections close after this
    server_version = "PropertyApiSandbox/1.0"

    def setup(self) -> None:
        super().setup()
        self.server.sandbox._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line and status only: headers (and so the API key) are never logged.
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        """Any method but POST: 405 on the search path, 404 elsewhere."""
        self.server.sandbox._count_request()
        self.close_connection = True  # any request body is left unread
        if urlsplit(self.path).path.rstrip("/") == SEARCH_PATH:
            self._send(405, _error_body(405, _ERROR_MESSAGES[405]), {"Allow": "POST"})
        else:
            self._send(404, _error_body(404, _ERROR_MESSAGES[404]))

    do_PUT = do_PATCH = do_DELETE = do_GET

    def do_POST(self) -> None:
        sandbox = self.server.sandbox
        sandbox._count_request()
        body = self._read_body()
        if body is None:
            return
        if urlsplit(self.path).path.rstrip("/") != SEARCH_PATH:
            self._send(404, _error_body(404, _ERROR_MESSAGES[404]))
            return
        if not sandbox._authorized(self.headers.get("x-api-key")):
            self._send(401, _error_body(401, "Missing or invalid x-api-key header"))
            return
        try:
            criteria = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._send(400, _error_body(400, "Request body must be a JSON object of search criteria"))
            return
        if not isinstance(criteria, dict):
            self._send(400, _error_body(400, "Request body must be a JSON object of search criteria"))
            return
        config = sandbox.config
        try:
            request = _page_request(
                criteria, criteria.get("resultIndex", 0), criteria.get("size", DEFAULT_PAGE_SIZE), config
            )
        except InvalidSearchRequest as exc:
            self._send(400, _error_body(400, str(exc)))
            return

        fault = sandbox._draw_fault(request.result_index)
        if fault is None:
            self._send(200, _page_bytes(request, config.seed))
        elif fault.kind == "slow":
            if not sandbox._stopping.wait(config.faults.slow_seconds):
                self._send(200, _page_bytes(request, config.seed))
        elif fault.kind == "truncate":
            page = _page_bytes(request, config.seed)
            self._send(200, page[: len(page) // 2])
        else:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._send(fault.status, _error_body(fault.status, _ERROR_MESSAGES[fault.status]), headers)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering an unreadable one (and closing the connection)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(411, _error_body(411, "Send the request body with a Content-Length header"))
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BYTES:
            self.close_connection = True
            self._send(413, _error_body(413, f"Request body must be at most {MAX_REQUEST_BYTES} bytes"))
            return None
        return self.rfile.read(length)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its read timeout passed while a slow response was pending).
            self.close_connection = True


class SandboxServer:
    """The sandbox API on a loopback port, served from a daemon thread; use as a context manager."""

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SandboxConfig()
        self._address = (host, port)
        self._httpd: _SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._lock = threading.Lock()
        self._requests_served = 0
        self._fault_rng = random.Random(self.config.faults.seed)  # noqa: S311 - reproducible faults, not secrets
        self._failures_by_index: dict[int, int] = {}
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return f"SandboxServer(base_url={self._base_url!r}, records={self.config.records})"

    @property
    def base_url(self) -> str:
        """The root URL clients use, e.g. http://127.0.0.1:54321 (known once started)."""
        if self._base_url is None:
            raise RuntimeError("the sandbox has not been started; call start() or use it as a context manager")
        return self._base_url

    @property
    def requests_served(self) -> int:
        """Requests received so far, including those answered with a fault or an error."""
        with self._lock:
            return self._requests_served

    def start(self) -> SandboxServer:
        """Bind the port and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        self._stopping.clear()
        httpd = _SandboxHTTPServer(self._address, self)
        host, port = httpd.server_address[:2]
        self._base_url = f"http://{host!s}:{port}"
        self._httpd = httpd
        # A short poll interval keeps stop() quick; tests start and stop many servers.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="property-api-sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port and any open connections; safe to call twice."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)
        thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def page_body(self, criteria: Mapping[str, Any], result_index: int, size: int) -> bytes:
        """The exact bytes of a good response to this request (ValueError when the sandbox would answer 400)."""
        return _page_bytes(_page_request(criteria, result_index, size, self.config), self.config.seed)

    def _count_request(self) -> None:
        with self._lock:
            self._requests_served += 1

    def _authorized(self, presented: str | None) -> bool:
        expected = self.config.api_key
        if expected is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())

    def _draw_fault(self, result_index: int) -> _Fault | None:
        faults = self.config.faults
        with self._lock:
            failed = self._failures_by_index.get(result_index, 0)
            if failed < faults.fail_first:
                self._failures_by_index[result_index] = failed + 1
                return _FAIL_FIRST_CYCLE[failed % len(_FAIL_FIRST_CYCLE)]
            if not (faults.rate_limit or faults.server_error or faults.slow or faults.truncate):
                return None
            draw = self._fault_rng.random()
            if draw < faults.rate_limit:
                return _Fault("rate_limit", 429, self._fault_rng.choice(("0", "1")))
            draw -= faults.rate_limit
            if draw < faults.server_error:
                return _Fault("server_error", self._fault_rng.choice((500, 502, 503, 504)))
            draw -= faults.server_error
            if draw < faults.truncate:
                return _Fault("truncate")
            draw -= faults.truncate
            return _Fault("slow") if draw < faults.slow else None

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


def serve_forever(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the sandbox in the foreground until Ctrl-C (for the `sandbox-api` command)."""
    with SandboxServer(config, host, port) as server:
        key_note = " (x-api-key required)" if config.api_key else ""
        print(
            f"Property API sandbox: {config.records} records at POST {server.base_url}{SEARCH_PATH}{key_note}. "
            "Press Ctrl-C to stop.",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("Sandbox stopped.", flush=True)
