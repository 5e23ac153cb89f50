"""Fault specs for the CLI, the shared CRC definition, and realtime line timing."""

from __future__ import annotations

import time

import pytest
import serial

from agent.errors import UsageError
from agent.stm32.protocol import stm32_crc32
from agent.sim import Faults, PtySim, SimChip, parse_faults


def test_parse_faults_reads_every_cli_spec() -> None:
    faults = parse_faults(["nack-write=5", "drop=200", "corrupt=300", "silent-resets=2",
                           "slow-erase=4", "rdp", "i2c-erase-no-ack"])
    assert faults == Faults(nack_every_write=5, drop_every=200, corrupt_every=300,
                            silent_resets=2, erase_factor=4.0, read_protected=True,
                            i2c_erase_no_ack=True)


@pytest.mark.parametrize("spec", ["nack-writes=5", "drop", "drop=x", "drop=0", "rdp=1"])
def test_parse_faults_rejects_bad_specs_with_a_reason(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_faults([spec])
    assert err.value.code == "bad_fault"


def _mpeg2(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_stm32_crc_is_mpeg2_over_byte_swapped_words() -> None:
    assert _mpeg2(b"123456789") == 0x0376E6E7  # the CRC-32/MPEG-2 catalogue check value
    data = bytes(range(64))
    swapped = b"".join(data[i:i + 4][::-1] for i in range(0, 64, 4))
    assert stm32_crc32(data) == _mpeg2(swapped)
    with pytest.raises(UsageError):
        stm32_crc32(b"abc")


def test_realtime_mode_spends_line_time(l432) -> None:
    sim = SimChip(l432, baud=9600, realtime=True)
    with PtySim(sim) as pty:
        ser = serial.Serial(pty.path, 9600, timeout=2)
        start = time.monotonic()
        ser.write(b"\x7f\x00\xff")
        reply = ser.read(16)
        elapsed = time.monotonic() - start
    assert reply[:1] == b"\x79" and len(reply) == 16
    assert elapsed >= 19 * 11 / 9600 * 0.9  # 3 bytes in, 16 out at 11 bits each


def test_sim_takes_page_layout_and_bootloader_id_from_the_chip_table() -> None:
    from agent.stm32.chips import lookup
    from agent.sim.memory import SimMemory
    l432, f407 = lookup(0x435), lookup(0x413)
    mem = SimMemory(l432)
    assert mem.read(l432.bootloader_id_addr, 1) == bytes([l432.bootloader_id]) == b"\x91"
    assert mem.pages == dict(enumerate(l432.page_table()))
    assert SimMemory(f407, 512 * 1024).pages == dict(enumerate(f407.page_table(512 * 1024)))
    assert [SimMemory(f407).pages[n] for n in (4, 5)] == [(0x08010000, 0x10000),
                                                          (0x08020000, 0x20000)]


def test_sim_erase_time_follows_the_tables_uneven_f4_sectors() -> None:
    from agent.stm32.chips import lookup
    from agent.stm32.protocol import ACK
    f407 = lookup(0x413)
    now = [0.0]
    sim = SimChip(f407, faults=Faults(erase_factor=2), clock=lambda: now[0])  # timed, not realtime
    # 0x44 erase of sectors 0 (16 KiB) and 11 (128 KiB): N-1 = 1, pages 0 and 11, XOR
    body = b"\x00\x01\x00\x00\x00\x0b"
    sim.uart_receive(b"\x7f\x44\xbb" + body + bytes([0x01 ^ 0x0B]))
    data, wait = sim.uart_pop()
    assert data == bytes([ACK]) * 2
    assert wait == pytest.approx(2 * (f407.erase_ms(0) + f407.erase_ms(11)) / 1000)
    assert f407.erase_ms(11) > 4 * f407.erase_ms(0)  # 128 KiB vs 16 KiB (DS typical)
