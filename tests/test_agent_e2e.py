"""The agent end to end, as a user runs it: real mosquitto, real HTTP, simulated STM32s.

Releases and commands go in as raw MQTT (what mosquitto_pub would send) or through the
`stm32ota sign/publish` commands; everything is asserted on what the agent published and on
the simulated chip's flash.
"""

from __future__ import annotations

import json
import time
import logging
import signal
import subprocess
import sys

import pytest

from agent.ota import manifest as mf
from agentkit import FLASH_START, REPO, AgentKit, assert_ha_state

STATUS_ORDER = ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]


@pytest.fixture
def kit(tmp_path):
    """A started AgentKit (broker, HTTP server, observer); the test adds targets."""
    with AgentKit(tmp_path) as k:
        yield k


def _run_job(kit: AgentKit, target: str, job_id: str) -> list[dict]:
    return [j for j in kit.jobs(target) if j["job_id"] == job_id]


def _assert_clean_job(kit: AgentKit, target: str, job: dict) -> None:
    """One job's documents: QUEUED -> IN_PROGRESS ... -> SUCCEEDED, percent 0..100 monotonic,
    one event per status change."""
    docs = _run_job(kit, target, job["job_id"])
    statuses = [d["status"] for d in docs]
    assert [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s] == STATUS_ORDER
    percents = [d["percent"] for d in docs]
    assert percents[0] == 0 and percents[-1] == 100
    assert percents == sorted(percents), percents
    phases = [d["phase"] for d in docs if d["status"] == "IN_PROGRESS"]
    for phase in ("download", "verify_image", "enter_bootloader", "erase", "write", "verify",
                  "start"):
        assert phase in phases, (phase, phases)
    kit.obs.wait(lambda _: len([e for e in kit.events(target)
                                if e["job_id"] == job["job_id"]]) >= 3, what="3 events")
    events = [e for e in kit.events(target) if e["job_id"] == job["job_id"]]
    assert [e["event_type"] for e in events] == ["queued", "in_progress", "succeeded"]


def test_install_on_uart_and_i2c_targets(kit: AgentKit, caplog) -> None:
    caplog.set_level(logging.INFO, logger="agent.ota.updater")
    pump = kit.uart_target("pump", product="pump-ctrl")
    sensor = kit.i2c_target("sensor", product="sensor-node")
    kit.start_service()
    fw_pump, fw_sensor = kit.image(5000, seed=1), kit.image(3000, seed=2)
    m_pump = kit.release("pump-ctrl", "1.2.0", fw_pump, title="Pump controller",
                         release_summary="Faster valves", release_url="https://example.org/1.2.0")
    m_sensor = kit.release("sensor-node", "2.0.0", fw_sensor)
    kit.publish_release(m_pump)
    kit.publish_release(m_sensor)
    kit.wait_state("pump", lambda s: s["latest_version"] == "1.2.0")
    kit.wait_state("sensor", lambda s: s["latest_version"] == "2.0.0")
    mark = kit.obs.mark()
    kit.command("pump", "install")
    kit.command("sensor", "install")
    job_p = kit.wait_job("pump", after=mark)
    job_s = kit.wait_job("sensor", after=mark)
    assert job_p["status"] == job_s["status"] == "SUCCEEDED", (job_p, job_s)
    assert job_p["to_version"] == "1.2.0" and job_p["error"] is None

    assert pump.flash_bytes(FLASH_START, len(fw_pump)) == fw_pump
    assert sensor.flash_bytes(FLASH_START, len(fw_sensor)) == fw_sensor
    assert "pump: queued (nothing installed) -> 1.2.0 (command)" in caplog.messages
    _assert_clean_job(kit, "pump", job_p)
    _assert_clean_job(kit, "sensor", job_s)

    final = kit.wait_state("pump", lambda s: s["installed_version"] == "1.2.0", after=mark)
    assert final == {"installed_version": "1.2.0", "latest_version": "1.2.0",
                     "title": "Pump controller", "release_summary": "Faster valves",
                     "release_url": "https://example.org/1.2.0", "in_progress": False,
                     "update_percentage": None}
    running = [s for s in kit.states("pump") if s["in_progress"]]
    assert running and all(s["update_percentage"] is not None for s in running)
    for name in ("pump", "sensor"):
        for doc in kit.states(name):
            assert_ha_state(doc)

    # installed versions survive a restart of the agent
    kit.stop_service()
    mark = kit.obs.mark()
    kit.start_service()
    s = kit.wait_state("sensor", lambda s: True, after=mark)
    assert s["installed_version"] == "2.0.0" and s["in_progress"] is False
    assert kit.wait_state("pump", lambda s: True, after=mark)["installed_version"] == "1.2.0"


def test_discovery_payloads_and_home_assistant_restart(kit: AgentKit) -> None:
    kit.uart_target("pump")
    kit.start_service()
    topic = kit.topics.discovery("pump")
    doc = kit.obs.wait_topic(topic).json()
    assert doc["device"]["identifiers"] and doc["device"]["name"]
    assert doc["availability_topic"] == kit.topics.availability
    comps = doc["components"]
    platforms = sorted(c["platform"] for c in comps.values())
    assert platforms == ["button", "event", "sensor", "update"]
    assert len({c["unique_id"] for c in comps.values()}) == 4
    upd = next(c for c in comps.values() if c["platform"] == "update")
    assert upd["state_topic"] == kit.topics.state("pump")
    assert upd["command_topic"] == kit.topics.cmd("pump")
    assert upd["payload_install"] == "install" and upd["device_class"] == "firmware"
    button = next(c for c in comps.values() if c["platform"] == "button")
    assert button["command_topic"] == kit.topics.cmd("pump") and button["payload_press"] == "abort"
    for c in comps.values():
        assert c["unique_id"] and ("state_topic" in c or "command_topic" in c)
    assert kit.retained(topic).json() == doc

    mark = kit.obs.mark()
    kit.publish(kit.topics.ha_status, "online")
    again = kit.obs.wait_topic(topic, after=mark)
    assert again.json() == doc
    kit.obs.wait_topic(kit.topics.state("pump"), after=mark)  # state re-sent too


def test_auto_install_respects_rollout(kit: AgentKit) -> None:
    pump = kit.uart_target("pump", auto_install=True)
    kit.start_service()
    fw = kit.image(2000, seed=3)
    # a 0 % rollout selects nobody: announced, not installed
    m0 = kit.release("pump-ctrl", "1.0.0", fw, rollout=0)
    kit.publish_release(m0)
    kit.wait_state("pump", lambda s: s["latest_version"] == "1.0.0")
    assert not pump.touched() and not kit.jobs("pump")
    mark = kit.obs.mark()
    m1 = kit.release("pump-ctrl", "1.1.0", fw, rollout=100)
    kit.publish_release(m1)
    job = kit.wait_job("pump", after=mark)
    assert job["status"] == "SUCCEEDED" and job["to_version"] == "1.1.0"
    assert pump.flash_bytes(FLASH_START, len(fw)) == fw


def test_group_fleet_and_direct_manifest_commands(kit: AgentKit) -> None:
    a = kit.uart_target("a", groups=("cellar",))
    b = kit.i2c_target("b", product="pump-ctrl", groups=("attic",))
    kit.start_service()
    fw1, fw2, fw3 = (kit.image(1500, seed=s) for s in (4, 5, 6))
    kit.publish_release(kit.release("pump-ctrl", "1.0.0", fw1))
    kit.wait_state("a", lambda s: s["latest_version"] == "1.0.0")

    mark = kit.obs.mark()
    kit.group_command("cellar", "install")
    assert kit.wait_job("a", after=mark)["status"] == "SUCCEEDED"
    assert a.flash_bytes(FLASH_START, len(fw1)) == fw1 and not b.touched()

    mark = kit.obs.mark()
    kit.publish_release(kit.release("pump-ctrl", "2.0.0", fw2))
    kit.fleet_command("install")
    assert kit.wait_job("a", after=mark)["to_version"] == "2.0.0"
    assert kit.wait_job("b", after=mark)["status"] == "SUCCEEDED"
    assert a.flash_bytes(FLASH_START, len(fw2)) == fw2 == b.flash_bytes(FLASH_START, len(fw2))

    mark = kit.obs.mark()
    direct = kit.release("pump-ctrl", "2.1.0", fw3)
    kit.command("b", {"op": "install", "manifest": direct})
    job = kit.wait_job("b", after=mark)
    assert job["status"] == "SUCCEEDED" and job["to_version"] == "2.1.0"
    assert b.flash_bytes(FLASH_START, len(fw3)) == fw3
    assert a.flash_bytes(FLASH_START, len(fw2)) == fw2  # the other target kept its image
    # past the announced 2.0.0: Home Assistant must not be told that 2.0.0 is the latest
    state = kit.wait_settled("b", job)
    assert (state["installed_version"], state["latest_version"]) == ("2.1.0", "2.1.0"), state


def test_a_group_two_targets_share_delivers_each_command_once(kit: AgentKit) -> None:
    """One subscription per topic filter: a command to a group that two targets share is
    handled once, so a bad one is refused once per target, not twice."""
    kit.uart_target("a", groups=("cellar",))
    kit.i2c_target("b", product="pump-ctrl", groups=("cellar", "attic"))
    kit.start_service()
    mark = kit.obs.mark()
    kit.group_command("cellar", "reboot")
    kit.group_command("cellar", "check")  # handled after every copy of the bad one
    for name in ("a", "b"):
        topic = kit.topics.state(name)
        # one state with the refusal (no job is open, so it is retained), one from `check`
        kit.obs.wait(lambda msgs: len([m for m in msgs[mark:] if m.topic == topic]) >= 2, 20,
                     f"the state `check` re-announces for {name}")
        refused = [m.json() for m in kit.obs.messages[mark:]
                   if m.topic == kit.topics.events(name) and m.json()["status"] == "REJECTED"]
        assert [e["error"]["code"] for e in refused] == ["bad_command"], (name, refused)


def test_a_fleet_install_of_one_product_leaves_other_products_alone(kit: AgentKit) -> None:
    pump = kit.uart_target("pump")  # pump-ctrl
    sensor = kit.i2c_target("sensor")  # sensor-node
    kit.start_service()
    fw = kit.image(1500, seed=9)
    before = len(kit.jobs("sensor"))
    mark = kit.obs.mark()
    kit.fleet_command({"op": "install", "manifest": kit.release("pump-ctrl", "1.0.0", fw)})
    assert kit.wait_job("pump", after=mark)["status"] == "SUCCEEDED"
    assert pump.flash_bytes(FLASH_START, len(fw)) == fw
    # not for it: no REJECTED record replacing the sensor's last job, and the chip untouched
    assert len(kit.jobs("sensor")) == before and not sensor.touched()


def test_check_re_announces_state_even_before_any_job(kit: AgentKit) -> None:
    kit.uart_target("pump")
    kit.start_service()
    mark = kit.obs.mark()
    kit.command("pump", "check")
    state = kit.obs.wait_topic(kit.topics.state("pump"), after=mark).json()
    assert state["installed_version"] == "unknown" and state["in_progress"] is False
    assert not kit.obs.on(kit.topics.job("pump"))  # no job was invented


def test_keygen_sign_publish_commands_into_the_running_agent(kit: AgentKit, tmp_path) -> None:
    from agent.cli import main

    assert main(["keygen", "--out", str(tmp_path / "ci")]) == 0
    kit.trust["keys"].append(str(tmp_path / "ci.pub"))
    pump = kit.uart_target("pump")
    kit.start_service()
    fw = kit.image(4000, seed=7)
    (tmp_path / "fw.bin").write_bytes(fw)
    kit.http.files["/fw.bin"] = fw
    out = tmp_path / "fw.json"
    assert main(["sign", str(tmp_path / "fw.bin"), "--key", str(tmp_path / "ci.key"),
                 "--product", "pump-ctrl", "--version", "1.2.0", "--url", kit.http.url("/fw.bin"),
                 "--chip", "0x435", "-o", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["size"] == len(fw) and m["signature"]["key_id"]
    broker = f"127.0.0.1:{kit.broker.port}"
    assert main(["publish", str(out), "--broker", broker]) == 0
    assert kit.retained(kit.topics.release("pump-ctrl")).json() == m
    kit.wait_state("pump", lambda s: s["latest_version"] == "1.2.0")
    mark = kit.obs.mark()
    assert main(["publish", str(out), "--broker", broker, "--target", f"{kit.agent_id}/pump"]) == 0
    assert kit.wait_job("pump", after=mark)["status"] == "SUCCEEDED"
    assert pump.flash_bytes(FLASH_START, len(fw)) == fw


def test_publish_fleet_with_a_spread_starts_each_target_at_its_own_offset(
        kit: AgentKit, tmp_path) -> None:
    """`publish --fleet --spread 3s`: each target queues its job no earlier than its fixed
    offset in the window; an abort sent meanwhile cancels the start it replaces."""
    from agent.cli import main
    from agent.mqtt.timing import spread_offset

    a, b = kit.uart_target("a"), kit.i2c_target("b", product="pump-ctrl")
    c = kit.uart_target("c")
    kit.start_service()
    fw = kit.image(1500, seed=9)
    (tmp_path / "m.json").write_text(json.dumps(kit.release("pump-ctrl", "3.0.0", fw)))
    mark = kit.obs.mark()
    sent = time.monotonic()
    assert main(["publish", str(tmp_path / "m.json"), "--broker", f"127.0.0.1:{kit.broker.port}",
                 "--fleet", "--spread", "3s"]) == 0
    kit.command("c", "abort")  # before c's offset, most likely; then c never starts
    for name, sim in (("a", a), ("b", b)):
        job = kit.wait_job(name, "SUCCEEDED", after=mark)
        assert job["to_version"] == "3.0.0" and sim.flash_bytes(FLASH_START, len(fw)) == fw
        queued = [m for m in kit.obs.messages[mark:] if m.topic == kit.topics.job(name)
                  and m.payload and m.json().get("status") == "QUEUED"]
        assert queued and queued[0].at - sent >= spread_offset(kit.agent_id, name, 3.0) - 0.05
    if spread_offset(kit.agent_id, "c", 3.0) > 0.5:  # the abort surely came first
        assert not c.touched()


def test_subprocess_agent_installs_and_leaves_a_last_will(kit: AgentKit) -> None:
    pump = kit.uart_target("pump", pins="none")
    proc = kit.start_process()
    avail = kit.obs.on(kit.topics.availability)
    assert avail[-1].payload == b"online"
    fw = kit.image(2500, seed=8)
    kit.publish_release(kit.release("pump-ctrl", "3.0.0", fw))
    kit.wait_state("pump", lambda s: s["latest_version"] == "3.0.0")
    mark = kit.obs.mark()
    kit.command("pump", "install")
    job = kit.wait_job("pump", after=mark)
    assert job["status"] == "SUCCEEDED", (job, kit.agent_log())
    assert pump.flash_bytes(FLASH_START, len(fw)) == fw

    mark = kit.obs.mark()
    proc.kill()
    proc.wait(10)
    kit.obs.wait_topic(kit.topics.availability, lambda m: m.payload == b"offline", after=mark,
                       timeout=30)
    kit.proc = None


def test_check_config_on_the_repository_example(tmp_path) -> None:
    from test_config_startup import deployed_example

    example = deployed_example(tmp_path)
    r = subprocess.run([sys.executable, "-m", "agent", "check-config", str(example)],
                       capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout and "warning" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "agent", "check-config", "--config",
                        str(example)], capture_output=True, text=True,
                       cwd=str(REPO), timeout=60)  # like `run --config`
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_check_config_names_each_mistake_with_its_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: {id: gw-01}\n"
                   "mqtt: {host: x, prot: 1883}\n"
                   "trust: {keys: [release.pub]}\n"
                   "targets:\n"
                   "  - name: pump\n"
                   "    product: p\n"
                   "    link: {type: i2c, bus: 1}\n"
                   "    pins: {backend: none}\n")
    r = subprocess.run([sys.executable, "-m", "agent", "check-config", str(bad)],
                       capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert r.returncode == 2
    assert "mqtt.prot (line 2)" in r.stdout and "did you mean 'port'" in r.stdout
    assert "targets[0].link.address (line 7)" in r.stdout and "0x48" in r.stdout


def test_manifest_signed_by_kit_round_trips(kit: AgentKit) -> None:
    """The kit's releases are what `verify_manifest` accepts (guards the other tests)."""
    from agent.ota.keys import load_public_key, verify_manifest

    m = mf.parse_manifest(kit.release("pump-ctrl", "1.0.0", b"\x00" * 16))
    verify_manifest(m, (load_public_key(kit.pub),))


@pytest.mark.parametrize("flags,level", [([], logging.DEBUG), (["-q"], logging.ERROR),
                                         (["-v"], logging.ERROR)])
def test_run_logs_at_the_configs_level_unless_the_command_line_says(
        tmp_path, monkeypatch, flags: list, level: int) -> None:
    """`agent.log_level` applies at a terminal as under systemd; -v / -q override it."""
    import agent.cli.agent
    from agent.cli import main
    from agent.ota.keys import keygen

    class NoService:
        def __init__(self, *args: object) -> None: ...
        def start(self) -> None: ...
        def run_forever(self) -> None: ...

    keygen(tmp_path / "release")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"agent: {{id: gw-01, log_level: debug, state_dir: {tmp_path}/s, "
                   f"cache_dir: {tmp_path}/c}}\n"
                   "mqtt: {host: 127.0.0.1}\n"
                   f"trust: {{keys: [{tmp_path}/release.pub]}}\n"
                   "targets:\n"
                   "  - {name: pump, product: p, link: {type: i2c, bus: 1, address: 0x48},\n"
                   "     pins: {backend: none}}\n")
    monkeypatch.setattr(agent.cli.agent, "Service", NoService)  # where `run` finds it
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # keep pytest's own handlers
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.ERROR)  # what the flags set, or restored after
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert main([*flags, "run", "--config", str(cfg)]) == 0
    assert root.level == level
