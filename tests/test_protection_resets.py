"""Readout unprotect and the other option-changing commands end in a reset: the client must
let the chip finish (mass erase after the ACKs, OpenBL) before it talks again (issue 8, 3)."""

from __future__ import annotations

import dataclasses

import pytest

from agent.link.i2c import I2cLink
from agent.link.uart import UartLink
from agent.sim import Faults, PtySim, SimChip, SimI2CBus
from agent.stm32.bootloader import Bootloader, Timeouts
from agent.stm32.chips import CHIPS, KiB

FAST = Timeouts(sync=0.3, byte=0.3, write_block=0.5, erase_page=0.5, mass_erase=2.0,
                checksum=1.0, unprotect=30.0, busy_poll_interval=0.0, reset_settle=0.0)


class FakeClock:
    """Deterministic time shared by chip, bus and client: sleep() advances it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _i2c(chip, faults: Faults) -> tuple[SimChip, Bootloader, FakeClock]:
    clock = FakeClock()
    sim = SimChip(chip, realtime=True, clock=clock, sleep=clock.sleep, faults=faults)
    sim.reset(boot0=True)
    bus = SimI2CBus()
    bus.attach(0x48, sim)
    link = I2cLink(bus, 0x48, busy_poll=0.001, clock=clock, sleep=clock.sleep)
    bl = Bootloader(link, timeouts=FAST, clock=clock, sleep=clock.sleep)
    return sim, bl, clock


@pytest.mark.parametrize("ack_after_erase", [False, True], ids=["openbl", "an-text"])
def test_i2c_readout_unprotect_of_an_f4_waits_out_the_mass_erase(ack_after_erase: bool) -> None:
    # OpenBL OPENBL_I2C_ReadoutUnprotect: ACK, ACK, then seconds of mass erase (F4 1 MiB:
    # 16.7 s typical) and a reset; AN4221 2.11 words it ACK, erase, ACK. Both must work.
    f4 = CHIPS[0x413]
    sim, bl, clock = _i2c(f4, Faults(read_protected=True, rup_ack_after_erase=ack_after_erase))
    bl.connect()
    bl.size_erase_deadlines(f4.erase_ms, len(f4.page_table()))
    start = clock.now
    bl.readout_unprotect()
    assert clock.now - start >= 16.7  # it did not leave before the erase could end
    assert bl.connect().pid == 0x413
    assert not sim.read_protected and bytes(sim.flash[:4]) == b"\xff" * 4


def test_uart_readout_unprotect_resyncs_only_after_the_mass_erase() -> None:
    # a 16-page part whose mass erase takes about 1 s, longer than two sync timeouts
    small = dataclasses.replace(CHIPS[0x435], flash_size=32 * KiB, pages=((16, 2 * KiB),),
                                erase_ms_per_page=60.0)
    sim = SimChip(small, realtime=True, faults=Faults(read_protected=True))
    sim.reset(boot0=True)
    pty = PtySim(sim).start()
    bl = Bootloader(UartLink(pty.path), timeouts=FAST)
    try:
        bl.connect()
        bl.size_erase_deadlines(small.erase_ms, 16)
        bl.readout_unprotect()
        assert bl.connect().pid == 0x435
        assert not sim.read_protected
        assert any(e[:2] == ("reset", "system reset") for e in sim.events)
    finally:
        bl.close()
        pty.stop()


def test_readout_unprotect_wipes_ram() -> None:
    # AN3155 Table 3 (V2.2): the RDP regression zeroes RAM too, so no RAM helper survives it
    sim, bl, _ = _i2c(CHIPS[0x435], Faults())
    bl.connect()
    bl.write_memory(sim.mem.ram.start, b"\x5a" * 8)
    bl.readout_unprotect()
    bl.connect()
    assert bl.read_memory(sim.mem.ram.start, 8) == bytes(8)


@pytest.mark.parametrize("name", ["readout_protect", "write_unprotect"])
def test_option_changing_commands_leave_a_chip_that_answers(name: str) -> None:
    sim, bl, _ = _i2c(CHIPS[0x435], Faults())
    bl.connect()
    getattr(bl, name)()
    assert bl.connect().pid == 0x435
    assert any(e[:2] == ("reset", "system reset") for e in sim.events)
