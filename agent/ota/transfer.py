"""One HTTP GET that another thread can cut short, and the redirect policy around it.

Why not a library client: an abort or a stopping agent must end a blocked connect, TLS
handshake or read within a second, and a slow server must not hold a download for hours by
sending a byte now and then (each read then meets its timeout). A `Guard` thread watches each
GET; when the download must end it shuts the socket down, which on Linux wakes every one of
those blocked calls, and the caller raises the guard's reason. Only name resolution
(getaddrinfo) cannot be cut; the resolver's own timeouts bound it.

Content-Encoding is never decoded (the size and sha256 are about the stored bytes), so a
compressed "bomb" is never expanded.

Proxies: the usual `http_proxy`/`https_proxy`/`no_proxy` environment variables apply, as with
curl, pip or requests: an http URL is asked of the proxy as an absolute URL, an https URL goes
through a CONNECT tunnel and keeps its end-to-end certificate check.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import urllib.request
from base64 import b64encode
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import unquote, urljoin, urlsplit

from agent import __version__
from agent.errors import DownloadFailed, DownloadRetry, ImageRejected, Stm32OtaError
from agent.ota.manifest import check_url, redact_url

POLL = 0.2  # the guard looks this often: abort and SIGTERM take effect within about this
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
SAME_HOST, ANY_HOST = "same-host", "any"
_DEFAULT_PORT = {"http": 80, "https": 443}

Stop = Callable[[], Optional[Stm32OtaError]]


class Guard:
    """Watches one GET from its own thread and cuts its socket when the GET must end.

    `stop()` says why the whole download must end (abort, deadline) or None; on top, each
    `timeout` seconds at least `min_rate * timeout` bytes (and at least one) must arrive.
    """

    def __init__(self, stop: Stop, timeout: float, min_rate: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stop, self.timeout, self.min_rate, self.clock = stop, timeout, min_rate, clock
        self.received = 0  # body bytes of this GET, counted by the reader
        self.reason: Optional[Stm32OtaError] = None
        self._window = (clock(), 0)  # (start, bytes received then) of the current rate window
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="download guard", daemon=True)

    def __enter__(self) -> "Guard":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()

    def check(self) -> Optional[Stm32OtaError]:
        """Why this GET must end now, if it must (and move the rate window on)."""
        why = self.stop()
        if why is not None:
            return why
        now = self.clock()
        start, at = self._window
        if now - start < self.timeout:
            return None
        got = self.received - at
        if got < max(1, self.min_rate * self.timeout):
            if got == 0:
                text = f"no data for {self.timeout:g} s"
            else:
                text = (f"only {got} bytes in {self.timeout:g} s, below the minimum of "
                        f"{self.min_rate} bytes/s (trust.download.min_rate)")
            return DownloadRetry(text, code="download_too_slow")
        self._window = (now, self.received)
        return None

    def _watch(self) -> None:
        while not self._done.wait(POLL):
            why = self.check()
            if why is not None:
                with self._lock:
                    self.reason = why
                    self._cut()
                return

    def _cut(self) -> None:
        if self._sock is not None:
            try:  # the plain socket's shutdown: an SSLSocket's own would drop its state under a reader
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass  # not connected (yet): the socket timeout bounds it

    def attach(self, sock: socket.socket) -> None:
        """The socket to cut from now on (raises at once if the GET is already over)."""
        with self._lock:
            self.raise_if_stopped()
            self._sock = sock

    def raise_if_stopped(self) -> None:
        """Raise the reason the guard cut the GET, if it did."""
        if self.reason is not None:
            raise self.reason

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A TCP connection to host:port that the guard can cut while it connects."""
        err: Optional[OSError] = None
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                self.attach(sock)
                sock.settimeout(timeout)
                sock.connect(addr)
                return sock
            except OSError as e:
                err = e
                sock.close()
            except BaseException:
                sock.close()
                raise
        raise err or OSError(f"{host} has no address")


@functools.lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    """Certificate and host name checks on, the system's CAs (made once, when first needed)."""
    return ssl.create_default_context()


class Proxy:
    """Where a GET goes first when the environment names a proxy for its scheme."""

    def __init__(self, url: str) -> None:
        p = urlsplit(url if "://" in url else f"http://{url}")
        self.host, self.port = p.hostname or "", p.port or _DEFAULT_PORT["http"]
        self.headers: dict[str, str] = {}
        if p.username is not None:
            login = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            self.headers["Proxy-Authorization"] = "Basic " + b64encode(login).decode()


def proxy_for(url: str) -> Optional[Proxy]:
    """The proxy `http_proxy`/`https_proxy` name for `url`, unless `no_proxy` exempts its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    named = proxies.get(parts.scheme)
    if not named or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return Proxy(named)


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection whose socket belongs to a Guard (through a proxy if one is set)."""

    def __init__(self, host: str, port: int, timeout: float, guard: Guard, tls: bool,
                 proxy: Optional[Proxy] = None) -> None:
        if proxy is None:
            super().__init__(host, port, timeout=timeout)
        else:
            super().__init__(proxy.host, proxy.port, timeout=timeout)
            if tls:  # CONNECT host:port first; TLS then runs end to end through the tunnel
                self.set_tunnel(host, port, headers=proxy.headers)
        self._guard, self._use_tls = guard, tls

    def connect(self) -> None:
        """Connect (tunnel, shake hands) where the guard can cut it."""
        sock: socket.socket = self._guard.connect(self.host, self.port, self.timeout)
        self.sock = sock
        if self._tunnel_host:
            self._tunnel()
        if self._use_tls:
            server = self._tunnel_host or self.host
            sock = _tls().wrap_socket(sock, server_hostname=server, do_handshake_on_connect=False)
            self._guard.attach(sock)
            sock.do_handshake()
        self.sock = sock


def _request(url: str, headers: dict[str, str], guard: Guard,
             timeout: float) -> tuple[_Connection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    https = parts.scheme == "https"
    proxy = proxy_for(url)
    conn = _Connection(parts.hostname or "", parts.port or _DEFAULT_PORT[parts.scheme], timeout,
                       guard, https, proxy)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if proxy is not None and not https:  # a plain-http proxy is asked for the absolute URL
        target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
        headers = {**proxy.headers, **headers}
    try:
        conn.request("GET", target, headers={"User-Agent": f"stm32ota/{__version__}",
                                              "Connection": "close", **headers})
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def open_get(url: str, headers: dict[str, str], guard: Guard, *, timeout: float,
             redirects: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET `url`, following redirects the policy allows; the caller closes the connection."""
    for _ in range(MAX_REDIRECTS + 1):
        conn, r = _request(url, headers, guard, timeout)
        if r.status not in REDIRECTS:
            return conn, r
        location = r.getheader("Location")
        conn.close()
        url = follow(url, location, redirects)
    raise DownloadFailed(f"GET {redact_url(url)}: more than {MAX_REDIRECTS} redirects (a loop?); "
                         "point the manifest's url at the file itself", code="too_many_redirects")


def follow(url: str, location: Optional[str], policy: str) -> str:
    """Where a redirect from `url` to `location` leads, if `policy` allows going there."""
    shown = redact_url(url)
    if not location:
        raise DownloadFailed(f"GET {shown}: a redirect without a Location", code="redirect_refused")
    target = urljoin(url, location.strip())
    try:
        check_url(target, "the redirect")
    except ImageRejected as err:
        raise DownloadFailed(f"GET {shown}: {err}", code="redirect_refused") from None
    if policy != ANY_HOST and not same_origin(url, target):
        raise DownloadFailed(
            f"GET {shown} redirects to {redact_url(target)}, another host, port or a plain-http "
            "downgrade; point the manifest's url at the final location, or set "
            f"trust.download.allow_redirects: {ANY_HOST}", code="redirect_refused")
    return target


def same_origin(old: str, new: str) -> bool:
    """True if `new` is on the host and port of `old` (an upgrade from http to https is fine)."""
    a, b = urlsplit(old), urlsplit(new)
    if (a.hostname or "").lower() != (b.hostname or "").lower():
        return False
    if a.scheme == "https" and b.scheme == "http":
        return False
    port_a = a.port or _DEFAULT_PORT[a.scheme]
    port_b = b.port or _DEFAULT_PORT[b.scheme]
    return port_a == port_b or (a.scheme != b.scheme and (a.port, b.port) == (None, None))
