"""The simulator speaks AN3155 on a real pty, checked with raw bytes from the documents."""

from __future__ import annotations

from functools import reduce
from typing import Iterator

import pytest
import serial

from agent.stm32.protocol import stm32_crc32
from agent.sim import Faults, PtySim, SimChip

ACK, NACK = b"\x79", b"\x1f"
FLASH = 0x08000000


def xor(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


def packet(data: bytes) -> bytes:
    return data + bytes([xor(data)])


def addr(a: int) -> bytes:
    return packet(a.to_bytes(4, "big"))


class Host:
    """Raw AN3155 host on the pty: every read must return exactly what was asked for."""

    def __init__(self, path: str) -> None:
        self.ser = serial.Serial(path, 115200, timeout=0.5)

    def send(self, data: bytes) -> None:
        self.ser.write(data)

    def recv(self, n: int) -> bytes:
        data = self.ser.read(n)
        assert len(data) == n, f"wanted {n} bytes, got {data.hex(' ')}"
        return data

    def cmd(self, op: int) -> bytes:
        self.send(bytes([op, op ^ 0xFF]))
        return self.recv(1)

    def silent(self) -> bool:
        self.ser.timeout = 0.15
        try:
            return self.ser.read(1) == b""
        finally:
            self.ser.timeout = 0.5

    def sync(self) -> None:
        self.send(b"\x7f")
        assert self.recv(1) == ACK

    def write(self, address: int, data: bytes) -> bytes:
        assert self.cmd(0x31) == ACK
        self.send(addr(address))
        assert self.recv(1) == ACK
        self.send(packet(bytes([len(data) - 1]) + data))
        return self.recv(1)

    def read(self, address: int, n: int) -> bytes:
        assert self.cmd(0x11) == ACK
        self.send(addr(address))
        assert self.recv(1) == ACK
        self.send(bytes([n - 1, (n - 1) ^ 0xFF]))
        assert self.recv(1) == ACK
        return self.recv(n)

    def erase(self, pages: list[int]) -> bytes:
        assert self.cmd(0x44) == ACK
        body = (len(pages) - 1).to_bytes(2, "big") + b"".join(p.to_bytes(2, "big") for p in pages)
        self.send(packet(body))
        return self.recv(1)


def open_host(sim: SimChip) -> tuple[PtySim, Host]:
    pty = PtySim(sim).start()
    return pty, Host(pty.path)


@pytest.fixture
def host(sim_pty: PtySim) -> Iterator[Host]:
    h = Host(sim_pty.path)
    h.sync()
    yield h
    h.ser.close()


# -- connection -----------------------------------------------------------------------------

def test_sync_answers_ack_and_a_second_7f_is_a_command_byte(sim_pty: PtySim) -> None:
    h = Host(sim_pty.path)
    h.sync()
    h.send(b"\x7f")
    assert h.silent()  # 0x7F now waits for its complement, as silicon does
    h.send(b"\x7f")
    assert h.recv(1) == NACK  # 7F 7F: bad complement -> NACK, which stm32flash expects


def test_first_byte_other_than_7f_leaves_the_uart_deaf_until_reset(sim_chip: SimChip) -> None:
    pty, h = open_host(sim_chip)
    try:
        h.send(b"\x00")
        h.send(b"\x7f")
        assert h.silent()  # autobaud locked on a wrong rate (AN2606 4.5)
        sim_chip.reset(boot0=True)
        h.sync()
    finally:
        pty.stop()


def test_get_version_and_id_for_the_l432(host: Host) -> None:
    assert host.cmd(0x00) == ACK
    assert host.recv(14) == bytes([11, 0x31, 0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44,
                                   0x63, 0x73, 0x82, 0x92]) + ACK
    assert host.cmd(0x01) == ACK
    assert host.recv(4) == b"\x31\x00\x00" + ACK
    assert host.cmd(0x02) == ACK
    assert host.recv(4) == b"\x01\x04\x35" + ACK


@pytest.mark.parametrize("op", [0x43, 0x32, 0xA1, 0x50, 0xFF])
def test_commands_not_offered_by_usart_v31_are_nacked(host: Host, op: int) -> None:
    assert host.cmd(op) == NACK
    assert host.cmd(0x01) == ACK  # and the bootloader is back waiting for a command


def test_bad_complement_is_nacked(host: Host) -> None:
    host.send(b"\x11\xee"[:1] + b"\x00")
    assert host.recv(1) == NACK


# -- memory ---------------------------------------------------------------------------------

def test_write_then_read_back_flash(host: Host, sim_chip: SimChip) -> None:
    data = bytes(range(256))
    assert host.write(FLASH + 2048, data) == ACK
    assert bytes(sim_chip.flash[2048:2304]) == data
    assert host.read(FLASH + 2048, 256) == data
    assert ("write", FLASH + 2048, 256) in sim_chip.events


def test_write_rules_are_as_strict_as_silicon(host: Host, sim_chip: SimChip) -> None:
    assert host.cmd(0x31) == ACK
    host.send(addr(FLASH + 4))
    assert host.recv(1) == NACK  # L4: the address must be 8-byte aligned (AN2606 Table 7)
    assert host.write(FLASH, bytes(4)) == NACK  # L4: whole double words only
    assert host.write(FLASH, b"\x0f" * 8) == ACK
    assert host.write(FLASH, b"\x0f" * 8) == NACK  # ECC double word already programmed
    assert host.write(FLASH, bytes(8)) == ACK  # all zeros is the one exception (RM0394)
    assert host.write(FLASH + 0x40000 - 8, bytes(16)) == NACK  # runs past the flash end
    assert bytes(sim_chip.flash[:8]) == bytes(8)


def test_write_with_bad_checksum_or_length_is_nacked(host: Host, sim_chip: SimChip) -> None:
    assert host.cmd(0x31) == ACK
    host.send(addr(FLASH))
    assert host.recv(1) == ACK
    host.send(bytes([7]) + bytes(8) + b"\x00")  # checksum should be 0x07
    assert host.recv(1) == NACK
    assert host.write(0x20003100, b"\x01\x02\x03\x04\x05\x06") == NACK  # N+1 = 6, not 4k
    assert sim_chip.flash[:8] == b"\xff" * 8


@pytest.mark.parametrize("address", [0x20000000, 0x1FFF0000, 0x08040000, 0x40000000])
def test_write_outside_flash_and_free_ram_is_nacked_at_the_address(host: Host, address: int) -> None:
    assert host.cmd(0x31) == ACK
    host.send(addr(address))
    assert host.recv(1) == NACK


def test_bad_address_checksum_is_nacked(host: Host) -> None:
    assert host.cmd(0x11) == ACK
    host.send(FLASH.to_bytes(4, "big") + b"\x01")
    assert host.recv(1) == NACK


def test_ram_takes_4_byte_writes_and_reads(host: Host, sim_chip: SimChip) -> None:
    assert host.write(0x20003100, b"abcd") == ACK
    assert host.read(0x20003100, 4) == b"abcd"


def test_id_registers_read_like_the_datasheet(host: Host) -> None:
    assert host.read(0x1FFF75E0, 2) == (256).to_bytes(2, "little")  # flash size in KiB
    assert host.read(0x1FFF6FFE, 1) == b"\x91"  # AN2606: bootloader ID V9.1
    assert host.read(0x1FFF7800, 1) == b"\xaa"  # RDP level 0


def test_read_past_a_region_end_is_nacked(host: Host) -> None:
    assert host.cmd(0x11) == ACK
    host.send(addr(0x0803FF80))
    assert host.recv(1) == ACK
    host.send(bytes([0xFF, 0x00]))
    assert host.recv(1) == NACK


def test_extended_erase_pages_and_limits(host: Host, sim_chip: SimChip) -> None:
    sim_chip.flash[:] = bytes(len(sim_chip.flash))
    assert host.erase([1, 3]) == ACK
    assert sim_chip.flash[2048:4096] == b"\xff" * 2048
    assert sim_chip.flash[:2048] == bytes(2048)
    assert sim_chip.flash[6144:8192] == b"\xff" * 2048
    assert host.erase([128]) == NACK  # L432 has pages 0..127
    assert host.erase(list(range(128)) * 5) == NACK  # 640 > 512 pages per command


def test_special_erases(host: Host, sim_chip: SimChip) -> None:
    sim_chip.flash[:] = bytes(len(sim_chip.flash))
    for special in (b"\xff\xfe\x01", b"\xff\xfd\x02", b"\xff\xf0\x0f"):
        assert host.cmd(0x44) == ACK
        host.send(special)
        assert host.recv(1) == NACK  # L432 is single bank; 0xFFF0 is reserved
    assert host.cmd(0x44) == ACK
    host.send(b"\xff\xff\x00")
    assert host.recv(1) == ACK
    assert sim_chip.flash == b"\xff" * len(sim_chip.flash)
    assert ("mass_erase",) in sim_chip.events


def test_go_leaves_the_bootloader_after_its_ack(host: Host, sim_chip: SimChip) -> None:
    assert host.cmd(0x21) == ACK
    host.send(addr(0x1FFF0000))
    assert host.recv(1) == NACK  # not flash or RAM
    assert host.cmd(0x21) == ACK
    host.send(addr(FLASH))
    assert host.recv(1) == ACK
    assert sim_chip.mode == "application"
    assert ("go", FLASH) in sim_chip.events
    host.send(b"\x01\xfe")
    assert host.silent()


# -- protection -----------------------------------------------------------------------------

def test_read_protection_nacks_after_the_command_and_unprotect_mass_erases(l432) -> None:
    sim = SimChip(l432, faults=Faults(read_protected=True))
    sim.flash[:4] = b"\x00\x10\x00\x20"
    pty, h = open_host(sim)
    try:
        h.sync()
        assert sim.read_protected
        for op in (0x11, 0x31, 0x44, 0x21, 0x63, 0x73, 0x82):
            assert h.cmd(op) == NACK, hex(op)
        assert h.cmd(0x02) == ACK and h.recv(4) == b"\x01\x04\x35" + ACK
        assert h.cmd(0x92) == ACK
        assert h.recv(1) == ACK  # second ACK after the mass erase, then a system reset
        assert sim.flash == b"\xff" * len(sim.flash)
        assert not sim.read_protected
        h.sync()  # ACK (not silence): a fresh bootloader took 0x7F as its autobaud byte
        assert h.read(FLASH, 4) == b"\xff" * 4
    finally:
        pty.stop()


def test_readout_protect_takes_effect_after_its_reset(host: Host, sim_chip: SimChip) -> None:
    assert host.cmd(0x82) == ACK
    assert host.recv(1) == ACK
    assert sim_chip.read_protected
    host.sync()
    assert host.cmd(0x11) == NACK


def test_write_protect_and_unprotect_reset_the_chip(host: Host, sim_chip: SimChip) -> None:
    assert host.cmd(0x63) == ACK
    host.send(packet(bytes([0, 2])))
    assert host.recv(1) == ACK
    host.sync()
    assert host.write(FLASH + 2 * 2048, bytes(8)) == ACK  # AN3155: no error, nothing written
    assert sim_chip.flash[4096:4104] == b"\xff" * 8
    assert host.cmd(0x73) == ACK
    assert host.recv(1) == ACK
    host.sync()
    assert host.write(FLASH + 2 * 2048, bytes(8)) == ACK
    assert sim_chip.flash[4096:4104] == bytes(8)


# -- pins and boot --------------------------------------------------------------------------

def test_pins_select_bootloader_or_application(sim_pty: PtySim, sim_chip: SimChip) -> None:
    h = Host(sim_pty.path)
    sim_chip.set_line("nrst", False)
    assert sim_chip.mode == "reset"
    h.send(b"\x7f")
    assert h.silent()
    sim_chip.set_line("boot0", True)
    sim_chip.set_line("nrst", True)
    assert sim_chip.mode == "bootloader"
    h.sync()
    sim_chip.flash[:8] = b"\x00\x10\x00\x20\x01\x00\x00\x08"
    sim_chip.power_cycle()  # empty flag is latched at power-on (L4 PEMPTY)
    sim_chip.reset(boot0=False)
    assert sim_chip.mode == "application"
    h.send(b"\x7f")
    assert h.silent()


def test_blank_l4_boots_the_bootloader_with_boot0_low(l432) -> None:
    sim = SimChip(l432, boot0=False)
    assert sim.mode == "bootloader"  # AN2606: empty main flash -> system memory
    sim.flash[:4] = b"\x00\x10\x00\x20"
    sim.reset(boot0=False)
    assert sim.mode == "bootloader"  # flag still latched from power-on, like PEMPTY
    sim.power_cycle()
    assert sim.mode == "application"


def test_silent_resets_fault(l432) -> None:
    sim = SimChip(l432, faults=Faults(silent_resets=2))
    pty, h = open_host(sim)
    try:
        for _ in range(2):
            sim.reset(boot0=True)
            h.send(b"\x7f")
            assert h.silent()
        sim.reset(boot0=True)
        h.sync()
    finally:
        pty.stop()


# -- faults ---------------------------------------------------------------------------------

def test_nack_every_write_fault_skips_programming(l432) -> None:
    sim = SimChip(l432, faults=Faults(nack_every_write=2))
    pty, h = open_host(sim)
    try:
        h.sync()
        assert h.write(FLASH, b"\x01" * 8) == ACK
        assert h.write(FLASH + 8, b"\x02" * 8) == NACK
        assert h.write(FLASH + 8, b"\x02" * 8) == ACK
        assert sim.flash[:16] == b"\x01" * 8 + b"\x02" * 8
    finally:
        pty.stop()


def test_drop_fault_loses_bytes(l432) -> None:
    sim = SimChip(l432, faults=Faults(drop_every=2))
    pty, h = open_host(sim)
    try:
        h.sync()  # byte 1 arrives
        h.send(b"\x01\xfe")  # byte 2 (0x01) is lost; 0xFE waits for its complement
        assert h.silent()
        assert ("fault", "drop") in sim.events
    finally:
        pty.stop()


def test_corrupt_fault_flips_a_bit_of_sent_bytes(l432) -> None:
    sim = SimChip(l432, faults=Faults(corrupt_every=1))
    pty, h = open_host(sim)
    try:
        h.send(b"\x7f")
        assert h.recv(1) == b"\x78"
    finally:
        pty.stop()


def test_slow_erase_fault_delays_the_ack_on_the_injected_clock(l432) -> None:
    now = [100.0]
    sim = SimChip(l432, faults=Faults(erase_factor=4), clock=lambda: now[0])
    sim.uart_receive(b"\x7f\x44\xbb" + packet(b"\x00\x01\x00\x00\x00\x01"))
    data, wait = sim.uart_pop()
    assert data == ACK * 2 and wait == pytest.approx(2 * 0.022 * 4)
    now[0] += 1
    assert sim.uart_pop() == (ACK, None)


def test_checksum_in_the_usart_v33_layout(l432) -> None:
    from dataclasses import replace
    sim = SimChip(replace(l432, uart_version=0x33))
    sim.flash[:8] = bytes(range(8))
    sim.uart_receive(b"\x7f\xa1\x5e" + addr(FLASH) + packet((2).to_bytes(4, "big"))
                     + packet((0x04C11DB7).to_bytes(4, "big")) + packet((0xFFFFFFFF).to_bytes(4, "big")))
    data, _ = sim.uart_pop()
    crc = stm32_crc32(bytes(range(8))).to_bytes(4, "big")
    # sync, command, address, size, polynomial, initial value, then the result's own ACK
    assert data == ACK * 7 + crc + bytes([xor(crc)])


def test_a_simulator_whose_descriptors_are_numbered_above_1024_still_answers(
        sim_chip: SimChip) -> None:
    """A bench serving hundreds of chips from one process: select() cannot watch fd 1024+."""
    import os
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1100:
        pytest.skip(f"the open-files limit ({soft}) cannot reach descriptor 1024")
    filler = []
    while not filler or filler[-1] < 1030:
        filler.append(os.open(os.devnull, os.O_RDONLY))
    try:
        pty = PtySim(sim_chip).start()
    finally:
        for fd in filler:  # the host side gets low numbers again: pyserial reads with select()
            os.close(fd)
    try:
        assert pty._master > 1024  # noqa: SLF001 - the point of the test
        h = Host(pty.path)
        h.sync()
        h.send(bytes([0x02, 0xFD]))  # GET_ID
        assert h.recv(1) == ACK
        h.ser.close()
    finally:
        pty.stop()
