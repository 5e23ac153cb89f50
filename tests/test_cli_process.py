"""`python -m agent` as real processes: the simulator on a pty, and the flasher talking to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from cli_tools import BASE, PAGE, blob, write_image

from agent import __version__

ROOT = Path(__file__).resolve().parent.parent


def stm32ota(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `python -m agent ARGV` to completion."""
    return subprocess.run([sys.executable, "-m", "agent", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def wait_for(predicate, what: str, deadline_s: float = 15.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`stm32ota sim --pty PATH --fast` running; yields the process and PATH."""
    link = tmp_path / "stm32"
    proc = subprocess.Popen([sys.executable, "-m", "agent", "sim", "--pty", str(link),
                             "--chip", "L432", "--fast"], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: os.path.islink(link) or proc.poll() is not None, "the pty symlink")
        assert proc.poll() is None, proc.stderr.read()
        yield proc, link
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_version_and_help() -> None:
    v = stm32ota("--version")
    assert v.returncode == 0 and v.stdout.strip() == f"stm32ota {__version__}"
    h = stm32ota("--help")
    assert h.returncode == 0
    for name in ("info", "flash", "read", "erase", "sim"):
        assert name in h.stdout
    f = stm32ota("flash", "--help")
    assert f.returncode == 0 and "--no-verify" in f.stdout and "--go" in f.stdout


def test_flash_a_running_simulator_reset_it_by_signal_and_read_back(
        tmp_path: Path, sim_process: tuple) -> None:
    proc, link = sim_process
    data = blob(3 * PAGE + 17, 6)
    image = write_image(tmp_path, "fw.srec", [(BASE + PAGE, data)])
    port = ["--port", str(link), "--parity", "none"]

    flashed = stm32ota("flash", str(image), *port, "--go")
    assert flashed.returncode == 0, flashed.stderr
    assert "application started (go)" in flashed.stdout
    assert "write: 100%" in flashed.stderr and "\r" not in flashed.stderr  # a pipe: plain lines

    silent = stm32ota("info", *port, "--baud", "115200")  # the application runs now
    assert silent.returncode == 3 and "kill -USR1" in silent.stderr

    proc.send_signal(signal.SIGUSR1)  # back into the bootloader, as a reset with BOOT0 high
    backup = tmp_path / "backup.bin"
    read = stm32ota("read", str(backup), *port, "--address", f"0x{BASE + PAGE:08X}",
                    "--length", str(len(data)), "-q")
    assert read.returncode == 0, read.stderr
    assert backup.read_bytes() == data

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not os.path.lexists(link)  # the simulator cleans up its symlink
    banner = proc.stderr.read()  # says how to talk to it, and what to do after GO
    assert f"stm32ota flash FIRMWARE --port {link} --parity none" in banner
    assert f"application started: the bootloader is silent until kill -USR1 {proc.pid}" in banner


def test_the_simulator_refuses_to_replace_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-link"
    path.write_text("keep me")
    done = stm32ota("sim", "--pty", str(path), "--fast", timeout=15)
    assert done.returncode == 2 and "is not a symlink" in done.stderr
    assert path.read_text() == "keep me"


def test_ctrl_c_mid_flash_says_what_state_the_chip_is_in(tmp_path: Path) -> None:
    link = tmp_path / "stm32"
    sim = subprocess.Popen([sys.executable, "-m", "agent", "sim", "--pty", str(link),
                            "--chip", "L432"], cwd=ROOT, stderr=subprocess.DEVNULL)  # real time
    try:
        wait_for(lambda: os.path.islink(link), "the pty symlink")
        image = write_image(tmp_path, "fw.bin", [(BASE, blob(64 * PAGE, 2))])
        flash = subprocess.Popen([sys.executable, "-m", "agent", "flash", str(image), "--port",
                                  str(link), "--parity", "none", "--baud", "115200"], cwd=ROOT,
                                 stderr=subprocess.PIPE, text=True)
        lines = []
        while not any(line.startswith("write:") for line in lines):
            line = flash.stderr.readline()
            assert line, f"the flash ended before writing: {lines}"
            lines.append(line)
        flash.send_signal(signal.SIGINT)
        rest = flash.stderr.read()
        assert flash.wait(15) == 130
        assert "the flash may be half-written" in rest and "run the same command again" in rest
    finally:
        sim.kill()
        sim.wait(5)
