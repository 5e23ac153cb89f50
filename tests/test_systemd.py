"""The systemd unit (hardening, verify) and the agent's sd_notify: READY, WATCHDOG, STOPPING."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from agentkit import AgentKit

from agent import systemd

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "stm32ota.service"


def _service_section() -> dict[str, list[str]]:
    """[Service] keys of the unit, each with every value it is given (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_keeps_its_hardening() -> None:
    s = _service_section()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"] and s["WatchdogSec"][0]
    assert s["User"] == ["stm32ota"] and s["NoNewPrivileges"] == ["yes"]
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert s["ProtectSystem"] == ["strict"] and s["DevicePolicy"] == ["closed"]
    allowed = " ".join(s["DeviceAllow"])
    for dev in ("char-ttyAMA", "char-ttyUSB", "char-gpiochip", "char-i2c"):
        assert dev in allowed
    assert s["StateDirectory"] == ["stm32ota"] and s["CacheDirectory"] == ["stm32ota"]
    assert s["ExecStart"][0].endswith("stm32ota run --config /etc/stm32ota/config.yaml")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).with_name("stm32ota")
    if not exe.exists():
        pytest.skip(f"{exe} is missing: install the package (pip install -e .)")
    text = UNIT.read_text().replace("/opt/stm32ota/bin/stm32ota", str(exe))
    unit = tmp_path / "stm32ota.service"
    unit.write_text(text)
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Only complaints about this unit count, not about the host's other units.
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "stm32ota.service" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the role of systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    try:
        yield s, path
    finally:
        s.close()


def _receive_until(sock: socket.socket, want: str, got: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.extend(sock.recv(4096).decode().split("\n"))
        except socket.timeout:
            continue
        if want in got:
            return
    raise AssertionError(f"no {want} within {timeout}s; got {got}")


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    """`systemd-analyze security` exposure: 10 is wide open, below 2 is what ours should keep."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "stm32ota.service"
    unit.write_text(UNIT.read_text())
    r = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    if "offline" in r.stderr and "unrecognized" in r.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    found = re.search(r"Overall exposure level for [^:]+: ([0-9.]+)", r.stdout)
    assert found, r.stdout[-2000:] + r.stderr
    assert float(found.group(1)) <= 2.0, r.stdout[-3000:]


def test_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.watchdog_interval() is None


def test_watchdog_interval_is_half_the_timeout_and_only_for_us(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert systemd.watchdog_interval() is None


def test_the_agent_tells_systemd_ready_watchdog_and_stopping(
        tmp_path: Path, notify_socket: tuple[socket.socket, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with AgentKit(tmp_path) as kit:
        kit.uart_target("pump", pins="none")
        kit.start_process()
        got: list[str] = []
        _receive_until(sock, "READY=1", got)
        for _ in range(2):
            got.remove("WATCHDOG=1") if "WATCHDOG=1" in got else None
            _receive_until(sock, "WATCHDOG=1", got)
        assert kit.stop_process() == 0, kit.agent_log()[-2000:]
        _receive_until(sock, "STOPPING=1", got, timeout=5)
        assert got.index("READY=1") < got.index("STOPPING=1")


def _service_groups() -> list[str]:
    return _service_section()["SupplementaryGroups"][0].split()


def test_the_service_steps_create_every_group_before_adding_the_user_to_it() -> None:
    """systemd fails a unit whose SupplementaryGroups= names a missing group (plain Debian)."""
    steps = (UNIT.parent.parent / "docs" / "service.md").read_text(encoding="utf-8")
    usermod = steps.index("usermod -aG")
    for group in _service_groups():
        if group == "dialout":  # every Debian system has it (base-passwd)
            continue
        made = re.search(rf"groupadd -f --system {group}\b", steps)
        assert made and made.start() < usermod, f"docs/service.md never creates group {group}"
    assert "install -m 0644 systemd/60-stm32ota.rules /etc/udev/rules.d/" in steps


def test_the_udev_rules_give_each_device_group_its_devices() -> None:
    rules = (UNIT.parent / "60-stm32ota.rules").read_text(encoding="utf-8")
    owners = dict(re.findall(r'KERNEL=="(gpiochip|i2c-)[^"]*".*GROUP="(\w+)"', rules))
    assert owners == {"gpiochip": "gpio", "i2c-": "i2c"}
    assert set(owners.values()) <= set(_service_groups())
    tool = shutil.which("udevadm")
    if tool is not None:  # udevadm verify exists from systemd 254 on
        done = subprocess.run([tool, "verify", str(UNIT.parent / "60-stm32ota.rules")],
                              capture_output=True, text=True)
        if "Unknown command" not in done.stderr and "unrecognized" not in done.stderr:
            assert done.returncode == 0, done.stderr
