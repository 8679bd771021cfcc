"""A real S3-compatible server on loopback for the object-store tests: moto's server mode in its own process,
and a small HTTP proxy in front of it that can misbehave on purpose (server errors, a connection closed in
the middle of a PUT, a response lost after the server stored the object, a listing that changes between
pages) and records the requests it forwarded."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """`python -m moto.server` on a free loopback port; `stop()` ends it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start within 60 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def client_for(endpoint: str, *, max_attempts: int = 5):  # type: ignore[no-untyped-def]
    """A boto3 S3 client for a loopback endpoint, configured like the pipeline's own (store/s3.py)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        config=Config(
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=10,
        ),
    )


@dataclass
class Seen:
    """A request the proxy received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Faults:
    """What the proxy does to the next requests that match (each fault is used up once)."""

    errors: list[tuple[str, int]] = field(default_factory=list)  # (method, status): answer with a server error
    cut_puts: int = 0  # PUTs whose body is read halfway, then the connection is closed (nothing forwarded)
    lost_put_responses: int = 0  # PUTs forwarded (the server stores them), then the connection is closed
    after_list_page: Callable[[], None] | None = None  # run once, after the first listing page was answered
    after_head: Callable[[], None] | None = None  # run once, after the first HEAD was answered
    list_query_contains: str = ""  # ... of a listing whose query string contains this (a month's prefix)


class FaultyProxy:
    """A threaded HTTP proxy on loopback in front of `upstream`, injecting `faults` and recording requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.faults = Faults()
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take(self, method: str) -> str | int | None:
        """The fault to apply to this request, used up: a status, "cut", "lose", or None."""
        with self.lock:
            for index, (wanted, status) in enumerate(self.faults.errors):
                if wanted == method:
                    del self.faults.errors[index]
                    return status
            if method == "PUT" and self.faults.cut_puts:
                self.faults.cut_puts -= 1
                return "cut"
            if method == "PUT" and self.faults.lost_put_responses:
                self.faults.lost_put_responses -= 1
                return "lose"
        return None

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        fault = self._take(request.command)
        if fault == "cut":
            request.rfile.read(length // 2)
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        body = request.rfile.read(length) if length else b""
        if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(request)
        parts = urlsplit(request.path)
        with self.lock:
            self.seen.append(
                Seen(request.command, parts.path, parts.query, {k.lower(): v for k, v in request.headers.items()}, body)
            )
        if isinstance(fault, int):
            message = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            request.send_response(fault)
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(message)))
            request.end_headers()
            request.wfile.write(message)
            return
        status, headers, answer = self._forward(request, body)
        if fault == "lose":
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        request.send_response(status)
        for name, value in headers:
            if name.lower() not in {"transfer-encoding", "connection", "content-length", "server", "date"}:
                request.send_header(name, value)
        upstream_length = next((v for k, v in headers if k.lower() == "content-length"), "0")
        request.send_header("Content-Length", upstream_length if request.command == "HEAD" else str(len(answer)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(answer)
        hook = None
        if request.command == "GET" and "list-type=2" in parts.query and self.faults.list_query_contains in parts.query:
            with self.lock:
                hook, self.faults.after_list_page = self.faults.after_list_page, None
        if request.command == "HEAD":
            with self.lock:
                hook, self.faults.after_head = self.faults.after_head, None
        if hook is not None:
            hook()

    def _forward(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=30)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"transfer-encoding", "connection"}}
        headers["Content-Length"] = str(len(body))
        connection.request(request.command, request.path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        connection.close()
        return response.status, response.getheaders(), answer

    def puts(self) -> list[Seen]:
        with self.lock:
            return [seen for seen in self.seen if seen.method == "PUT"]


def _read_chunked(request: BaseHTTPRequestHandler) -> bytes:
    data = b""
    while True:
        size = int(request.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            request.rfile.readline()
            return data
        data += request.rfile.read(size)
        request.rfile.readline()
