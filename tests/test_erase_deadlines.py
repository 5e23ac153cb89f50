"""Erase deadlines follow the chip table: a big F4 sector gets more time than the floor."""

from __future__ import annotations

import pytest

from agent.errors import LinkTimeout
from agent.flasher.image import Image, Segment
from agent.flasher.execute import execute
from agent.flasher.plan import plan
from agent.flasher.session import open_session
from agent.flasher.target import Target, UartSettings
from agent.stm32.bootloader import Bootloader, Timeouts
from agent.link.uart import UartLink
from agent.stm32.chips import CHIPS
from agent.sim import Faults, PtySim, SimChip

F407 = CHIPS[0x413]
SECTOR5 = 0x08020000  # RM0090: sectors 5.. are 128 KiB; typical erase 2 s (chip table)
FLOOR = Timeouts(erase_page=0.3, mass_erase=0.5)


@pytest.fixture
def slow_f4():
    # a quarter of the datasheet's typical time: 0.5 s for the 128 KiB sector, over the floor
    sim = SimChip(F407, realtime=False, faults=Faults(erase_factor=0.25))
    with PtySim(sim) as pty:
        yield sim, pty.path


def test_a_big_sector_gets_the_time_the_table_says_it_needs(slow_f4) -> None:
    sim, port = slow_f4
    image = Image([Segment(SECTOR5, bytes(range(256)) * 4)])
    with open_session(Target(UartSettings(port, parity="none"), timeouts=FLOOR)) as s:
        execute(plan(image, s.chip, flash_size=s.flash_size), s.bl)
    assert bytes(sim.flash[SECTOR5 - F407.flash_start:][:1024]) == bytes(range(256)) * 4


def test_without_the_table_the_floor_alone_is_too_short(slow_f4) -> None:
    sim, port = slow_f4
    bl = Bootloader(UartLink(port, parity="none"), timeouts=FLOOR)
    try:
        bl.connect()
        with pytest.raises(LinkTimeout):
            bl.erase_pages([5])  # what the deadline would be without size_erase_deadlines
    finally:
        bl.close()


def test_after_an_erase_times_out_resync_listens_before_sending(slow_f4) -> None:
    # issue 8 item 9: a chip still erasing does not read RX; a 0xFF burst sent into it overruns
    # its USART and the erase's late ACK is taken for the answer to the burst
    sim, port = slow_f4
    bl = Bootloader(UartLink(port, parity="none"), timeouts=FLOOR)
    try:
        bl.connect()
        with pytest.raises(LinkTimeout):
            bl.erase_pages([5])  # 0.5 s against a 0.3 s deadline
        bl.resync()
        assert not [e for e in sim.events if e[0] == "overrun"]
        assert bl.read_memory(SECTOR5, 4) == b"\xff" * 4  # erased, and talking again
    finally:
        bl.close()
