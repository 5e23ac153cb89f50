"""The simulator speaks AN4221 frames through SimI2CBus, driven with smbus2 i2c_msg objects."""

from __future__ import annotations

import errno
from functools import reduce

import pytest
from smbus2 import i2c_msg

from agent.stm32.protocol import stm32_crc32
from agent.sim import Faults, SimChip, SimI2CBus

ACK, NACK, BUSY = 0x79, 0x1F, 0x76
ADDR = 0x48
FLASH = 0x08000000


def xor(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


def packet(data: bytes) -> bytes:
    return data + bytes([xor(data)])


class Clock:
    """Deterministic chip time: sleeping advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Host:
    def __init__(self, sim: SimChip) -> None:
        self.bus = SimI2CBus()
        self.bus.attach(ADDR, sim)

    def send(self, data: bytes) -> None:
        self.bus.i2c_rdwr(i2c_msg.write(ADDR, data))

    def recv(self, n: int) -> bytes:
        msg = i2c_msg.read(ADDR, n)
        self.bus.i2c_rdwr(msg)
        return bytes(msg)

    def cmd(self, op: int) -> int:
        self.send(bytes([op, op ^ 0xFF]))
        return self.recv(1)[0]

    def poll(self) -> tuple[int, int]:
        """Read one byte until it is not BUSY; returns (answer, BUSY count)."""
        busy = 0
        while (byte := self.recv(1)[0]) == BUSY:
            busy += 1
            assert busy < 10_000
        return byte, busy


@pytest.fixture
def sim(l432) -> SimChip:
    return SimChip(l432)


@pytest.fixture
def host(sim: SimChip) -> Host:
    return Host(sim)


def test_get_lists_the_v12_command_set(host: Host) -> None:
    assert host.cmd(0x00) == ACK
    ops = [0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x32, 0x44, 0x45, 0x63, 0x64, 0x73, 0x74,
           0x82, 0x83, 0x92, 0x93, 0xA1]
    assert host.recv(20) == bytes([18, 0x12, *ops])
    assert host.recv(1)[0] == ACK  # AN4221 2.1: the closing ACK is a read of its own


def test_answers_are_read_one_transaction_each(host: Host, sim: SimChip) -> None:
    # OpenBL OPENBL_I2C_GetCommand: data, then wait for the host's NACK + STOP; past the
    # end SCL stays stretched, and a part-read answer leaves it stretching at the next access
    assert host.cmd(0x00) == ACK
    with pytest.raises(OSError) as err:
        host.recv(21)
    assert err.value.errno == errno.ETIMEDOUT
    assert host.cmd(0x00) == ACK  # the bootloader reset and listens again
    assert host.recv(5)[:2] == bytes([18, 0x12])
    with pytest.raises(OSError) as err:
        host.recv(15)
    assert err.value.errno == errno.ETIMEDOUT
    assert ("i2c_stall",) in sim.events
    assert host.cmd(0x01) == ACK


def test_get_version_is_one_byte_on_i2c(host: Host) -> None:
    assert host.cmd(0x01) == ACK
    assert host.recv(1) == bytes([0x12])
    assert host.recv(1) == bytes([ACK])


def test_no_sync_byte_and_unknown_opcode_nack(host: Host) -> None:
    assert host.cmd(0x7F) == NACK
    assert host.cmd(0x02) == ACK
    assert host.recv(3) == b"\x01\x04\x35"
    assert host.recv(1) == bytes([ACK])


def test_unattached_address_and_uart_owned_chip_do_not_ack(sim: SimChip) -> None:
    bus = SimI2CBus()
    with pytest.raises(OSError) as err:
        bus.i2c_rdwr(i2c_msg.write(0x49, b"\x01\xfe"))
    assert err.value.errno == errno.EREMOTEIO
    sim.uart_receive(b"\x7f")  # UART got there first after this reset
    bus.attach(ADDR, sim)
    with pytest.raises(OSError) as err:
        bus.i2c_rdwr(i2c_msg.write(ADDR, b"\x01\xfe"))
    assert err.value.errno == errno.EREMOTEIO


def test_read_with_nothing_to_send_times_out(host: Host) -> None:
    with pytest.raises(OSError) as err:
        host.recv(1)
    assert err.value.errno == errno.ETIMEDOUT


def test_write_read_and_frame_rules(host: Host, sim: SimChip) -> None:
    data = bytes(range(64))
    assert host.cmd(0x31) == ACK
    host.send(packet(FLASH.to_bytes(4, "big")))
    assert host.recv(1)[0] == ACK
    host.send(packet(bytes([63]) + data))
    assert host.recv(1)[0] == ACK
    assert sim.flash[:64] == data
    assert host.cmd(0x11) == ACK
    host.send(packet(FLASH.to_bytes(4, "big")) + b"\x00")  # one byte too many in the frame
    assert host.recv(1)[0] == NACK
    assert host.cmd(0x11) == ACK
    host.send(packet(FLASH.to_bytes(4, "big")))
    assert host.recv(1)[0] == ACK
    host.send(bytes([15, 0xF0]))
    assert host.recv(1) == bytes([ACK])
    assert host.recv(16) == data[:16]


def test_no_stretch_write_answers_busy_first(host: Host, sim: SimChip) -> None:
    assert host.cmd(0x32) == ACK
    host.send(packet(FLASH.to_bytes(4, "big")))
    assert host.recv(1)[0] == ACK
    host.send(packet(bytes([7]) + b"\x11" * 8))
    assert host.poll() == (ACK, 1)
    assert sim.flash[:8] == b"\x11" * 8


def test_erase_sends_the_count_with_its_own_checksum(host: Host, sim: SimChip) -> None:
    sim.flash[:] = bytes(len(sim.flash))
    assert host.cmd(0x44) == ACK
    host.send(b"\x00\x00\x00")  # AN4221 example: one page
    assert host.recv(1)[0] == ACK
    host.send(b"\x00\x01\x01")  # page 1
    assert host.recv(1)[0] == ACK
    assert sim.flash[2048:4096] == b"\xff" * 2048 and sim.flash[:2048] == bytes(2048)
    assert host.cmd(0x44) == ACK
    host.send(b"\x00\x00\x01")  # bad count checksum
    assert host.recv(1)[0] == NACK


def test_no_stretch_erase_is_busy_until_the_erase_time_has_passed(l432) -> None:
    clock = Clock()
    sim = SimChip(l432, realtime=True, clock=clock, sleep=clock.sleep)
    host = Host(sim)
    assert host.cmd(0x45) == ACK
    host.send(b"\x00\x01\x01")
    assert host.recv(1)[0] == ACK
    host.send(packet(b"\x00\x00\x00\x01"))
    start = clock.now
    assert host.recv(1)[0] == BUSY
    clock.now = start + 2 * 0.022 - 0.001
    assert host.recv(1)[0] == BUSY
    clock.now = start + 2 * 0.022 + 0.001
    assert host.recv(1)[0] == ACK


def test_stretching_erase_blocks_the_read_until_done(l432) -> None:
    clock = Clock()
    sim = SimChip(l432, realtime=True, clock=clock, sleep=clock.sleep)
    host = Host(sim)
    assert host.cmd(0x44) == ACK
    host.send(b"\xff\xff\x00")
    start = clock.now
    assert host.recv(1)[0] == ACK
    assert clock.now - start >= 128 * 0.022  # SCL was held for the whole mass erase


def test_more_than_1s_between_frames_resets_the_bootloader(l432) -> None:
    clock = Clock()
    sim = SimChip(l432, clock=clock, sleep=clock.sleep)
    host = Host(sim)
    assert host.cmd(0x44) == ACK
    clock.now += 1.5
    host.send(b"\x00\x00\x00")  # seed-notes: a late parameter frame is answered with NACK
    assert host.recv(1)[0] == NACK
    assert any(e[0] == "i2c_timeout" for e in sim.events)


def test_l432_quirk_erase_without_final_ack(l432) -> None:
    sim = SimChip(l432, faults=Faults(i2c_erase_no_ack=True))
    sim.flash[:] = bytes(len(sim.flash))
    host = Host(sim)
    assert host.cmd(0x44) == ACK
    host.send(b"\x00\x00\x00")
    assert host.recv(1)[0] == ACK
    host.send(b"\x00\x00\x00")
    assert host.recv(3) == bytes([NACK]) * 3  # no ACK, ever; but the page is erased
    assert sim.flash[:2048] == b"\xff" * 2048
    assert host.cmd(0x01) == ACK  # the next command works


def test_no_stretch_checksum_layout_matches_the_crc_unit(host: Host, sim: SimChip) -> None:
    sim.flash[:16] = bytes(range(16))
    assert host.cmd(0xA1) == ACK
    host.send(packet(FLASH.to_bytes(4, "big")))
    assert host.recv(1)[0] == ACK
    host.send(packet((16).to_bytes(4, "big")))  # size in bytes on I2C
    assert host.recv(1)[0] == ACK
    assert host.poll()[0] == ACK
    reply = host.recv(5)
    assert reply[:4] == stm32_crc32(bytes(range(16))).to_bytes(4, "big") and xor(reply) == 0
    assert host.cmd(0xA1) == ACK
    host.send(packet(FLASH.to_bytes(4, "big")))
    assert host.recv(1)[0] == ACK
    host.send(packet((6).to_bytes(4, "big")))
    assert host.recv(1)[0] == NACK


def test_readout_unprotect_no_stretch_then_reset(l432) -> None:
    sim = SimChip(l432, faults=Faults(read_protected=True))
    sim.flash[:4] = bytes(4)
    host = Host(sim)
    assert host.cmd(0x11) == NACK
    assert host.cmd(0x93) == ACK
    assert host.poll()[0] == ACK
    assert not sim.read_protected and sim.flash[:4] == b"\xff" * 4
    assert ("reset", "system reset", "bootloader", "") in sim.events


def test_v10_chip_offers_no_no_stretch_commands(l432) -> None:
    from dataclasses import replace
    host = Host(SimChip(replace(l432, i2c_version=0x10)))
    assert host.cmd(0x00) == ACK
    assert host.recv(13)[:2] == bytes([11, 0x10])
    assert host.recv(1)[0] == ACK
    assert host.cmd(0x45) == NACK
