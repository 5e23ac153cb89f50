"""The simulator's line emulation: turnaround latency, round-trip count, checksum limits."""

from __future__ import annotations

import subprocess
import sys

import pytest
import serial

from agent.errors import UsageError
from agent.sim import PtySim, SimChip
from agent.stm32.chips import CHIPS
from test_sim_i2c import Clock, Host as I2cHost, packet

ACK, NACK = 0x79, 0x1F
FLASH = 0x08000000


def test_each_answer_after_host_bytes_waits_the_latency_and_counts_a_round_trip() -> None:
    clock = Clock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.sleep(seconds)

    sim = SimChip(CHIPS[0x435], realtime=False, clock=clock, sleep=sleep)
    with PtySim(sim, latency=0.016) as pty:
        port = serial.Serial(pty.path, 115200, timeout=1.0)
        port.write(b"\x7f")
        assert port.read(1) == bytes([ACK])
        port.write(b"\x01\xfe")  # GET_VERSION: ACK, version, two option bytes, ACK: one answer
        assert port.read(5)[0] == ACK
        port.close()
        assert (pty.stats.round_trips, pty.stats.bytes_in, pty.stats.bytes_out) == (2, 3, 6)
    assert slept == [0.016, 0.016]  # not realtime: no line time, only the turnarounds


def test_a_negative_latency_is_refused() -> None:
    with pytest.raises(UsageError) as err:
        PtySim(SimChip(CHIPS[0x435]), latency=-0.001)
    assert err.value.code == "bad_latency"


def test_sim_command_line_takes_a_latency_with_a_unit() -> None:
    run = subprocess.run([sys.executable, "-m", "agent", "sim", "--pty", "/nonexistent/x",
                          "--latency", "16"], capture_output=True, text=True)
    assert run.returncode == 2 and "16ms or 0.5s" in run.stderr


def test_checksum_start_must_be_a_multiple_of_4() -> None:
    """AN4221 2.20 / AN3155 3.13: the CRC unit reads words; stm32flash refuses the same."""
    host = I2cHost(SimChip(CHIPS[0x435]))
    assert host.cmd(0xA1) == ACK
    host.send(packet((FLASH + 2).to_bytes(4, "big")))
    assert host.recv(1)[0] == NACK
