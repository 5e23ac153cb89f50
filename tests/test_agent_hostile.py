"""Issue 9: what a hostile tester found, each as a regression test against the running agent.

Real mosquitto, real HTTP server, simulated L432s on ptys; commands sent as raw MQTT.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.ota import jobs as jobstore
from agentkit import FLASH_START, TERMINAL, AgentKit, Observer

# the subprocess-agent helpers (and the `kit` fixture) of the SIGKILL tests
from test_agent_process import (_retained, _slow, _terminal_events, _wait_phase,  # noqa: E402
                                kit)

__all__ = ["kit"]  # a fixture: pytest finds it in this module's namespace


def test_refusals_during_an_install_keep_its_record_and_a_sigkill_still_recovers(
        kit: AgentKit) -> None:
    """Defect 1, the issue's reproduction: install, phase write, garbage on the cmd topic,
    a second install (busy), kill -9, restart: the job resumes and ends exactly once."""
    pump = kit.uart_target("pump", pins="none")
    data = kit.image(12 * 1024, seed=3)
    m = kit.release("pump-ctrl", "1.1.0", data, path="/fw.bin")
    other = kit.release("pump-ctrl", "1.2.0", kit.image(4096, seed=4), path="/other.bin")
    kit.start_process()
    _slow(pump)
    kit.command("pump", {"op": "install", "manifest": m})
    job = _wait_phase(kit, "pump", "write")
    for payload, code in ((b"garbage", "bad_command"),
                          ({"op": "install", "manifest": other}, "busy")):
        mark = kit.obs.mark()
        kit.command("pump", payload)
        refused = kit.wait_job("pump", "REJECTED", after=mark)
        assert refused["error"]["code"] == code and refused["job_id"] != job["job_id"]
        kept = _retained(kit, kit.topics.job("pump"))
        assert (kept["job_id"], kept["status"]) == (job["job_id"], "IN_PROGRESS"), kept
    assert _retained(kit, kit.topics.state("pump"))["in_progress"] is True
    kit.stop_process(kill=True)
    assert pump.flash_bytes(FLASH_START, len(data)) != data, "killed before the write ended"

    pump.sim.realtime = False
    kit.start_process()
    done = kit.obs.wait_topic(kit.topics.job("pump"), lambda m: bool(m.payload)
                              and m.json()["job_id"] == job["job_id"]
                              and m.json()["status"] in TERMINAL, timeout=30).json()
    assert done["status"] == "SUCCEEDED", kit.agent_log()[-3000:]
    assert pump.flash_bytes(FLASH_START, len(data)) == data
    kit.obs.wait(lambda _: _terminal_events(kit, "pump", job["job_id"]), what="terminal event")
    time.sleep(0.3)  # a duplicate would follow at once
    assert _terminal_events(kit, "pump", job["job_id"]) == ["SUCCEEDED"]
    assert not any(d["status"] == "QUEUED" and d["to_version"] == "1.2.0"
                   for d in kit.jobs("pump")), "the refused install was never queued"
    assert "Traceback" not in kit.agent_log()


def test_abort_still_works_after_a_refusal_during_the_install(kit: AgentKit) -> None:
    pump = kit.uart_target("pump")
    m = kit.release("pump-ctrl", "1.1.0", kit.image(12 * 1024, seed=5))
    kit.start_service()
    _slow(pump)
    kit.command("pump", {"op": "install", "manifest": m})
    job = _wait_phase(kit, "pump", "write")
    kit.command("pump", "install now please")
    kit.command("pump", "abort")
    end = kit.obs.wait_topic(kit.topics.job("pump"), lambda m: bool(m.payload)
                             and m.json()["job_id"] == job["job_id"]
                             and m.json()["status"] in TERMINAL).json()
    assert end["status"] == "CANCELED", end
    assert _retained(kit, kit.topics.job("pump"))["job_id"] == job["job_id"]


def test_one_bad_group_message_gives_one_rejection_per_target(kit: AgentKit) -> None:
    """Defect 3: the group topic is subscribed once, so 3 members give 3 rejections, not 9."""
    names = ("a", "b", "c")
    for name in names:
        kit.uart_target(name, groups=("cellar",))
    kit.start_service()
    mark = kit.obs.mark()
    kit.group_command("cellar", "garbage")
    for name in names:
        kit.wait_job(name, "REJECTED", after=mark)
    time.sleep(0.5)  # extra copies would arrive right behind the first ones
    rejected = [m for m in kit.obs.messages[mark:]
                if m.topic.endswith("/events") and m.json()["status"] == "REJECTED"]
    assert sorted(m.topic.split("/")[2] for m in rejected) == sorted(names)


def test_a_retained_install_is_ignored_also_when_it_arrives_live(kit: AgentKit, caplog) -> None:
    """Defect 8: MQTT clears the retain flag for live delivery unless the subscription asks
    for Retain As Published; the agent does, so a retained command never runs."""
    caplog.set_level(logging.INFO)
    pump = kit.uart_target("pump")
    kit.publish_release(kit.release("pump-ctrl", "1.0.0", kit.image(2048, seed=6)))
    kit.start_service()
    kit.command("pump", "install", retain=True)
    mark = kit.obs.mark()
    kit.command("pump", "bogus")  # handled after the retained one: one queue, in order
    assert kit.wait_job("pump", after=mark)["error"]["code"] == "bad_command"
    assert [j["status"] for j in kit.jobs("pump")] == ["REJECTED"]
    assert "ignoring a retained command" in caplog.text
    assert pump.touched() == []
    kit.command("pump", b"", retain=True)  # clear it


class _Counting:
    """Counts every state-file write (the atomic writer fsyncs each one)."""

    def __init__(self, real: Any) -> None:
        self.real, self.writes = real, []  # type: ignore[var-annotated]

    def __call__(self, path: Path, data: Any, *rest: Any) -> None:
        self.writes.append((Path(path), data))
        self.real(path, data, *rest)  # (the disk layer, where the store passes one)


def _flood(host: str, port: int, topics: list[str], n: int, middle: tuple[str, bytes]) -> None:
    """n garbage messages spread over `topics` at QoS 1, `middle` halfway, as fast as paho goes."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{os.getpid()}")
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.connect(host, port)
    c.loop_start()
    try:
        last = None
        for i in range(n):
            if i == n // 2:
                c.publish(*middle, qos=1)
            last = c.publish(topics[i % len(topics)], b"garbage %d" % i, qos=1)
        last.wait_for_publish(60)
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_flood_writes_nothing_and_the_real_install_in_it_runs(kit: AgentKit,
                                                               monkeypatch) -> None:
    """Defect 6: 3,000 garbage messages on the target's own and the fleet topic with one real
    install in the middle: the install runs, refusals write no file and are rate-limited."""
    counting = _Counting(jobstore.write_json_atomic)
    monkeypatch.setattr(jobstore, "write_json_atomic", counting)
    pump = kit.uart_target("pump")
    data = kit.image(2048, seed=7)
    m = kit.release("pump-ctrl", "1.0.0", data)
    svc = kit.start_service()
    own = kit.topics.cmd("pump")
    mark = kit.obs.mark()
    _flood(kit.broker.host, kit.broker.port, [own, kit.topics.fleet_cmd], 3000,
           (own, b'{"op": "install", "manifest": %s}' % json.dumps(m).encode()))
    done = kit.wait_job("pump", "SUCCEEDED", after=mark, timeout=60)
    assert pump.flash_bytes(FLASH_START, len(data)) == data
    written = [(p.parent.name, d.get("job_id")) for p, d in counting.writes]
    assert written and all(w in (("jobs", done["job_id"]), ("installed", None))
                           for w in written), written
    refusals = [j for j in kit.jobs("pump") if j["status"] == "REJECTED"]
    limit = svc.limit
    assert 0 < len(refusals) <= 2 * (limit.burst + 60 * limit.rate), len(refusals)


def test_the_inbox_keeps_room_for_own_commands_while_a_flood_fills_its_share(
        kit: AgentKit) -> None:
    """With the dispatcher held up, a fleet-topic flood fills only its share of the inbox:
    the target's command still gets in and is carried out."""
    pump = kit.uart_target("pump")
    kit.publish_release(kit.release("pump-ctrl", "1.0.0", kit.image(2048, seed=8)))
    svc = kit.start_service()
    kit.wait_state("pump", lambda s: s["latest_version"] == "1.0.0")
    gate = threading.Event()
    real = svc.handle
    svc.handle = lambda *a: (gate.wait(30), real(*a))  # type: ignore[method-assign]
    fleet = Observer(kit.broker.host, kit.broker.port, topics=("unused/x",))
    try:
        for i in range(svc.inbox.size + 50):
            fleet.publish(kit.topics.fleet_cmd, b"junk %d" % i)
        mark = kit.obs.mark()
        kit.command("pump", "install")
    finally:
        fleet.close()
    time.sleep(0.3)
    gate.set()
    job = kit.wait_job("pump", "SUCCEEDED", after=mark, timeout=60)
    assert job["to_version"] == "1.0.0" and pump.touched()
