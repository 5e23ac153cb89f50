"""Downloads through an HTTP proxy named by the environment, as curl, pip and requests do.

A real forward proxy on 127.0.0.1 (absolute-URL GETs, and CONNECT tunnels for https) in front
of a real HTTP server and a real TLS server with a certificate made here.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from httpserver import FileServer

from agent.ota import transfer
from agent.ota.download import fetch

DATA = bytes(range(256)) * 64
SHA = hashlib.sha256(DATA).hexdigest()


class ForwardProxy:
    """Relays absolute-URL GETs and CONNECT tunnels; records each request line and its auth."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[str, str]] = []  # (request line, Proxy-Authorization or "")
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        text, _, rest = head.partition(b"\r\n\r\n")
        lines = text.decode().split("\r\n")
        auth = next((l.split(":", 1)[1].strip() for l in lines[1:]
                     if l.lower().startswith("proxy-authorization:")), "")
        self.seen.append((lines[0], auth))
        method, target, _ = lines[0].split(" ")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # "GET http://host:port/path": ask the origin for the path
            hostport, _, path = target.split("://", 1)[1].partition("/")
            host, port = hostport.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            kept = [l for l in lines[1:] if not l.lower().startswith("proxy-")]
            upstream.sendall("\r\n".join([f"GET /{path} HTTP/1.1", *kept]).encode()
                             + b"\r\n\r\n" + rest)
        _pipe(client, upstream)

    def close(self) -> None:
        self.sock.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
    threading.Thread(target=copy, args=(b, a), daemon=True).start()
    copy(a, b)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    p = ForwardProxy()
    yield p
    p.close()


@pytest.fixture
def plain() -> Iterator[FileServer]:
    with FileServer({"/fw.bin": DATA}) as srv:
        yield srv


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "server.pem", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A FileServer behind TLS whose self-made certificate the client trusts (and only it)."""
    cert, key = _certificate(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(transfer, "_tls", lambda: client_ctx)
    with FileServer({"/fw.bin": DATA}, tls=server_ctx) as srv:
        yield srv


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_an_http_download_goes_through_the_proxy_with_its_login(
        proxy: ForwardProxy, plain: FileServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, http_proxy=f"http://gw:s%40cret@127.0.0.1:{proxy.port}")
    path = fetch(plain.url("/fw.bin"), len(DATA), SHA, tmp_path / "cache", max_size=1 << 20)
    assert path.read_bytes() == DATA
    line, auth = proxy.seen[0]
    assert line == f"GET {plain.url('/fw.bin')} HTTP/1.1"
    assert auth == "Basic Z3c6c0BjcmV0"  # base64 of "gw:s@cret"
    assert "Proxy-Authorization" not in plain.requests[0].headers  # never sent past the proxy


def test_an_https_download_tunnels_through_the_proxy_and_checks_the_server(
        proxy: ForwardProxy, tls: FileServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, https_proxy=f"127.0.0.1:{proxy.port}")
    url = tls.url("/fw.bin")
    path = fetch(url, len(DATA), SHA, tmp_path / "cache", max_size=1 << 20)
    assert path.read_bytes() == DATA
    assert proxy.seen[0][0].startswith(f"CONNECT 127.0.0.1:{tls.port} HTTP/1.")  # 1.0 before 3.12


def test_no_proxy_hosts_are_fetched_directly(
        proxy: ForwardProxy, plain: FileServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, http_proxy=f"http://127.0.0.1:{proxy.port}", no_proxy="127.0.0.1")
    fetch(plain.url("/fw.bin"), len(DATA), SHA, tmp_path / "cache", max_size=1 << 20)
    assert proxy.seen == [] and len(plain.requests) == 1
