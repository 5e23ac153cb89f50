"""`stm32ota fleet`: the view of every agent and target, read from the retained MQTT topics.

The model is tested with payloads made by the agent's own builders; the command against two
real in-process agents (`agent.service.Service`, simulated STM32s) on a real mosquitto.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from agent.mqtt import contract as ha
from agent.mqtt.topics import Topics
from agent.cli import main
from agent.errors import PayloadError
from agent.mqtt.fleet import STATE_MEMO, Fleet, changes, stragglers
from agentkit import REPO, AgentKit

QUIET = ["--quiet-for", "0.3"]  # retained messages arrive within ms on loopback


# --- the model ------------------------------------------------------------------------------


def _discovery(agent: str, target: str, product: str, base: str = "stm32ota") -> tuple[str, bytes]:
    t = Topics(base, agent)
    doc = ha.discovery_payload(agent, target, base_topic=base, device_info={}, product=product)
    return t.discovery(target), json.dumps(doc).encode()


def _state(installed: str, latest: str, percent: Any = None) -> bytes:
    return json.dumps(ha.state_payload(
        installed_version=installed, latest_version=latest, title="t", release_summary="",
        release_url=None, in_progress=percent is not None, update_percentage=percent)).encode()


def test_discovery_names_the_product_as_model_id() -> None:
    doc = ha.discovery_payload("gw", "pump", base_topic="b", device_info={"model": "STM32"},
                               product="pump-ctrl")
    assert doc["device"]["model_id"] == "pump-ctrl"
    assert doc["device"]["model"] == "STM32"
    with pytest.raises(PayloadError, match="model_id"):
        ha.discovery_payload("gw", "pump", base_topic="b", device_info={"model_id": "x"}, product="p")


def test_fleet_joins_discovery_availability_state_and_job() -> None:
    f = Fleet()
    # '_' in both ids: the discovery object id gw_1_my_pump is ambiguous, the state topic is not
    assert f.handle(*_discovery("gw_1", "my_pump", "pump-ctrl"))
    assert f.handle("stm32ota/gw_1/availability", b"online")
    assert f.handle("stm32ota/gw_1/my_pump/state", _state("1.0.0", "1.1.0", 40))
    job = ha.job_payload("j1", "FAILED", phase="write", percent=40,
                         error={"code": "verify_failed", "message": "block 3 differs"})
    assert f.handle("stm32ota/gw_1/my_pump/job", json.dumps(job).encode())
    (row,) = f.snapshot()
    assert (row.agent, row.target, row.product, row.online) == ("gw_1", "my_pump", "pump-ctrl", True)
    assert (row.installed, row.latest, row.in_progress, row.percent) == ("1.0.0", "1.1.0", True, 40)
    assert (row.status, row.phase, row.error_code) == ("FAILED", "write", "verify_failed")
    assert not f.handle("stm32ota/gw_1/my_pump/state", _state("1.0.0", "1.1.0", 40))  # no change
    assert f.handle("stm32ota/gw_1/availability", b"offline")
    assert f.snapshot()[0].online is False


def test_fleet_skips_what_is_not_ours_or_malformed() -> None:
    f = Fleet()
    for topic, payload in [
        _discovery("gw", "pump", "p", base="other"),  # another installation on the same broker
        ("homeassistant/device/zigbee_lamp/config", b'{"components": {"l": {"platform": "light"}}}'),
        ("homeassistant/device/x/config", b"not json"),
        ("stm32ota/gw/pump/state", b"[1, 2]"),
        ("stm32ota/gw/pump/job", b"\xff\xfe"),
        ("stm32ota/release/pump-ctrl", b'{"version": "1.0.0"}'),
        ("stm32ota/gw/availability", b"maybe"),
    ]:
        f.handle(topic, payload)
    assert f.snapshot() == [] and f.agent_ids() == []


def test_cleared_discovery_takes_the_target_out_of_its_product() -> None:
    f = Fleet()
    topic, payload = _discovery("gw", "pump", "pump-ctrl")
    f.handle(topic, payload)
    f.handle("stm32ota/gw/pump/state", _state("1.0.0", "1.0.0"))
    assert [r.target for r in f.snapshot(product="pump-ctrl")] == ["pump"]
    f.handle(topic, b"")
    assert f.snapshot(product="pump-ctrl") == []
    assert f.snapshot()[0].product is None


def test_a_state_payload_many_targets_share_is_read_right_for_each() -> None:
    """Fleet keeps the columns of recent state payloads (the same bytes from every target of
    a product on one version); more distinct payloads than it keeps change nothing."""
    f = Fleet()
    same = _state("1.0.0", "1.0.0")
    for t in ("a", "b"):
        assert f.handle(f"stm32ota/gw/{t}/state", same)
    assert not f.handle("stm32ota/gw/a/state", same)
    for i in range(2 * STATE_MEMO + 1):
        assert f.handle("stm32ota/gw/a/state", _state(f"1.0.{i + 1}", "2.0.0"))
    assert not f.handle("stm32ota/gw/b/state", same)
    assert f.handle("stm32ota/gw/b/state", _state("1.0.0", "1.0.0", 10))
    assert not f.handle("stm32ota/gw/b/state", b"[]")
    assert [(r.target, r.installed, r.latest, r.in_progress) for r in f.snapshot()] == [
        ("a", f"1.0.{2 * STATE_MEMO + 1}", "2.0.0", False), ("b", "1.0.0", "1.0.0", True)]
    assert len(f._states) <= STATE_MEMO  # noqa: SLF001  (bounded, however many it saw)


def test_changes_and_stragglers() -> None:
    f = Fleet()
    f.handle(*_discovery("gw", "a", "p"))
    before = f.snapshot()
    f.handle("stm32ota/gw/a/state", _state("1.0.0", "1.1.0"))
    assert changes(before, f.snapshot()) == ["gw/a: installed=1.0.0 latest=1.1.0 in_progress=False"]
    assert [r.target for r in stragglers(f.snapshot(), "1.1.0")] == ["a"]
    assert stragglers(f.snapshot(), "1.0.0") == []


def test_tally_counts_per_message_and_drain_lists_only_changed_rows() -> None:
    f = Fleet()
    for t in ("a", "b"):
        f.handle(*_discovery("gw", t, "p"))
        f.handle(f"stm32ota/gw/{t}/state", _state("1.0.0", "1.1.0"))
    f.handle(*_discovery("gw", "c", "other"))
    f.track("1.1.0", "p")
    assert f.counts() == (0, 2)
    f.drain()
    f.handle("stm32ota/gw/a/state", _state("1.1.0", "1.1.0"))
    assert f.counts() == (1, 2)
    assert [r.target for r in f.drain()] == ["a"] and f.drain() == []
    f.handle("stm32ota/gw/b/state", _state("1.1.0", "1.1.0"))
    f.handle("stm32ota/gw/a/state", _state("1.0.0", "1.1.0"))  # rolled back
    assert f.counts() == (1, 2)
    f.handle(_discovery("gw", "b", "p")[0], b"")  # b leaves the product
    assert f.counts() == (0, 1)
    f.handle("stm32ota/gw/availability", b"offline")  # an agent's availability: all its rows
    assert {(r.target, r.online) for r in f.drain()} == {("a", False), ("b", False), ("c", False)}


def _synthetic_fleet(broker: Any, agents: int, per_agent: int, installed: str) -> None:
    """Retained discovery, availability and state of agents*per_agent targets, as the agents'
    own payload builders make them, published straight to the broker."""
    from agent.mqtt.client import MqttClient
    pub = MqttClient(broker.host, broker.port, client_id="synthetic", session_expiry=0,
                     max_queued=0)  # 0: no limit on what paho holds in flight
    pub.start()
    assert pub.wait_connected(10)
    try:
        for i in range(agents):
            agent = f"gw{i:05d}"
            pub.publish(f"stm32ota/{agent}/availability", b"online", retain=True)
            for j in range(per_agent):
                pub.publish(*_discovery(agent, f"t{j}", "pump-ctrl"), retain=True)
                pub.publish(f"stm32ota/{agent}/t{j}/state", _state(installed, installed), retain=True)
        assert pub.publish_wait("stm32ota/synthetic/done", b"", timeout=120)
    finally:
        pub.stop()


def test_once_reads_20000_retained_targets_exactly(capsys: Any) -> None:
    """A 50,000-message retained burst: every target, and no 'may be partial' warning, since
    the viewer's marker came back after the burst. mosquitto drops what a slower reader leaves
    beyond max_queued_messages (default 1000) even at QoS 0, so a big fleet's broker raises it
    (docs/fleet.md); the marker is then dropped too and the view warns."""
    from mosquitto import Mosquitto
    with Mosquitto(extra_config="max_queued_messages 100000") as broker:
        _synthetic_fleet(broker, 10_000, 2, "1.0.0")
        argv = ["fleet", "--broker", f"{broker.host}:{broker.port}", "--once", "--json",
                "--quiet-for", "30", "--settle", "120"]
        assert main(argv) == 0
        out = capsys.readouterr()
    doc = json.loads(out.out)
    assert len(doc["targets"]) == 20_000 and len(doc["agents"]) == 10_000
    assert {(t["product"], t["installed"], t["online"]) for t in doc["targets"]} == {
        ("pump-ctrl", "1.0.0", True)}
    assert "partial" not in out.err


# --- the command against two real agents -----------------------------------------------------


@pytest.fixture
def two_agents(tmp_path: Path) -> Iterator[tuple[AgentKit, AgentKit]]:
    """gw-a (pump: pump-ctrl over UART, sensor: sensor-node over I2C) and gw-b (pump: pump-ctrl)
    as two in-process Services on one broker."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = AgentKit(tmp_path / "a", agent_id="gw-a")
    b = AgentKit(tmp_path / "b", agent_id="gw-b")
    b.broker.close()
    b.broker = a.broker  # one broker for both: start() on a running broker does nothing
    with a:
        b.start()
        try:
            a.uart_target("pump", product="pump-ctrl")
            a.i2c_target("sensor", product="sensor-node")
            b.uart_target("pump", product="pump-ctrl")
            b.trust = a.trust  # one release key for the whole fleet
            a.start_service()
            b.start_service()
            yield a, b
        finally:
            b.stop_service()
            a.stop_service()
            _close_without_broker(b)  # a closes the broker


def _close_without_broker(kit: AgentKit) -> None:
    class _Nothing:
        def close(self) -> None:
            pass

    kit.broker = _Nothing()  # type: ignore[assignment]
    kit.close()


def _fleet(kit: AgentKit, *args: str) -> list[str]:
    return ["fleet", "--broker", f"{kit.broker.host}:{kit.broker.port}", *args]


def _json_once(kit: AgentKit, capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(_fleet(kit, "--once", "--json", *QUIET, *args)) == 0
    return json.loads(capsys.readouterr().out)


def test_once_json_shows_both_agents_and_every_target(two_agents: Any, capsys: Any) -> None:
    a, b = two_agents
    doc = _json_once(a, capsys)
    assert doc["agents"] == [{"agent": "gw-a", "online": True}, {"agent": "gw-b", "online": True}]
    got = {(t["agent"], t["target"]): (t["product"], t["online"]) for t in doc["targets"]}
    assert got == {("gw-a", "pump"): ("pump-ctrl", True), ("gw-a", "sensor"): ("sensor-node", True),
                   ("gw-b", "pump"): ("pump-ctrl", True)}
    only_b = _json_once(a, capsys, "--agent", "gw-b")
    assert [(t["agent"], t["target"]) for t in only_b["targets"]] == [("gw-b", "pump")]


def test_once_csv_has_a_header_and_one_line_per_target(two_agents: Any, capsys: Any) -> None:
    a, b = two_agents
    assert main(_fleet(a, "--csv", *QUIET, "--product", "pump-ctrl")) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["agent"], r["target"], r["product"], r["online"]) for r in rows] == [
        ("gw-a", "pump", "pump-ctrl", "true"), ("gw-b", "pump", "pump-ctrl", "true")]


def _run_in_thread(argv: list[str]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        result["rc"] = main(argv)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def test_wait_for_returns_once_every_target_of_the_product_has_it(two_agents: Any, capsys: Any) -> None:
    a, b = two_agents
    thread, result = _run_in_thread(_fleet(a, "--wait-for", "1.2.0", "--product", "pump-ctrl",
                                           "--timeout", "60", *QUIET))
    m = a.release("pump-ctrl", "1.2.0", a.image(2048))
    a.publish_release(m)
    a.command("pump", "install")
    a.wait_job("pump", "SUCCEEDED")
    assert thread.is_alive(), "must not succeed while gw-b/pump still runs the old version"
    b.command("pump", "install")
    thread.join(60)
    assert not thread.is_alive() and result["rc"] == 0
    out = capsys.readouterr()
    assert "all 2 target(s) of pump-ctrl report 1.2.0: gw-a/pump, gw-b/pump" in out.out
    assert "gw-b/pump: " in out.err  # the changes on the way, for a CI log


def test_wait_for_times_out_naming_the_stragglers(two_agents: Any, capsys: Any) -> None:
    a, b = two_agents
    rc = main(_fleet(a, "-q", "--wait-for", "9.9.9", "--product", "pump-ctrl", "--timeout", "0.5",
                     *QUIET))
    err = capsys.readouterr().err
    assert rc != 0
    assert "[wait_timeout]" in err and "2 of 2 target(s) of pump-ctrl" in err
    assert "gw-a/pump (installed" in err and "gw-b/pump (installed" in err
    assert "sensor" not in err


def test_wait_for_fails_when_no_target_of_the_product_is_seen(two_agents: Any, capsys: Any) -> None:
    a, b = two_agents
    rc = main(_fleet(a, "--wait-for", "1.0.0", "--product", "pump-ctrI", "--timeout", "0.5", *QUIET))
    err = capsys.readouterr().err
    assert rc != 0 and "[no_targets]" in err and "'pump-ctrI'" in err and "gw-a, gw-b" in err


def test_wait_for_needs_a_product(capsys: Any) -> None:
    assert main(["fleet", "--wait-for", "1.0.0"]) == 2  # refused before connecting anywhere
    assert "--product" in capsys.readouterr().err


def test_an_agent_that_stops_shows_offline(two_agents: Any, capsys: Any) -> None:
    a, b = two_agents
    mark = a.obs.mark()
    b.stop_service()
    a.obs.wait_topic(b.topics.availability, lambda m: m.payload == b"offline", after=mark)
    doc = _json_once(a, capsys)
    assert {x["agent"]: x["online"] for x in doc["agents"]} == {"gw-a": True, "gw-b": False}
    assert {(t["agent"], t["online"]) for t in doc["targets"]} == {
        ("gw-a", True), ("gw-b", False)}


def test_an_unreachable_broker_is_a_clear_error(capsys: Any) -> None:
    from mosquitto import free_port

    rc = main(["fleet", "--broker", f"127.0.0.1:{free_port()}", "--once", "--connect-timeout", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "[broker_unreachable]" in err and "cannot connect" in err


# --- live view (a real process, stopped with Ctrl-C) ------------------------------------------


def _read_until(fd: int, needle: bytes | Callable[[bytes], bool], timeout: float = 20.0) -> bytes:
    """Read fd until `needle` appears (or needle(output) holds); fail with the output on timeout."""
    done = needle if callable(needle) else lambda out: needle in out
    got = b""
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen within {timeout}s; got {got!r}")
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # pty closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"output ended before {needle!r}; got {got!r}")
            got += chunk
    return got


def _live(kit: AgentKit, stdout: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent", *_fleet(kit)], stdout=stdout,
                            stderr=subprocess.PIPE, cwd=str(REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _interrupt(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_live_view_prints_changes_as_lines_and_exits_0_on_ctrl_c(two_agents: Any) -> None:
    a, b = two_agents
    proc = _live(a, subprocess.PIPE)
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    # discovery, state and availability may come in any order; all three products must show
    _read_until(fd, lambda out: out.count(b"product=pump-ctrl") == 2 and b"product=sensor-node" in out)
    mark = a.obs.mark()
    b.stop_service()
    a.obs.wait_topic(b.topics.availability, lambda m: m.payload == b"offline", after=mark)
    _read_until(fd, b"gw-b/pump: online=False")
    assert _interrupt(proc) == 0, proc.stderr.read()  # type: ignore[union-attr]


def test_live_view_draws_a_table_on_a_terminal(two_agents: Any) -> None:
    a, b = two_agents
    master, slave = pty.openpty()
    try:
        proc = _live(a, slave)
        out = _read_until(master, b"sensor-node")
        assert b"\x1b[H\x1b[2J" in out
        for column in (b"agent", b"target", b"product", b"online", b"installed", b"progress"):
            assert column in out
        assert _interrupt(proc) == 0
    finally:
        os.close(slave)
        os.close(master)


def test_once_without_a_format_prints_the_table(two_agents: Any, capsys: Any) -> None:
    a, b = two_agents
    assert main(_fleet(a, "--once", *QUIET, "--agent", "gw-a")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["agent", "target", "product", "online", "installed", "latest",
                                "status", "phase", "progress", "error"]
    assert [line.split()[:4] for line in lines[1:]] == [["gw-a", "pump", "pump-ctrl", "yes"],
                                                        ["gw-a", "sensor", "sensor-node", "yes"]]


def _fleet_json(broker: str, capsys) -> dict:
    assert main(["fleet", "--json", "--broker", broker, "--quiet-for", "0.3"]) == 0
    out, err = capsys.readouterr()
    assert out, err
    return json.loads(out)


def test_retire_clears_a_target_then_a_stopped_agent_from_fleet_and_home_assistant(
        two_agents: tuple[AgentKit, AgentKit], capsys) -> None:
    a, b = two_agents
    broker = f"{a.broker.host}:{a.broker.port}"
    a.wait_state("sensor", lambda s: True)
    b.wait_state("pump", lambda s: True)
    rows = {(r["agent"], r["target"]) for r in _fleet_json(broker, capsys)["targets"]}
    assert {("gw-a", "sensor"), ("gw-b", "pump")} <= rows

    # a running agent must be stopped first: it would re-publish everything on reconnect
    assert main(["retire", "--agent", "gw-b", "--broker", broker, "--quiet-for", "0.3"]) == 2
    assert "[agent_online]" in capsys.readouterr().err
    b.stop_service()
    assert main(["retire", "--agent", "gw-b", "--broker", broker, "--quiet-for", "0.3"]) == 0
    assert "retired gw-b: cleared 4 retained topics (pump, availability)" in capsys.readouterr().out
    # one target of a running agent (gone from its config): only that target's topics
    a.stop_service()  # the sensor would be re-announced by this agent, whose config still has it
    assert main(["retire", "--agent", "gw-a", "--target", "sensor", "--broker", broker,
                 "--quiet-for", "0.3"]) == 0
    assert "retired gw-a/sensor: cleared 3 retained topics" in capsys.readouterr().out
    doc = _fleet_json(broker, capsys)
    assert {(r["agent"], r["target"]) for r in doc["targets"]} == {("gw-a", "pump")}
    assert [x["agent"] for x in doc["agents"]] == ["gw-a"]
    for topic in (b.topics.discovery("pump"), b.topics.availability, a.topics.state("sensor"),
                  a.topics.discovery("sensor")):
        with pytest.raises(TimeoutError):
            a.retained(topic, timeout=0.5)  # nothing retained any more
