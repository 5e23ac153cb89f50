"""paho reads the TCP socket ahead (agent/mqtt/readahead.py): many packets per recv(), handled
in one pass of its loop, and every byte still arrives, in order, however the reads split it."""

from __future__ import annotations

import queue
import socket
import uuid
from typing import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.client import MqttClient
from agent.mqtt.readahead import (DRAIN_MAX, READ_AHEAD, ReadAhead, drain, read_ahead,
                                  reads_with_recv_only)
from mosquitto import Mosquitto

WAIT = 10.0  # shorter than the idle wait (15 s at keepalive 60): a held packet would show


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_small_reads_come_from_one_large_one(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sock = ReadAhead(a, size=8)
    b.sendall(b"0123456789abc")
    assert sock.recv(1) == b"0" and sock.pending() == 7  # 8 read, 1 taken
    assert sock.recv(3) == b"123"
    assert sock.recv(10) == b"4567"  # what is held, never more: paho reads on for the rest
    assert sock.pending() == 0
    assert sock.recv(10) == b"89abc"  # a read that fits is handed over as it is
    with pytest.raises(BlockingIOError):  # nothing held, nothing sent: as the socket itself
        sock.recv(1)
    b.sendall(b"x" * 20)
    assert sock.recv(20) == b"x" * 20  # larger than the read-ahead: one read of that size
    b.close()
    assert sock.recv(1) == b""  # the end of the stream, as before


def test_everything_else_is_the_sockets_own(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sock = read_ahead(a, paho.Client)
    assert isinstance(sock, ReadAhead) and sock.fileno() == a.fileno()
    assert sock.send(b"hi") == 2 and b.recv(2) == b"hi"


class _ReadsInto(paho.Client):
    """A paho that reads its socket with recv_into(): bytes held ahead would be skipped."""

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = bytearray(bufsize)
        return bytes(buf[:self._sock.recv_into(buf)])  # type: ignore[union-attr]


def test_only_a_plain_tcp_socket_read_with_recv_is_wrapped(
        pair: tuple[socket.socket, socket.socket]) -> None:
    class Other(socket.socket):  # an SSLSocket or a proxy's socket is a subclass
        pass

    other = Other()
    try:
        assert read_ahead(other, paho.Client) is other
    finally:
        other.close()
    assert reads_with_recv_only(paho.Client)  # the installed paho (>= 2.2)
    assert not reads_with_recv_only(_ReadsInto) and not reads_with_recv_only(object)
    assert read_ahead(pair[0], _ReadsInto) is pair[0]


def test_drain_reads_while_bytes_are_held_and_stops_on_an_error(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sock = ReadAhead(a, size=64)
    b.sendall(b"abcdef")
    sock.recv(1)
    taken = []

    def read_one() -> int:
        taken.append(sock.recv(1))
        return 0

    assert drain(sock, read_one, 0) == 0 and b"".join(taken) == b"bcdef"
    b.sendall(b"xyz")
    sock.recv(1)
    assert drain(sock, lambda: 7, 0) == 7 and sock.pending() == 2  # first error ends it
    assert drain(sock, read_one, 3) == 3 and sock.pending() == 2  # the pass had failed already
    assert drain(a, read_one, 0) == 0  # a socket not read ahead: nothing to drain


def test_drain_gives_the_loop_back_after_drain_max_reads(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sock = ReadAhead(a, size=2 * DRAIN_MAX)
    b.sendall(b"." * 2 * DRAIN_MAX)
    sock.recv(1)
    assert drain(sock, lambda: len(sock.recv(1)) * 0, 0) == 0
    assert sock.pending() == DRAIN_MAX - 1  # writes and the keepalive get their turn now


def test_a_burst_larger_than_the_read_ahead_arrives_whole_and_in_order() -> None:
    """Retained messages of many sizes (not 0: that clears a retained message), one larger than
    READ_AHEAD, then live ones: each packet split across reads somewhere, none held back
    waiting for more bytes."""
    sizes = [1, 2, 127, 128, 16383, 16384, 3 * READ_AHEAD + 5]
    sizes += [1 + i * 37 % 2000 for i in range(2000)]
    payloads = {f"ra/{i:04d}": bytes([i % 251]) * n for i, n in enumerate(sizes)}
    got: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    with Mosquitto(extra_config="max_queued_messages 10000") as broker:
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for topic, data in payloads.items():
            pub.publish(topic, data, qos=1, retain=True)
        pub.publish("ra/done", b"", qos=1).wait_for_publish(WAIT)
        c = MqttClient("127.0.0.1", broker.port, client_id=f"ra-{uuid.uuid4().hex[:8]}",
                       max_payload=4 * READ_AHEAD, subscribe_qos=0, session_expiry=0)
        c.subscribe("ra/+", lambda t, p, r: got.put((t, p, r)))
        try:
            c.start()
            assert c.wait_connected(WAIT)
            assert isinstance(c._client.socket(), ReadAhead)  # noqa: SLF001
            seen = [got.get(timeout=WAIT) for _ in payloads]
            assert [t for t, _, _ in seen] == sorted(payloads)  # mosquitto sends them in order
            assert all(p == payloads[t] and r for t, p, r in seen)
            for i in range(20):  # live, one at a time: each must come without another behind it
                pub.publish("ra/live", str(i), qos=1).wait_for_publish(WAIT)
                assert got.get(timeout=WAIT) == ("ra/live", str(i).encode(), False)
        finally:
            c.stop()
            pub.disconnect()
            pub.loop_stop()
