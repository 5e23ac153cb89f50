"""Every client the package runs speaks MQTT 5 and falls back to 3.1.1 (issue 11, item 6).

The 3.1.1 broker is the demo's own amqtt (a real one, which refuses an MQTT 5 CONNECT with
"unsupported protocol version"); the MQTT 5 broker is mosquitto from tests/mosquitto.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Iterator

import pytest

from agent.cli import main
from agent.demo.parts import BrokerProcess, amqtt_broker
from agent.mqtt.client import MqttClient
from mosquitto import Mosquitto

WAIT = 15

needs_amqtt = pytest.mark.skipif(importlib.util.find_spec("amqtt") is None,
                                 reason="amqtt (the demo extra) is not installed (Python < 3.10)")


@pytest.fixture(scope="module")
def amqtt() -> Iterator[BrokerProcess]:
    b = amqtt_broker()
    b.start()
    yield b
    b.close()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    (tmp_path / "fw.bin").write_bytes(bytes(range(256)) * 4)
    assert main(["keygen", "--out", str(tmp_path / "rel")]) == 0
    out = tmp_path / "fw.json"
    assert main(["sign", str(tmp_path / "fw.bin"), "--key", str(tmp_path / "rel.key"),
                 "--product", "pump-ctrl", "--version", "1.5.0", "--url", "http://h/fw.bin",
                 "-o", str(out)]) == 0
    return out


def connected_with(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage()
            for r in caplog.records if r.getMessage().startswith("MQTT connected")]


@needs_amqtt
def test_publish_and_fleet_reach_a_3_1_1_broker_and_say_so(amqtt: BrokerProcess, manifest: Path,
                                                             caplog, capsys) -> None:
    broker = f"{amqtt.host}:{amqtt.port}"
    caplog.set_level(logging.INFO)
    assert main(["-v", "publish", str(manifest), "--broker", broker]) == 0
    assert "published pump-ctrl 1.5.0" in capsys.readouterr().out
    assert any("with MQTT 3.1.1" in line for line in connected_with(caplog))
    assert main(["-q", "publish", str(manifest), "--broker", broker]) == 0
    assert capsys.readouterr().out == ""  # -q: only errors
    caplog.clear()
    assert main(["-v", "fleet", "--json", "--broker", broker, "--quiet-for", "0.3"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == []
    assert any("with MQTT 3.1.1" in line for line in connected_with(caplog))


@needs_amqtt
def test_the_agent_client_falls_back_and_keeps_its_will(amqtt: BrokerProcess) -> None:
    seen: list[bytes] = []
    # a persistent session (expiry property) gets no answer from amqtt: 3.1.1 after a keepalive
    c = MqttClient(amqtt.host, amqtt.port, client_id="versions-agent", reconnect_min=0.2,
                   keepalive=2, will=("t/avail", "offline", True))
    obs = MqttClient(amqtt.host, amqtt.port, client_id="versions-obs", session_expiry=0,
                     reconnect_min=0.2)
    obs.subscribe("t/avail", lambda topic, payload, retained: seen.append(payload))
    try:
        c.start()
        obs.start()
        assert c.wait_connected(WAIT) and obs.wait_connected(WAIT)
        assert (c.protocol, obs.protocol) == (4, 4)
        c.stop()
        deadline = time.monotonic() + WAIT
        while b"offline" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"online" in seen and seen[-1] == b"offline"
    finally:
        obs.stop()


def test_an_mqtt_5_broker_gets_mqtt_5(caplog) -> None:
    caplog.set_level(logging.INFO)
    with Mosquitto() as b:
        c = MqttClient(b.host, b.port, client_id="versions-5", session_expiry=0)
        c.start()
        try:
            assert c.wait_connected(WAIT) and c.protocol == 5
        finally:
            c.stop()
    assert any("with MQTT 5 " in line for line in connected_with(caplog))


def test_a_pinned_protocol_is_not_negotiated() -> None:
    assert MqttClient("127.0.0.1", 1, client_id="x", protocol=5).negotiate is False
    assert MqttClient("127.0.0.1", 1, client_id="x").negotiate is True
