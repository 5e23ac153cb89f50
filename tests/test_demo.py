"""`stm32ota demo` as a newcomer runs it: one command, a whole signed update, verified flash.

The demo runs as a subprocess (`python -m agent demo`) exactly as `make demo` starts it; what it
claims is checked independently: the flash dumps it writes are compared here with the 1.1.0
images it served, and a real mosquitto holds the retained state it left behind.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.flasher import image as firmware
from agent.mqtt.client import MqttClient
from mosquitto import Mosquitto

REPO = Path(__file__).resolve().parents[1]
FLASH_BASE = 0x08000000  # RM0394: main flash of the L432 the demo simulates
IMAGES = {"pump": "pump-ctrl-{}.hex", "sensor": "sensor-node-{}.bin"}


def demo(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run the demo like `make demo ARGS=...` does, output captured (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "agent", "demo", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def image(workdir: Path, target: str, version: str) -> firmware.Image:
    """One of the firmware files the demo wrote and served."""
    path = workdir / "firmware" / IMAGES[target].format(version)
    return firmware.load(path, bin_default=FLASH_BASE)


def holds(dump: bytes, img: firmware.Image) -> bool:
    """True if the flash dump holds every byte of the image at its address."""
    return all(dump[s.address - FLASH_BASE:s.end - FLASH_BASE] == s.data for s in img.segments)


def assert_updated(workdir: Path) -> None:
    """Both flash dumps hold 1.1.0, which is not 1.0.0 (so the check could fail)."""
    for target in IMAGES:
        dump = (workdir / f"flash-{target}.bin").read_bytes()
        new, old = image(workdir, target, "1.1.0"), image(workdir, target, "1.0.0")
        assert holds(dump, new), f"{target}: flash does not hold 1.1.0"
        assert not holds(dump, old)
        assert new.start == FLASH_BASE and new.size >= 16 * 1024


def whole(img: firmware.Image) -> bytes:
    """The image as one binary from its first to its last byte, gaps 0xFF."""
    return img.read(img.start, img.end - img.start)


def assert_plausible_images(work: Path) -> None:
    """A vector table (stack in SRAM, Thumb reset vector in flash) and a version string."""
    for target in IMAGES:
        data = whole(image(work, target, "1.1.0"))
        sp, reset = int.from_bytes(data[0:4], "little"), int.from_bytes(data[4:8], "little")
        assert 0x20000000 < sp <= 0x20010000
        assert reset & 1 and FLASH_BASE <= reset < FLASH_BASE + len(data)
        assert b"1.1.0" in data and b"1.1.0" not in whole(image(work, target, "1.0.0"))


def test_fast_demo_updates_both_targets_and_says_so(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    r = demo("--fast", "--workdir", str(work))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_updated(work)
    out = r.stdout
    assert "pump" in out and "UART" in out and "sensor" in out and "I2C 0x48" in out
    assert "Summary: 1.0.0 -> 1.1.0" in out
    for target in IMAGES:
        row = next(line for line in out.splitlines() if line.strip().startswith(target)
                   and "verified:" in line)
        assert "1.0.0" in row and "1.1.0" in row and "SUCCEEDED" in row
    assert "Result: OK" in out
    # a real release: a 0600 throwaway key, and manifests that say what was served
    assert stat.S_IMODE(os.stat(work / "keys" / "demo-release.key").st_mode) == 0o600
    m = json.loads((work / "releases" / "pump-ctrl-1.1.0.json").read_text())
    assert m["format"] == "hex" and m["version"] == "1.1.0" and "ed25519" in m["signature"]
    assert m["size"] == (work / "firmware" / "pump-ctrl-1.1.0.hex").stat().st_size
    assert_plausible_images(work)


def test_faults_are_ridden_through(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    r = demo("--fast", "--faults", "--workdir", str(work))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_updated(work)
    assert "broker restarted while" in r.stdout
    nacked = int(r.stdout.split(" write packets NACKed")[0].rsplit(" ", 1)[-1])
    assert nacked > 0
    assert "1 I2C erase(s) without the final ACK" in r.stdout


def test_demo_on_a_given_broker_leaves_its_retained_state_there(tmp_path: Path) -> None:
    with Mosquitto() as broker:
        for run in (1, 2):  # the second run meets the first one's retained job and release
            r = demo("--fast", "--broker", f"127.0.0.1:{broker.port}",
                     "--workdir", str(tmp_path / "demo"))
            assert r.returncode == 0, f"run {run}: " + r.stdout + r.stderr
            assert_updated(tmp_path / "demo")
        retained = _retained(broker.port, ["stm32ota/#", "homeassistant/device/#"], 4)
    state = json.loads(retained["stm32ota/demo/pump/state"])
    assert state["installed_version"] == "1.1.0" and state["in_progress"] is False
    job = json.loads(retained["stm32ota/demo/sensor/job"])
    assert job["status"] == "SUCCEEDED" and job["to_version"] == "1.1.0"
    discovery = json.loads(retained["homeassistant/device/demo_sensor/config"])
    update = discovery["components"]["firmware"]
    assert update["platform"] == "update" and update["command_topic"] == "stm32ota/demo/sensor/cmd"
    assert json.loads(retained["stm32ota/release/pump-ctrl"])["version"] == "1.1.0"


def test_demo_logs_in_to_a_broker_that_refuses_anonymous_clients(tmp_path: Path) -> None:
    """Like Home Assistant's Mosquitto add-on: only known users get in."""
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    with Mosquitto(users={"ha-demo": "s3cret"}) as broker:
        r = demo("--fast", "--broker", f"127.0.0.1:{broker.port}", "--username", "ha-demo",
                 "--password-file", str(secret), "--workdir", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"127.0.0.1:{broker.port} as ha-demo (given with --broker)" in r.stdout
    assert_updated(tmp_path / "demo")


def test_a_login_without_broker_is_refused() -> None:
    r = demo("--fast", "--username", "someone", timeout=30)
    assert r.returncode == 2 and "--broker" in r.stderr


def _retained(port: int, filters: list[str], expect: int, timeout: float = 10) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    client = MqttClient("127.0.0.1", port, client_id=f"test-demo-{os.getpid()}", session_expiry=0)
    for f in filters:
        client.subscribe(f, lambda t, p, retained: got.__setitem__(t, p) if retained else None)
    client.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (
                len([t for t in got if t.endswith(("/state", "/config"))]) >= expect
                and "stm32ota/demo/sensor/job" in got and "stm32ota/release/pump-ctrl" in got):
            time.sleep(0.05)
    finally:
        client.stop()
    return got


def test_a_foreign_workdir_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    r = demo("--fast", "--workdir", str(tmp_path), timeout=30)
    assert r.returncode == 2
    assert "--workdir" in r.stderr and "not empty" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_failed_update_exits_nonzero_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    """Chips with read-out protection: the agent refuses to flash, the demo says why."""
    from agent.demo import DemoFailed, DemoOptions, run_demo, world

    real = world.Faults
    monkeypatch.setattr(world, "Faults", lambda **kw: real(**kw, read_protected=True))
    out = tmp_path / "out.txt"
    with open(out, "w") as f, pytest.raises(DemoFailed) as err:
        run_demo(DemoOptions(fast=True, workdir=tmp_path / "demo", out=f, tty=False))
    assert err.value.code == "demo_failed"
    assert "read_protected" in str(err.value) and "pump" in str(err.value)
    assert "Result: FAILED" in out.read_text()


def test_without_amqtt_the_demo_falls_back_to_a_mosquitto_binary(monkeypatch) -> None:
    """The fallback broker works for our client and comes back on its port after a crash."""
    from agent.demo import parts as demo_parts

    real = demo_parts.importlib.util.find_spec
    monkeypatch.setattr(demo_parts.importlib.util, "find_spec",
                        lambda name, *a: None if name == "amqtt" else real(name, *a))
    broker = demo_parts.start_broker()
    try:
        assert broker.kind == "mosquitto" and broker.port not in (1883, 8883)
        client = MqttClient(broker.host, broker.port, client_id="test-demo-fallback",
                            protocol=broker.protocol, reconnect_min=0.2, reconnect_max=1)
        client.start()
        try:
            assert client.wait_connected(10)
            broker.restart(down=0.2)
            deadline = time.monotonic() + 10
            while client.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.02)  # it must notice the crash ...
            assert client.wait_connected(10)  # ... and get back in on the same port
        finally:
            client.stop()
    finally:
        broker.close()


def test_keep_runs_until_ctrl_c_then_tears_everything_down(tmp_path: Path) -> None:
    import signal
    import socket

    proc = subprocess.Popen([sys.executable, "-m", "agent", "demo", "--fast", "--keep",
                             "--workdir", str(tmp_path / "demo")], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF if the demo exits early
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        lines += [proc.stdout.readline() for _ in range(2)]
        port = int(lines[-2].split("127.0.0.1:")[1])  # the line after "Ctrl-C stops"
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # still serving after the update
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
    assert f"mosquitto_sub -h 127.0.0.1 -p {port} -t 'stm32ota/#' -v" in "".join(lines)
    assert "stopping the demo" in rest
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_the_demo_agent_talks_8n1_to_its_pty(tmp_path: Path) -> None:
    # a pty carries no parity: with the 8E1 default, reopening the port for a second install
    # on a kept demo (--keep) failed in tcsetattr on some kernels
    from agent import config
    from agent.demo.world import config_text

    cfg = config.loads(config_text(tmp_path, "127.0.0.1", 1883, "/dev/pts/9"))
    uart = [t.link for t in cfg.targets if t.link.type == "uart"]
    assert uart and all(link.parity == "none" for link in uart)


def test_the_demo_devices_are_named_after_the_demo_not_the_host(tmp_path: Path) -> None:
    # Home Assistant shows "pump on <agent name>"; the docs' picture must not depend on
    # the host name of the machine that took it
    from agent import config
    from agent.demo.world import AGENT_ID, config_text

    cfg = config.loads(config_text(tmp_path, "127.0.0.1", 1883, "/dev/pts/9"))
    assert cfg.agent.name == AGENT_ID == "demo"


def test_the_demo_extra_leaves_amqtt_out_on_python_3_9() -> None:
    """amqtt needs 3.10; on 3.9 `pip install .[demo]` must still work (the demo then falls
    back to mosquitto, tested above)."""
    import configparser
    from pathlib import Path

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parent.parent / "setup.cfg", encoding="utf-8")
    [line] = [x.split("#")[0].strip() for x in cfg["options.extras_require"]["demo"].splitlines()
              if x.split("#")[0].strip()]
    req = Requirement(line)
    assert req.name == "amqtt" and req.marker is not None
    assert not req.marker.evaluate({"python_version": "3.9"})
    assert req.marker.evaluate({"python_version": "3.10"})
