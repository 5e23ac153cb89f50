"""The whole agent under faults (safety rules 5 and 6): SIGKILL, SIGTERM, broker and HTTP outages.

The agent runs as a real subprocess (`python -m agent run`) or an in-process Service, against a
UART simulator on a pty owned by this test process, a real mosquitto and a real HTTP server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
from agentkit import FLASH_START, AgentKit, Observer, SimTarget
from httpserver import Behaviour

IMAGE_SIZE = 12 * 1024  # at 115200 baud in realtime, the write phase lasts about a second
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED")


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[AgentKit]:
    """Broker, HTTP server, key and observer; everything stopped afterwards."""
    with AgentKit(tmp_path) as k:
        yield k


def _slow(t: SimTarget) -> None:
    """Make the simulator take real line and flash time, so a kill can land mid-write."""
    t.sim.realtime = True
    t.sim.baud = 115200


def _fast(t: SimTarget) -> None:
    t.sim.realtime = False


def _terminal_events(kit: AgentKit, target: str, job_id: str) -> list[str]:
    return [e["status"] for e in kit.events(target)
            if e.get("job_id") == job_id and e.get("status") in TERMINAL]


def _gets(kit: AgentKit, path: str) -> list:
    return [r for r in kit.http.requests if r.method == "GET" and r.path == path]


def _wait_phase(kit: AgentKit, target: str, phase: str, after: int = 0) -> dict:
    msg = kit.obs.wait_topic(kit.topics.job(target),
                             lambda m: bool(m.payload) and m.json().get("phase") == phase
                             and m.json().get("status") == "IN_PROGRESS", after=after)
    return msg.json()


def _retained(kit: AgentKit, topic: str) -> dict:
    """What a client connecting now gets as the retained message of `topic`."""
    fresh = Observer(kit.broker.host, kit.broker.port, topics=(topic,))
    try:
        return fresh.wait_topic(topic, lambda m: m.retain and bool(m.payload), timeout=10).json()
    finally:
        fresh.close()


def _assert_recovered(kit: AgentKit, pump: SimTarget, job_id: str, data: bytes) -> None:
    done = kit.obs.wait_topic(kit.topics.job("pump"), lambda m: bool(m.payload) and
                              m.json()["job_id"] == job_id and m.json()["status"] in TERMINAL,
                              timeout=30).json()
    assert done["status"] == "SUCCEEDED", (done, kit.agent_log()[-3000:])
    assert pump.flash_bytes(FLASH_START, len(data)) == data
    kit.obs.wait(lambda _: _terminal_events(kit, "pump", job_id), what="the terminal event")
    time.sleep(0.3)  # a duplicate would be published right after the first
    assert _terminal_events(kit, "pump", job_id) == ["SUCCEEDED"], kit.events("pump")
    state = kit.wait_state("pump", lambda s: s["in_progress"] is False
                           and s["installed_version"] == "1.1.0")
    assert state["update_percentage"] is None
    assert _retained(kit, kit.topics.state("pump"))["in_progress"] is False
    assert _retained(kit, kit.topics.job("pump"))["status"] == "SUCCEEDED"


def test_sigkill_during_write_is_repeated_from_the_cache_after_a_restart(kit: AgentKit) -> None:
    pump = kit.uart_target("pump", pins="none")
    data = kit.image(IMAGE_SIZE, seed=3)
    m = kit.release("pump-ctrl", "1.1.0", data, path="/fw.bin")
    kit.start_process()
    _slow(pump)
    kit.command("pump", {"op": "install", "manifest": m})
    job = _wait_phase(kit, "pump", "write")
    kit.stop_process(kill=True)
    written = pump.flash_bytes(FLASH_START, len(data))
    assert written != data, "the kill must land before the write finished"
    assert len(_gets(kit, "/fw.bin")) == 1

    _fast(pump)
    kit.start_process()
    _assert_recovered(kit, pump, job["job_id"], data)
    assert len(_gets(kit, "/fw.bin")) == 1, "the repeat must use the verified cached image"


def test_sigkill_between_download_and_flash_is_finished_after_a_restart(kit: AgentKit) -> None:
    pump = kit.uart_target("pump", pins="none")
    pump.sim.flash[:8] = bytes.fromhex("0030002009000008")
    pump.sim.set_line("boot0", False)
    pump.sim.power_cycle()  # running its application: the bootloader does not answer
    assert pump.sim.mode == "application"
    data = kit.image(4096, seed=4)
    m = kit.release("pump-ctrl", "1.1.0", data, path="/fw.bin")
    kit.start_process()
    kit.command("pump", {"op": "install", "manifest": m})
    job = _wait_phase(kit, "pump", "enter_bootloader")
    kit.stop_process(kill=True)
    assert pump.touched() == []

    pump.sim.reset(boot0=True)  # someone put the chip in bootloader mode by hand
    kit.start_process()
    _assert_recovered(kit, pump, job["job_id"], data)
    assert len(_gets(kit, "/fw.bin")) == 1


def test_sigterm_during_a_flash_leaves_the_job_open_for_the_next_start(kit: AgentKit) -> None:
    pump = kit.uart_target("pump", pins="none")
    data = kit.image(IMAGE_SIZE, seed=5)
    m = kit.release("pump-ctrl", "1.1.0", data, path="/fw.bin")
    kit.start_process()
    _slow(pump)
    kit.command("pump", {"op": "install", "manifest": m})
    job = _wait_phase(kit, "pump", "write")
    assert kit.stop_process() == 0, kit.agent_log()[-3000:]
    assert not any(d["status"] in TERMINAL for d in kit.jobs("pump")), "stop is not an abort"
    # while the agent is offline nothing progresses, and the chip holds no verified version
    state = kit.retained(kit.topics.state("pump")).json()
    assert state["in_progress"] is False and state["update_percentage"] is None
    assert state["installed_version"] == "unknown" and state["latest_version"] == "1.1.0"

    _fast(pump)
    kit.start_process()
    _assert_recovered(kit, pump, job["job_id"], data)


def test_a_broker_restart_mid_flash_does_not_stop_it_and_the_result_is_retained(
        kit: AgentKit) -> None:
    pump = kit.uart_target("pump")
    data = kit.image(IMAGE_SIZE, seed=6)
    m = kit.release("pump-ctrl", "1.1.0", data, path="/fw.bin")
    kit.start_service()
    _slow(pump)
    kit.command("pump", {"op": "install", "manifest": m})
    job = _wait_phase(kit, "pump", "write")
    kit.broker.restart()  # all sessions and retained messages are gone
    # Events are not retained: only a subscriber present when the agent sends them sees them.
    late = Observer(kit.broker.host, kit.broker.port, topics=(kit.topics.events("pump"),))
    try:
        assert pump.flash_bytes(FLASH_START, len(data)) != data, "the restart must land mid-flash"
        _fast(pump)
        done = kit.obs.wait_topic(kit.topics.job("pump"), lambda m: bool(m.payload) and
                                  m.json()["status"] in TERMINAL, timeout=30).json()
        assert done["job_id"] == job["job_id"] and done["status"] == "SUCCEEDED", done
        assert pump.flash_bytes(FLASH_START, len(data)) == data
        late.wait_topic(kit.topics.events("pump"), lambda m: m.json()["status"] == "SUCCEEDED")
        time.sleep(0.3)  # a duplicate would follow right away
        ends = [m.json()["status"] for m in late.on(kit.topics.events("pump"))
                if m.json()["status"] in TERMINAL]
        assert ends == ["SUCCEEDED"]
    finally:
        late.close()
    kit.wait_state("pump", lambda s: s["in_progress"] is False and s["installed_version"] == "1.1.0")
    assert _retained(kit, kit.topics.state("pump"))["in_progress"] is False
    assert _retained(kit, kit.topics.job("pump"))["status"] == "SUCCEEDED"


@pytest.mark.parametrize("second", [Behaviour(), Behaviour(honour_range=False)],
                         ids=["resumed", "range-ignored"])
def test_a_truncated_download_is_completed_and_flashed(kit: AgentKit, second: Behaviour) -> None:
    sensor = kit.i2c_target("sensor")
    data = kit.image(72_000, seed=7)
    m = kit.release("sensor-node", "1.1.0", data, path="/fw.bin")
    kit.http.queue(Behaviour(truncate_after=68_000), second)
    kit.start_service()
    kit.command("sensor", {"op": "install", "manifest": m})
    done = kit.wait_job("sensor", *TERMINAL)
    assert done["status"] == "SUCCEEDED", done
    assert sensor.flash_bytes(FLASH_START, len(data)) == data
    gets = _gets(kit, "/fw.bin")
    assert len(gets) == 2
    start = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 68_000  # asked to resume; the range-ignoring server sent it all again


def test_starting_the_service_never_resets_a_running_mcu(kit: AgentKit) -> None:
    pump = kit.uart_target("pump")  # mock pins driving the simulator's NRST/BOOT0
    pump.sim.flash[:8] = bytes.fromhex("0030002009000008")
    pump.sim.set_line("boot0", False)
    pump.sim.power_cycle()
    assert pump.sim.mode == "application"
    before = list(pump.sim.events)
    kit.start_service()
    kit.wait_state("pump", lambda s: s["in_progress"] is False)
    kit.stop_service()
    kit.start_service()  # and a restart
    time.sleep(0.2)
    assert pump.sim.mode == "application" and pump.sim.events == before


def test_two_agents_with_one_id_get_a_clear_error_naming_it(tmp_path: Path) -> None:
    """A cloned gateway: each agent's connect throws the other's out. mosquitto 2.0.11 sends
    no DISCONNECT 0x8E, so the error comes from the pattern of young dropped connections."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with AgentKit(tmp_path / "a", agent_id="raspberrypi") as first:
        clone = AgentKit(tmp_path / "b", agent_id="raspberrypi")
        clone.broker.close()
        clone.broker = first.broker  # one broker: start() on a running broker does nothing
        clone.start()
        try:
            first.uart_target("pump")
            clone.uart_target("pump")
            first.start_process()
            clone.start_service(wait_online=False)
            deadline = time.monotonic() + 30
            while "share one agent.id" not in first.agent_log() and time.monotonic() < deadline:
                time.sleep(0.2)
            log = first.agent_log()
            assert "another MQTT client uses the client id 'stm32ota-raspberrypi'" in log, log[-3000:]
            assert "give each gateway its own agent.id" in log
        finally:
            clone.stop_service()
            first.stop_process()
            clone.broker = type("NoBroker", (), {"close": lambda self: None})()
            clone.close()
