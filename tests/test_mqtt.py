"""MqttClient against a real mosquitto: round trip, last will, broker restart, offline queue, limits."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
import time
from typing import Any, Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.client import MqttClient
from agent.mqtt.payload import encode
from mosquitto import Mosquitto, free_port

WAIT = 10.0  # generous: every wait ends as soon as its condition holds
AVAIL = "t/gw/availability"
REPO = Path(__file__).resolve().parent.parent


class Observer:
    """A plain paho client that records every message it sees (an independent peer)."""

    def __init__(self, port: int, *topics: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), bool(m.retain)))
        subscribed = queue.Queue()
        self.client.on_subscribe = lambda *a: subscribed.put(True)
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        for topic in topics:
            self.client.subscribe(topic, qos=1)
            subscribed.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT)

    def next(self, topic: str | None = None) -> tuple[str, bytes, bool]:
        """The next message (on `topic` if given, skipping others)."""
        while True:
            msg = self.messages.get(timeout=WAIT)
            if topic is None or msg[0] == topic:
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


@pytest.fixture
def make_client(broker: Mosquitto) -> Iterator:
    made: list[MqttClient] = []

    def make(**kw: object) -> MqttClient:
        args: dict = dict(client_id=f"agent-{uuid.uuid4().hex[:8]}", will=(AVAIL, "offline", True),
                          reconnect_min=0.1, reconnect_max=0.5)
        args.update(kw)
        c = MqttClient("127.0.0.1", args.pop("port", broker.port), **args)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def observers() -> Iterator:
    made: list[Observer] = []

    def make(port: int, *topics: str) -> Observer:
        o = Observer(port, *topics)
        made.append(o)
        return o

    yield make
    for o in made:
        o.close()


def collector() -> tuple[queue.Queue, object]:
    q: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    return q, lambda topic, payload, retained: q.put((topic, payload, retained))


def test_encode_payload_types() -> None:
    assert encode(b"\x00") == b"\x00"
    assert encode("é") == "é".encode()
    assert encode({"a": 1, "b": [True, None]}) == b'{"a":1,"b":[true,null]}'
    with pytest.raises(ValueError):
        encode({"x": float("nan")})


@pytest.mark.parametrize("protocol", [5, 4])
def test_round_trip_and_birth(broker: Mosquitto, make_client, observers, protocol: int) -> None:
    obs = observers(broker.port, "t/#")
    c = make_client(protocol=protocol)
    got, handler = collector()
    c.subscribe("t/gw/+/cmd", handler)
    c.start()
    assert c.wait_connected(WAIT)
    assert obs.next(AVAIL) == (AVAIL, b"online", False)  # live delivery of the retained birth

    obs.publish("t/gw/pump/cmd", "install")
    assert got.get(timeout=WAIT) == ("t/gw/pump/cmd", b"install", False)

    assert c.publish("t/gw/pump/events", {"event_type": "queued"})
    assert obs.next("t/gw/pump/events")[1] == b'{"event_type":"queued"}'


def test_handlers_see_the_retained_flag(broker: Mosquitto, make_client, observers) -> None:
    observers(broker.port).publish("t/release/p", "manifest", retain=True)
    c = make_client()
    got, handler = collector()
    c.subscribe("t/release/+", handler)
    c.start()
    assert got.get(timeout=WAIT) == ("t/release/p", b"manifest", True)


def test_a_failing_handler_does_not_stop_delivery(broker: Mosquitto, make_client, observers) -> None:
    c = make_client()
    got, handler = collector()

    def broken(topic: str, payload: bytes, retained: bool) -> None:
        raise RuntimeError("bug")

    c.subscribe("t/x", broken)
    c.subscribe("t/x", handler)
    c.start()
    assert c.wait_connected(WAIT)
    obs = observers(broker.port)
    obs.publish("t/x", "1")
    obs.publish("t/x", "2")
    assert [got.get(timeout=WAIT)[1] for _ in range(2)] == [b"1", b"2"]


def test_stop_publishes_offline(broker: Mosquitto, make_client, observers) -> None:
    c = make_client()
    c.start()
    assert c.wait_connected(WAIT)
    c.stop()
    assert not c.connected.is_set()
    obs = observers(broker.port, AVAIL)
    assert obs.next(AVAIL) == (AVAIL, b"offline", True)


AGENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from agent.mqtt.client import MqttClient
    c = MqttClient("127.0.0.1", int(sys.argv[1]), client_id="killed-agent", will=(sys.argv[2], "offline", True))
    c.start()
    assert c.wait_connected(10)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_last_will_offline_when_the_agent_dies(broker: Mosquitto, observers) -> None:
    obs = observers(broker.port, AVAIL)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, str(broker.port), AVAIL], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        assert obs.next(AVAIL)[1] == b"online"
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker must publish the will
        proc.wait(WAIT)
        assert obs.next(AVAIL) == (AVAIL, b"offline", False)
    finally:
        proc.kill()
        proc.wait()
    late = observers(broker.port, AVAIL)  # and it stays retained for whoever comes later
    assert late.next(AVAIL) == (AVAIL, b"offline", True)


def test_broker_restart_restores_subscriptions_sticky_state_and_queued_messages(
    broker: Mosquitto, make_client, observers
) -> None:
    c = make_client()
    got, handler = collector()
    c.subscribe("t/gw/pump/cmd", handler)
    c.subscribe("t/gw/pump/events", handler)  # to see our own queued event arrive
    c.publish_sticky("t/gw/pump/state", {"v": 1})
    c.start()
    assert c.wait_connected(WAIT)
    before = observers(broker.port, "t/gw/pump/state")
    assert before.next()[1] == b'{"v":1}'
    before.close()

    broker.stop()  # persistence is off: retained messages and subscriptions are gone
    assert _wait_cleared(c)
    c.publish_sticky("t/gw/pump/state", {"v": 2})
    c.publish_sticky("t/gw/pump/state", {"v": 3})  # only the latest survives
    # a stale plain publish to a sticky topic sits in paho's queue; it must not win
    c.publish("t/gw/pump/state", {"v": 0}, retain=True)
    assert c.publish("t/gw/pump/events", "while-down")
    broker.start()  # same port
    assert c.wait_connected(WAIT)

    assert got.get(timeout=WAIT) == ("t/gw/pump/events", b"while-down", False)
    obs = observers(broker.port, "t/gw/#")
    retained = {obs.next()[:2] for _ in range(2)}
    assert retained == {("t/gw/pump/state", b'{"v":3}'), (AVAIL, b"online")}
    obs.publish("t/gw/pump/cmd", "abort")  # re-subscribed
    assert got.get(timeout=WAIT) == ("t/gw/pump/cmd", b"abort", False)
    assert got.empty()


def _wait_cleared(c: MqttClient) -> bool:
    import time

    deadline = time.monotonic() + WAIT
    while c.connected.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not c.connected.is_set()


def test_offline_queue_is_bounded_and_flushed_in_order_on_first_connect(make_client) -> None:
    port = free_port()
    c = make_client(port=port, max_queued=3, will=None)
    got, handler = collector()
    c.subscribe("q/#", handler)
    c.start()  # nothing listens yet
    assert [c.publish(f"q/{i}", str(i)) for i in range(5)] == [True, True, True, False, False]
    with Mosquitto(port):
        assert c.wait_connected(WAIT)
        assert [got.get(timeout=WAIT)[1] for _ in range(3)] == [b"0", b"1", b"2"]
        assert c.publish("q/after", "ok")  # the queue drained, room again
        assert got.get(timeout=WAIT)[1] == b"ok"


def test_oversized_payload_is_dropped_and_reported(broker: Mosquitto, make_client, observers, caplog) -> None:
    rejected: queue.Queue[tuple[str, int]] = queue.Queue()
    c = make_client(max_payload=1024, on_reject=lambda topic, size: rejected.put((topic, size)))
    got, handler = collector()
    c.subscribe("t/big", handler)
    c.start()
    assert c.wait_connected(WAIT)
    obs = observers(broker.port)
    with caplog.at_level(logging.WARNING, logger="agent.mqtt.client"):
        obs.publish("t/big", b"x" * 1025)
        obs.publish("t/big", b"y" * 1024)  # at the limit: delivered, and after the big one
        assert got.get(timeout=WAIT) == ("t/big", b"y" * 1024, False)
    assert rejected.get_nowait() == ("t/big", 1025)
    assert got.empty()
    assert any("1025-byte" in r.getMessage() for r in caplog.records)


def test_ha_birth_resends_discovery_and_state(broker: Mosquitto, make_client, observers) -> None:
    c = make_client()
    c.on_ha_birth("homeassistant")
    c.publish_sticky("homeassistant/device/gw_pump/config", {"d": 1})
    c.start()
    assert c.wait_connected(WAIT)
    obs = observers(broker.port, "homeassistant/device/#")
    # retained, or live if the observer subscribed before the broker had it
    assert obs.next()[:2] == ("homeassistant/device/gw_pump/config", b'{"d":1}')
    obs.publish("homeassistant/status", "offline")
    obs.publish("homeassistant/status", "online")
    topic, payload, _ = obs.next()
    assert (topic, payload) == ("homeassistant/device/gw_pump/config", b'{"d":1}')
    assert obs.messages.empty()  # "offline" triggered nothing


def test_constructor_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MqttClient("127.0.0.1", 1, client_id="")
    with pytest.raises(ValueError):
        MqttClient("127.0.0.1", 1, client_id="x", protocol=3)


def test_tls_client_without_a_tls_broker_never_connects(broker: Mosquitto, make_client) -> None:
    from agent.mqtt.tls import TlsOptions

    c = make_client(tls=TlsOptions())  # system CAs, verification on; the broker speaks plain MQTT
    c.start()
    assert not c.wait_connected(1.0)  # bounded wait for something that must not happen


def test_filter_matcher_agrees_with_paho_on_every_wildcard_case() -> None:
    """Our per-message matcher against paho's own (an independent implementation of MQTT 4.7)."""
    import itertools
    import paho.mqtt.client as paho
    from agent.mqtt.topics import filter_matcher
    filters = ["a/b", "a/+", "+/b", "a/#", "#", "+", "+/+", "a/+/c", "a/b/#", "$SYS/#", "+/x/#",
               "a.b/+", "a+b", "/#", "+/", "a//b"]
    topics = ["a", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "$SYS/x", "$SYS", "x/x", "a/", "/b", "",
              "a.b/x", "axb/x", "a+b", "/", "//", "a//b", "a/b\nc", "a\n/b", "$x/x/y"]
    for f, t in itertools.product(filters, topics):
        assert bool(filter_matcher(f)(t)) == paho.topic_matches_sub(f, t), (f, t)


def test_young_dropped_connections_in_a_row_are_named_as_a_duplicate_client_id(caplog: Any) -> None:
    from agent.mqtt.health import SHORT_LIVED, TAKEOVER_STREAK, Lifetimes
    now = [0.0]
    lives = Lifetimes("'stm32ota-gw' on h:1", clock=lambda: now[0])
    for _ in range(TAKEOVER_STREAK - 1):
        lives.connected()
        now[0] += 1.0
        assert not lives.dropped()
    lives.connected()
    now[0] += SHORT_LIVED + 1  # a connection that lived long breaks the streak
    assert not lives.dropped()
    results = []
    for _ in range(TAKEOVER_STREAK + 1):
        lives.connected()
        now[0] += 1.0
        results.append(lives.dropped())
    assert results == [False] * (TAKEOVER_STREAK - 1) + [True, False]  # once per streak
    assert "client id 'stm32ota-gw' on h:1" in caplog.text and "agent.id" in caplog.text


def test_session_taken_over_stops_reconnecting_and_tells_the_owner(broker: Any) -> None:
    """DISCONNECT 0x8E (what an MQTT 5 broker sends the older of two same-id clients) is final:
    fed to the client's disconnect handler with paho's own ReasonCode."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode
    told: list[str] = []
    c = MqttClient(broker.host, broker.port, client_id="gw-dup", on_taken_over=told.append)
    c.start()
    assert c.wait_connected(10)
    c._on_disconnect(c._client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), None)
    assert len(told) == 1 and "'gw-dup'" in told[0] and "0x8E" in told[0]
    time.sleep(1.5)  # longer than reconnect_min: no reconnect
    assert not c.connected.is_set()
    c.stop()


def test_a_kept_session_re_sends_only_the_birth_and_what_changed_while_away(
    broker: Mosquitto, make_client, observers
) -> None:
    """The broker kept the session (and so the retained messages): a reconnect re-publishes
    the birth (the will replaced it) and the sticky topics changed meanwhile, nothing else."""
    import socket
    c = make_client()
    c.publish_sticky("t/gw/pump/state", {"v": 1})
    c.publish_sticky("t/gw/pump/job", {"j": 1})
    c.start()
    assert c.wait_connected(WAIT)
    obs = observers(broker.port, "t/gw/#")
    assert {obs.next()[:2] for _ in range(3)} == {
        (AVAIL, b"online"), ("t/gw/pump/state", b'{"v":1}'), ("t/gw/pump/job", b'{"j":1}')}
    c._client.socket().shutdown(socket.SHUT_RDWR)  # the network drops; the broker lives on
    assert _wait_cleared(c)
    c.publish_sticky("t/gw/pump/job", {"j": 2})
    assert c.wait_connected(WAIT)
    seen = [obs.next()[:2] for _ in range(3)]
    assert seen[0] == (AVAIL, b"offline")  # the will
    assert set(seen[1:]) == {(AVAIL, b"online"), ("t/gw/pump/job", b'{"j":2}')}
    with pytest.raises(queue.Empty):
        obs.messages.get(timeout=1.0)  # state was not sent again


def test_reconnect_and_the_answer_to_home_assistant_wait_for_their_jitter(
    broker: Mosquitto, make_client, observers
) -> None:
    """jitter 2 s with a fixed random source of 0.5: the first retry after a lost connection
    waits reconnect_min + 1 s, and the re-send after HA's `online` 1 s."""
    import socket
    c = make_client(jitter=2.0, rng=lambda: 0.5)
    c.on_ha_birth("ha")
    c.publish_sticky("t/gw/pump/state", {"v": 1})
    c.start()
    assert c.wait_connected(WAIT)
    obs = observers(broker.port, "t/gw/pump/state")
    assert obs.next()[1] == b'{"v":1}'
    lost = time.monotonic()
    c._client.socket().shutdown(socket.SHUT_RDWR)
    assert _wait_cleared(c) and c.wait_connected(WAIT)
    assert time.monotonic() - lost >= 0.1 + 1.0
    time.sleep(0.5)  # what the reconnect itself re-sends (if the broker lost the session)
    while not obs.messages.empty():  # is not the answer to HA: set it aside first
        obs.messages.get_nowait()
    obs.publish("ha/status", "online")
    asked = time.monotonic()
    assert obs.next("t/gw/pump/state")[1] == b'{"v":1}'
    assert time.monotonic() - asked >= 1.0
