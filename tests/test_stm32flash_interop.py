"""stm32flash (the Debian package) as an independent peer: it must flash the simulator as it
flashes silicon. A pty cannot carry parity, so the host runs 8N1 (`-m 8n1`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

from agent.sim import PtySim, SimChip, serve_pty
from cli_tools import ihex

STM32FLASH = shutil.which("stm32flash")
pytestmark = pytest.mark.skipif(STM32FLASH is None,
                                reason="stm32flash not installed (apt install stm32flash)")
FLASH = 0x08000000


def run(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One stm32flash invocation; fails the test with its output if it exits non-zero."""
    cmd = [str(STM32FLASH), "-m", "8n1", "-b", "115200", *args, port]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr}"
    return result


@pytest.fixture
def port(sim_chip: SimChip, tmp_path: Path) -> Iterator[str]:
    pty = PtySim(sim_chip, link_path=str(tmp_path / "ttySTM32")).start()
    try:
        yield pty.path
    finally:
        pty.stop()


def test_write_verify_read_back_and_go(port: str, sim_chip: SimChip, tmp_path: Path) -> None:
    image = os.urandom(20000)  # a multiple of the L4's 8-byte programming unit
    (tmp_path / "fw.bin").write_bytes(image)
    out = run(port, "-w", str(tmp_path / "fw.bin"), "-v")
    assert "Device ID    : 0x0435" in out.stdout
    assert bytes(sim_chip.flash[:len(image)]) == image
    assert ("erase", list(range(10))) in sim_chip.events  # only the pages the image covers

    run(port, "-S", f"0x{FLASH:08x}:{len(image)}", "-r", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == image

    run(port, "-g", f"0x{FLASH:08x}")
    assert sim_chip.mode == "application"
    assert ("go", FLASH) in sim_chip.events


def test_hex_image_with_gaps(port: str, sim_chip: SimChip, tmp_path: Path) -> None:
    low, high = os.urandom(1024), os.urandom(512)
    (tmp_path / "fw.hex").write_text(ihex([(FLASH, low), (FLASH + 0x1000, high)]))
    run(port, "-w", str(tmp_path / "fw.hex"), "-v")
    assert bytes(sim_chip.flash[:1024]) == low
    assert bytes(sim_chip.flash[1024:0x1000]) == b"\xff" * (0x1000 - 1024)
    assert bytes(sim_chip.flash[0x1000:0x1200]) == high
    run(port, "-S", f"0x{FLASH:08x}:{0x1200}", "-r", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == bytes(sim_chip.flash[:0x1200])


def test_serve_pty_makes_and_removes_the_symlink(l432, tmp_path: Path) -> None:
    link = tmp_path / "sim"
    stop = threading.Event()
    thread = threading.Thread(target=serve_pty, args=(str(link), l432),
                              kwargs={"baud": 115200, "realtime": False, "stop_event": stop})
    thread.start()
    try:
        for _ in range(100):
            if link.is_symlink():
                break
            stop.wait(0.02)
        out = run(str(link), "-S", f"0x{FLASH:08x}:256", "-r", str(tmp_path / "blank.bin"))
        assert "0x0435" in out.stdout
        assert (tmp_path / "blank.bin").read_bytes() == b"\xff" * 256
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive() and not link.exists()
