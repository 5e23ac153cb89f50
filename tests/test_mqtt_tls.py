"""MQTT over TLS with a user name and password, against a real mosquitto with a TLS listener.

The broker gets a throwaway CA and a server certificate for 127.0.0.1/localhost (tests/mosquitto.py);
`allow_anonymous false` with a password file made by mosquitto_passwd. Covered: MqttClient round
trip (QoS 1, retained), refusals that say why and keep retrying, an untrusted server, mutual TLS
with an encrypted key, `insecure`; the agent's Service; `stm32ota publish` and `stm32ota fleet`.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from agent.cli import main
from agent.config import load
from agent.errors import ConfigError
from agent.ota.keys import keygen, sign_manifest
from agent.mqtt.client import MqttClient
from agent.mqtt.tls import TlsOptions
from agentkit import AgentKit
from mosquitto import CertAuthority, MissingTool, Mosquitto

WAIT = 10.0  # generous: every wait ends as soon as its condition holds
USER, PASSWORD = "agent", "correct horse"
KEY_PASSWORD = "key secret"
FAST = dict(reconnect_min=0.2, reconnect_max=0.4)


def tls_broker(**kwargs: Any) -> Mosquitto:
    """A started Mosquitto with TLS (and the given options); skip if this machine cannot."""
    try:
        b = Mosquitto(tls=True, **kwargs)
    except MissingTool as err:
        pytest.skip(str(err))
    try:
        b.start()
    except RuntimeError as err:
        b.close()
        if re.search(r"tls|ssl", str(err), re.I):
            pytest.skip(f"this mosquitto cannot serve TLS: {err}")
        raise
    return b


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    b = tls_broker(users={USER: PASSWORD})
    yield b
    b.close()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def make_client() -> Iterator[Callable[..., MqttClient]]:
    made: list[MqttClient] = []

    def make(b: Mosquitto, **kw: Any) -> MqttClient:
        args: dict[str, Any] = dict(client_id=f"c-{uuid.uuid4().hex[:8]}", username=USER,
                                    password=PASSWORD, tls=TlsOptions(ca=str(b.ca)), **FAST)
        args.update(kw)
        c = MqttClient(b.host, b.port, **args)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def inbox(client: MqttClient, topic_filter: str) -> "queue.Queue[tuple[str, bytes, bool]]":
    """Subscribe and collect (topic, payload, retained) in a queue."""
    q: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    client.subscribe(topic_filter, lambda t, p, r: q.put((t, p, r)))
    return q


def poll(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "a condition") -> Any:
    """Wait until predicate() is truthy and return it (deadline, short naps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def failures(caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    """The MqttClient's 'cannot connect' records that contain `needle`."""
    return [r for r in caplog.records if r.name == "agent.mqtt.client"
            and "cannot connect" in r.getMessage() and needle in r.getMessage()]


def never_connects(c: MqttClient, caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    """Start c and wait for two failed attempts whose reason contains `needle` (so it failed,
    and tried again), with c never connected; return those records."""
    caplog.set_level(logging.DEBUG, logger="agent.mqtt.client")
    c.start()
    records = poll(lambda: (lambda r: r if len(r) >= 2 else None)(failures(caplog, needle)),
                   what=f"two attempts failing with {needle!r}")
    assert not c.connected.is_set()
    return records


# ----- MqttClient -------------------------------------------------------------------------------

def test_round_trip_over_tls_with_password_qos1_and_retained(broker: Mosquitto, make_client) -> None:
    topic = f"tls/{uuid.uuid4().hex[:8]}"
    agent = make_client(broker, will=(f"{topic}/availability", "offline", True))
    commands = inbox(agent, f"{topic}/cmd")
    agent.start()
    assert agent.wait_connected(WAIT), broker.log()
    assert agent.publish_wait(f"{topic}/state", {"v": 1}, retain=True)  # QoS 1: PUBACK seen

    late = make_client(broker)
    seen = inbox(late, f"{topic}/#")
    late.start()
    assert late.wait_connected(WAIT)
    got = {}
    while len(got) < 2:  # the birth and the state, both retained for a new subscriber
        t, payload, retained = seen.get(timeout=WAIT)
        assert retained, t
        got[t] = payload
    assert got == {f"{topic}/availability": b"online", f"{topic}/state": b'{"v":1}'}

    assert late.publish_wait(f"{topic}/cmd", "check")
    assert commands.get(timeout=WAIT) == (f"{topic}/cmd", b"check", False)
    # the broker saw the user name on a TLS listener (only one listener exists)
    assert f"u'{USER}'" in broker.log()


@pytest.mark.parametrize("username, password, why", [
    (USER, "wrong", "Not authorized"),
    (None, None, "Not authorized"),  # anonymous is off
])
def test_a_refusal_says_why_and_the_client_keeps_retrying(
        broker: Mosquitto, make_client, caplog, username: Any, password: Any, why: str) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.mqtt.client")
    c = make_client(broker, username=username, password=password)
    c.start()
    refused = poll(lambda: (lambda r: r if len(r) >= 3 else None)(failures(caplog, why)),
                   what="three refused attempts")
    assert not c.connected.is_set()
    first, *repeats = refused
    assert first.levelno == logging.WARNING
    assert "check the user name and password" in first.getMessage()
    assert all(r.levelno == logging.DEBUG for r in repeats)  # the same reason: no log flood
    gaps = [b.created - a.created for a, b in zip(refused, refused[1:])]
    assert min(gaps) >= FAST["reconnect_min"] * 0.9, gaps  # back-off, not a hot loop
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and "Protocol error" in r.getMessage()]  # a refusal is not a broken link
    assert "not authorised" in broker.log()


def test_an_untrusted_server_certificate_never_connects(broker: Mosquitto, make_client, caplog,
                                                        tmp_path: Path) -> None:
    other = CertAuthority(tmp_path, "some other CA")
    c = make_client(broker, tls=TlsOptions(ca=str(other.cert)), client_id="untrusted")
    warned = never_connects(c, caplog, "certificate was not accepted")
    assert warned[0].levelno == logging.WARNING and "check the CA file" in warned[0].getMessage()
    assert "as untrusted" not in broker.log()  # never got as far as an MQTT CONNECT


def test_plain_mqtt_to_the_tls_port_never_connects(broker: Mosquitto, make_client) -> None:
    c = make_client(broker, tls=None)
    c.start()
    assert not c.wait_connected(0.5)  # bounded wait for something that must not happen


def test_mutual_tls_with_an_encrypted_client_key(make_client, caplog) -> None:
    b = tls_broker(users={USER: PASSWORD}, require_certificate=True)
    try:
        cert, key = b.authority.issue("client", client=True, password=KEY_PASSWORD)
        good = TlsOptions(ca=str(b.ca), cert=str(cert), key=str(key), key_password=KEY_PASSWORD)
        c = make_client(b, tls=good, will=("mtls/availability", "offline", True))
        seen = inbox(c, "mtls/availability")
        c.start()
        assert c.wait_connected(WAIT), b.log()
        assert seen.get(timeout=WAIT)[:2] == ("mtls/availability", b"online")

        without = make_client(b, tls=TlsOptions(ca=str(b.ca)))
        without.start()  # TLS 1.3: the broker's "certificate required" comes after the handshake
        poll(lambda: [r for r in caplog.records if "certificate required" in r.getMessage()],
             what="the broker asking for a client certificate")
        assert not without.connected.is_set()

        with pytest.raises(ConfigError, match="password is right"):
            MqttClient(b.host, b.port, client_id="x", tls=TlsOptions(
                ca=str(b.ca), cert=str(cert), key=str(key), key_password="not it"))
    finally:
        b.close()


def test_insecure_skips_the_host_name_check_but_not_the_chain(make_client, caplog,
                                                               tmp_path: Path) -> None:
    b = tls_broker(server_names=("broker.example",))  # a certificate that does not name 127.0.0.1
    try:
        strict = make_client(b, tls=TlsOptions(ca=str(b.ca)), username=None, password=None)
        never_connects(strict, caplog, "mismatch, certificate is not valid for '127.0.0.1'")
        strict.stop()

        relaxed = make_client(b, tls=TlsOptions(ca=str(b.ca), insecure=True), username=None,
                              password=None)
        relaxed.start()
        assert relaxed.wait_connected(WAIT), b.log()

        other = CertAuthority(tmp_path, "some other CA")
        untrusted = make_client(b, tls=TlsOptions(ca=str(other.cert), insecure=True),
                                username=None, password=None)
        never_connects(untrusted, caplog, "self-signed certificate in certificate chain")
    finally:
        b.close()


# ----- the agent --------------------------------------------------------------------------------

@pytest.fixture
def tls_kit(tmp_path: Path, broker: Mosquitto, password_file: Path) -> Iterator[AgentKit]:
    """An AgentKit whose agent talks to the TLS broker (the kit's plain broker is never started)."""
    kit = AgentKit(tmp_path, agent_id=f"gw-tls-{uuid.uuid4().hex[:6]}")
    kit.broker.close()
    kit.broker = broker
    kit.http.start()
    kit.uart_target("pump", product="pump-ctrl")
    data = kit.config_dict()
    data["mqtt"].update(username=USER, password_file=str(password_file),
                        tls={"ca": str(broker.ca)})
    cfg = load(kit.write_config(data))
    from agent.service import Service

    kit.service = Service(cfg, kit.flash_targets(cfg), devices=kit.devices(cfg))
    try:
        yield kit
    finally:
        kit.stop_service()
        for t in kit.targets.values():
            t.pty.stop()
        kit.http.stop()  # the module's broker stays up for the other tests


def test_the_agent_runs_over_tls_with_a_password_file(tls_kit: AgentKit, make_client) -> None:
    kit, topics = tls_kit, tls_kit.topics
    obs = make_client(kit.broker)
    seen = inbox(obs, f"{topics.base}/{kit.agent_id}/#")
    discovery = inbox(obs, topics.discovery("pump"))
    obs.start()
    assert obs.wait_connected(WAIT)
    kit.service.start()

    def next_on(q: queue.Queue, topic: str) -> tuple[str, bytes, bool]:
        while True:
            msg = q.get(timeout=WAIT)
            if msg[0] == topic:
                return msg
    assert next_on(seen, topics.availability)[1] == b"online"
    config = json.loads(next_on(discovery, topics.discovery("pump"))[1])
    assert config["availability_topic"] == topics.availability
    state = json.loads(next_on(seen, topics.state("pump"))[1])
    assert "latest_version" in state

    # inbound over TLS too: an announced release reaches the agent, which says so in its state
    m = kit.release("pump-ctrl", "2.0.0", kit.image(1000))
    assert obs.publish_wait(topics.release("pump-ctrl"), m, retain=True)
    poll(lambda: json.loads(next_on(seen, topics.state("pump"))[1]).get("latest_version")
         == "2.0.0", what="the announced version in the state")
    obs.publish_wait(topics.release("pump-ctrl"), b"", retain=True)  # clean the module's broker

    kit.stop_service()
    assert next_on(seen, topics.availability)[1] == b"offline"


# ----- the one-shot tools -----------------------------------------------------------------------

def tls_args(b: Mosquitto, password_file: Path, *extra: str) -> list[str]:
    return ["--broker", f"{b.host}:{b.port}", "--ca", str(b.ca), "--username", USER,
            "--password-file", str(password_file), *extra]


def test_publish_and_fleet_over_tls(tls_kit: AgentKit, password_file: Path, tmp_path: Path,
                                    make_client, capsys) -> None:
    kit, topics = tls_kit, tls_kit.topics
    kit.service.start()
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(kit.release("pump-ctrl", "3.1.0", kit.image(500))))
    obs = make_client(kit.broker)
    states = inbox(obs, topics.state("pump"))
    obs.start()
    assert obs.wait_connected(WAIT)

    assert main(["publish", str(manifest), *tls_args(kit.broker, password_file)]) == 0
    assert "published pump-ctrl 3.1.0" in capsys.readouterr().out
    poll(lambda: json.loads(states.get(timeout=WAIT)[1]).get("latest_version") == "3.1.0",
         what="the published release in the agent's state")

    argv = ["fleet", *tls_args(kit.broker, password_file), "--json", "--agent", kit.agent_id,
            "--quiet-for", "0.3"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["agents"] == [{"agent": kit.agent_id, "online": True}]
    [row] = doc["targets"]
    assert (row["target"], row["product"], row["latest"]) == ("pump", "pump-ctrl", "3.1.0")
    obs.publish_wait(topics.release("pump-ctrl"), b"", retain=True)


def test_the_tools_refuse_what_cannot_work(broker: Mosquitto, password_file: Path,
                                           tmp_path: Path, capsys) -> None:
    other = CertAuthority(tmp_path, "some other CA")
    base = ["fleet", "--once", "--connect-timeout", "0.3"]
    unreachable = ConfigError.exit_code
    assert main([*base, *tls_args(broker, password_file), "--ca", str(other.cert)]) == unreachable
    assert "broker_unreachable" in capsys.readouterr().err  # the last --ca wins
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    started = time.monotonic()
    assert main([*base[:-1], "30", *tls_args(broker, wrong)]) == unreachable
    assert "[broker_auth]" in capsys.readouterr().err  # at once: retrying cannot fix a password
    assert time.monotonic() - started < 10
    assert main([*base, *tls_args(broker, password_file), "--cert", str(other.cert)]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err
    assert main([*base, *tls_args(broker, password_file), "--ca", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_publish_with_a_client_certificate_and_insecure(tmp_path: Path, password_file: Path,
                                                        make_client, monkeypatch, capsys) -> None:
    b = tls_broker(users={USER: PASSWORD}, require_certificate=True,
                   server_names=("broker.example",))
    try:
        cert, key = b.authority.issue("ci", client=True, password=KEY_PASSWORD)
        manifest = tmp_path / "m.json"
        fields = {"product": "pump-ctrl", "version": "1.0.0", "url": "http://h/f.bin",
                  "size": 4, "sha256": "0" * 64, "format": "bin", "address": 0x08000000}
        manifest.write_text(json.dumps(sign_manifest(fields, keygen(tmp_path / "rel")[0])))
        monkeypatch.setenv("STM32OTA_KEY_PASSWORD", KEY_PASSWORD)
        argv = ["publish", str(manifest), *tls_args(b, password_file), "--cert", str(cert),
                "--key", str(key), "--connect-timeout", "0.5"]
        assert main(argv) == ConfigError.exit_code  # the certificate names broker.example, not 127.0.0.1
        assert "broker_unreachable" in capsys.readouterr().err
        assert main([*argv, "--insecure"]) == 0, capsys.readouterr().err
        obs = make_client(b, tls=TlsOptions(ca=str(b.ca), cert=str(cert), key=str(key),
                                            key_password=KEY_PASSWORD, insecure=True))
        seen = inbox(obs, "stm32ota/release/pump-ctrl")
        obs.start()
        topic, payload, retained = seen.get(timeout=WAIT)
        assert retained and json.loads(payload)["version"] == "1.0.0"
    finally:
        b.close()
