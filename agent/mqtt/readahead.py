"""Read-ahead for paho's network thread, without paho: one recv() for many inbound packets.

paho 2.x reads every packet with at least three recv() calls (the command byte, each byte of
the remaining length, then the body) and handles one packet per select() pass when it has
no QoS 1/2 traffic in flight: a burst of 50,000 retained messages (the fleet view of 20,000
targets) was 200,000 syscalls and 50,000 passes of its loop. `ReadAhead` wraps the plain TCP
socket and serves those small reads from one large one; it tells paho what it holds through
`pending()`, the method paho already asks an SSL socket (bytes decrypted but not yet read),
so paho does not wait in select() for bytes that are already here. `MqttClient`'s paho
subclass then handles every packet held in one pass (`drain`).

TLS sockets are left alone: OpenSSL reads whole records ahead already and paho asks it.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

READ_AHEAD = 64 * 1024  # bytes per recv(): a few hundred retained fleet messages
DRAIN_MAX = 1000  # packets handled per pass at most, so writes and keepalive still get a turn


class ReadAhead:
    """A non-blocking TCP socket whose recv() reads up to READ_AHEAD bytes and hands them out
    as asked; everything else (send, fileno, close, shutdown, ...) is the socket's own."""

    def __init__(self, sock: socket.socket, size: int = READ_AHEAD) -> None:
        self._sock, self._size = sock, size
        self._buf, self._pos = b"", 0

    def recv(self, bufsize: int) -> bytes:
        """Up to `bufsize` bytes: held ones first, else one read of the socket (which raises
        BlockingIOError when nothing came, and returns b"" at the end, as before)."""
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(bufsize, self._size))
            if len(data) <= bufsize:
                return data
            self._buf, self._pos = data, 0
        start, self._pos = self._pos, min(self._pos + bufsize, len(self._buf))
        data = self._buf[start:self._pos]
        if self._pos == len(self._buf):  # all handed out: an idle client holds no 64 KiB
            self._buf, self._pos = b"", 0
        return data

    def pending(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def reads_with_recv_only(client_class: type) -> bool:
    """True when paho's client reads its socket only through `_sock_recv()`, with recv() (paho
    2.x): then ReadAhead sees every read. A paho that read it another way (recv_into, a file
    object) would get bytes past the ones held, out of order: it gets the plain socket."""
    reader = getattr(getattr(client_class, "_sock_recv", None), "__code__", None)
    names = set(reader.co_names) if reader is not None else set()
    return "recv" in names and not names & {"recv_into", "recvmsg", "makefile", "read"}


def read_ahead(sock: Any, client_class: type) -> Any:
    """A plain TCP socket wrapped in ReadAhead where `client_class` (paho's) allows it, see
    reads_with_recv_only(); anything else (TLS, a proxy's socket) as it is."""
    if type(sock) is socket.socket and reads_with_recv_only(client_class):
        return ReadAhead(sock)
    return sock


def drain(sock: Any, read: Callable[[], int], rc: int) -> int:
    """After a pass of paho's loop that returned `rc`: while `sock` (paho's socket) holds bytes
    read ahead, call `read()` (paho's loop_read, a packet or more per call, no syscall while
    they last), up to DRAIN_MAX times; the first non-zero result ends it and is returned."""
    if not isinstance(sock, ReadAhead):
        return rc
    for _ in range(DRAIN_MAX):
        if rc or not sock.pending():
            break
        rc = read()
    return rc
