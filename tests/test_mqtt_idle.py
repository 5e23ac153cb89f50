"""An idle MqttClient sleeps (no wake-up every second) yet keeps its keepalive and reacts at once."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt import client as mqtt_client
from agent.mqtt.client import MqttClient
from agent.mqtt.payload import IDLE_WAIT_MAX, idle_wait, tunable_loop
from mosquitto import Mosquitto

WAIT = 10.0
WINDOW = 3.0  # idle observation; paho's stock loop wakes 3 times in it, ours not at all


def _client(port: int, **kw: object) -> MqttClient:
    return MqttClient("127.0.0.1", port, client_id=f"idle-{uuid.uuid4().hex[:8]}",
                      reconnect_min=0.1, reconnect_max=0.5, **kw)  # type: ignore[arg-type]


def _switches(thread: threading.Thread) -> int:
    """Context switches of one thread of this process so far (every wake-up is one)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines()
               if "ctxt_switches:" in line)


def _network_thread(client: MqttClient) -> threading.Thread:
    name = f"paho-mqtt-client-{client.client_id}"
    return next(t for t in threading.enumerate() if t.name == name)


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as b:
        yield b


def test_idle_wait_is_a_quarter_of_the_keepalive_in_force() -> None:
    assert idle_wait(60) == 15
    assert idle_wait(1) == 0.25
    assert idle_wait(0) == IDLE_WAIT_MAX  # no keepalive: nothing periodic to do
    assert idle_wait(65535) == IDLE_WAIT_MAX


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_idle_client_sleeps_but_a_publish_goes_out_at_once(broker: Mosquitto) -> None:
    got: queue.Queue[bytes] = queue.Queue()
    obs = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}")
    obs.on_message = lambda c, u, m: got.put(bytes(m.payload))
    subscribed = threading.Event()
    obs.on_subscribe = lambda *a: subscribed.set()
    obs.connect("127.0.0.1", broker.port)
    obs.loop_start()
    obs.subscribe("idle/t", 1)
    c = _client(broker.port, keepalive=60)
    try:
        c.start()
        assert c.wait_connected(WAIT) and subscribed.wait(WAIT)
        thread = _network_thread(c)
        time.sleep(0.5)  # the CONNACK/SUBACK exchange is over
        before = _switches(thread)
        time.sleep(WINDOW)
        woke = _switches(thread) - before
        assert woke <= 1, f"idle network thread woke {woke} times in {WINDOW} s"
        sent = time.monotonic()
        c.publish("idle/t", b"now")  # from another thread: must not wait out the 15 s sleep
        assert got.get(timeout=WAIT) == b"now"
        assert time.monotonic() - sent < idle_wait(60) / 2
    finally:
        c.stop()
        obs.disconnect()
        obs.loop_stop()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_sleep_follows_the_keepalive_in_force() -> None:
    """Two clients on a broker that allows at most 10 s: one asks 1 s and must ping within the
    broker's 1.5 s or be dropped; one asks 60 s, gets 10 s back in the CONNACK (MQTT 5 Server
    Keep Alive) and must wake by that value (every 2.5 s), not the 15 s it asked for."""
    with Mosquitto(extra_config="max_keepalive 10") as strict:
        short, overridden = _client(strict.port, keepalive=1), _client(strict.port, keepalive=60)
        disconnects: list[object] = []
        try:
            for c in (short, overridden):
                c.start()
                assert c.wait_connected(WAIT)
                c._client.on_disconnect = lambda *a: disconnects.append(a)  # noqa: SLF001
            assert overridden._client.keepalive == 10  # noqa: SLF001  (the broker's value)
            thread = _network_thread(overridden)
            time.sleep(0.2)
            before = _switches(thread)
            time.sleep(WINDOW)  # twice the 1.5 s the broker gives the short one
            assert _switches(thread) - before >= 1, "slept by the asked 60 s keepalive"
            assert short.connected.is_set() and not disconnects, strict.log()
            assert f"Received PINGREQ from {short.client_id}" in strict.log()
        finally:
            for c in (short, overridden):
                c.stop()


# ----- the private step is optional -------------------------------------------------------------


class _NoStep(paho.Client):
    """A paho whose loop_forever waits somewhere else (the private step was renamed)."""

    def loop_forever(self, timeout: float = 1.0, retry_first_connection: bool = False) -> Any:
        return self.loop(timeout)


class _OtherStep(paho.Client):
    """A paho whose private step no longer takes the wait as `timeout`."""

    def _loop(self) -> Any:  # type: ignore[override]
        return None


def test_the_override_is_used_only_where_pahos_private_step_is_what_it_expects() -> None:
    assert tunable_loop(paho.Client)  # the installed paho (>= 2.2) waits in _loop(timeout)
    assert not tunable_loop(_NoStep)
    assert not tunable_loop(_OtherStep)
    assert not tunable_loop(object)


def test_without_the_private_step_the_public_client_still_works(
        broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback: plain paho.Client and its loop_start(), round trip intact."""
    monkeypatch.setattr(mqtt_client, "tunable_loop", lambda client_class=paho.Client: False)
    got: queue.Queue[bytes] = queue.Queue()
    c = _client(broker.port, keepalive=60)
    assert type(c._client) is paho.Client  # noqa: SLF001  (no override of a private name)
    c.subscribe("fallback/t", lambda topic, payload, retained: got.put(payload))
    try:
        c.start()
        assert c.wait_connected(WAIT)
        assert c.publish_wait("fallback/t", b"still here", timeout=WAIT)
        assert got.get(timeout=WAIT) == b"still here"
    finally:
        c.stop()
