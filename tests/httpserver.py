"""A real HTTP server on 127.0.0.1 for tests, with switchable misbehaviour.

    with FileServer({"/fw.bin": data}) as srv:
        srv.queue(Behaviour(truncate_after=1000))   # first request: drop after 1000 body bytes
        fetch(srv.url("/fw.bin"), ...)              # later requests: srv.default
        assert srv.requests[1].headers["Range"] == "bytes=1000-"

Each request takes the next queued Behaviour, or `default` when the queue is empty. Every
request is recorded (path and headers) so tests can assert what the client asked for.
Import it as `from httpserver import FileServer, Behaviour` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import dataclasses
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclasses.dataclass
class Behaviour:
    """How the server answers one request."""

    status: Optional[int] = None  # answer this status (404, 500, ...) with a short body
    honour_range: bool = True  # False: answer 200 with the whole file even when asked for a Range
    truncate_after: Optional[int] = None  # close the connection after this many body bytes
    delay: float = 0.0  # seconds to sleep before each chunk (a slow server)
    chunk: int = 4096
    extra: bytes = b""  # bytes appended to the file (a body longer than promised)
    content_range_start: Optional[int] = None  # lie about the start in Content-Range
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    hang: bool = False  # read the request, then answer nothing until the server stops
    redirect: Optional[str] = None  # answer `redirect_status` with this Location
    redirect_status: int = 302
    body: Optional[bytes] = None  # send these bytes instead of the file (e.g. a gzip bomb)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)  # extra response headers


@dataclasses.dataclass(frozen=True)
class Request:
    """What one client request asked for."""

    method: str
    path: str
    headers: dict[str, str]


class FileServer:
    """Serve `files` (path -> bytes) on a free loopback port from a background thread."""

    def __init__(self, files: Optional[dict[str, bytes]] = None, *,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.default = Behaviour()
        self.requests: list[Request] = []
        self._queue: list[Behaviour] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # serve https with this server-side context
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread: Optional[threading.Thread] = None
        self.closing = threading.Event()  # set by stop(): hanging and slow answers give up

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        """Full http(s) URL of `path` on this server."""
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def queue(self, *behaviours: Behaviour) -> None:
        """Use these behaviours, in order, for the next requests."""
        with self._lock:
            self._queue.extend(behaviours)

    def next_behaviour(self, req: Request) -> Behaviour:
        """Record `req` and pick how to answer it."""
        with self._lock:
            self.requests.append(req)
            return self._queue.pop(0) if self._queue else self.default

    def start(self) -> "FileServer":
        """Start serving in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (later connections are refused)."""
        self.closing.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _make_handler(server: FileServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            req = Request("GET", self.path, dict(self.headers.items()))
            b = server.next_behaviour(req)
            data = server.files.get(self.path.partition("?")[0])  # a query (a token) is not a name
            if b.hang:
                server.closing.wait()
                self.close_connection = True
                return
            if b.redirect is not None:
                self._short(b.redirect_status, {"Location": b.redirect})
                return
            if b.status is not None or data is None:
                self._short(b.status or 404)
                return
            body, start, status = (data if b.body is None else b.body) + b.extra, 0, 200
            m = _RANGE_RE.fullmatch(self.headers.get("Range", ""))
            if m and b.honour_range:
                start = int(m.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            if status == 206:
                shown = start if b.content_range_start is None else b.content_range_start
                self.send_header("Content-Range", f"bytes {shown}-{len(body) - 1}/{len(body)}")
            if b.send_length:
                self.send_header("Content-Length", str(len(body) - start))
            else:
                self.send_header("Connection", "close")
            self.send_header("Accept-Ranges", "bytes")
            for name, value in b.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self._body(body[start:], b)

        def _short(self, status: int, headers: Optional[dict[str, str]] = None) -> None:
            msg = f"status {status}\n".encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)

        def _body(self, body: bytes, b: Behaviour) -> None:
            limit = len(body) if b.truncate_after is None else min(b.truncate_after, len(body))
            try:
                for i in range(0, limit, b.chunk):
                    if b.delay and server.closing.wait(b.delay):
                        break
                    self.wfile.write(body[i:min(i + b.chunk, limit)])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            if limit < len(body) or not b.send_length:
                self.close_connection = True

    return Handler
