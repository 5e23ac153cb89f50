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
