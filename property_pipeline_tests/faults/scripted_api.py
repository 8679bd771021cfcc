"""A real HTTP server on loopback that answers the property-search API exactly as scripted, misbehaving on demand.

Each POST gets the next answer; the last answer repeats. An answer is `(status, headers, body)`, where
`body` is bytes (sent with its Content-Length) or a `Body` that streams: slowly (`drip_seconds` between
chunks), in chunked transfer encoding (no Content-Length), or endlessly large.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Body:
    """A body sent in pieces: `chunks` one after the other, `drip_seconds` apart, chunked when `length` is None."""

    chunks: Iterator[bytes] | list[bytes]
    drip_seconds: float = 0.0
    length: int | None = None


Answer = tuple[int, dict[str, str], "bytes | Body"]


@dataclass
class ScriptedApi:
    answers: list[Answer]
    requests: list[bytes] = field(default_factory=list)
    base_url: str = ""
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> ScriptedApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                api.requests.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                status, headers, body = api.answers[min(len(api.requests), len(api.answers)) - 1]
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                try:
                    if isinstance(body, bytes):
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    else:
                        self._stream(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up on this answer

            def _stream(self, body: Body) -> None:
                if body.length is None:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(body.length))
                self.end_headers()
                for chunk in body.chunks:
                    if body.length is None:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    else:
                        self.wfile.write(chunk)
                    self.wfile.flush()
                    if body.drip_seconds:
                        time.sleep(body.drip_seconds)
                if body.length is None:
                    self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
