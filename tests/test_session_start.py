"""Leaving the bootloader: the empty-check latch (issue 8, defect 1) and the check that the
application really runs.

Silicon facts the simulator follows (agent/sim/core.py, cpu.py): on parts with an empty check
the "flash is empty" flag is sampled at power-on and option-byte reload only, so after
flashing a blank part every NRST reset lands in the ROM again until a power cycle (stm32flash
stm32.c quoting RM0360 2.5 / RM0394 3.7.5; ST KB "Empty check mechanism on STM32").
"""

from __future__ import annotations

import pytest

from agent.errors import StillInBootloader
from agent.flasher.execute import execute
from agent.flasher.image import Image, Segment
from agent.flasher.plan import plan
from agent.flasher.session import open_session
from agent.flasher.target import I2cSettings, PinsSettings, Target
from agent.pins import PinSpec
from agent.pins.mock import MockBackend
from agent.stm32.chips import CHIPS, find
from agent.sim import SimChip, SimI2CBus

# A plausible vector table: initial stack pointer in RAM, reset handler in flash (Thumb bit set).
VECTORS = (0x20004000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little")


def _target(sim, *, boot0=True, nrst=True):
    bus = SimI2CBus()
    bus.attach(0x48, sim)
    link = I2cSettings(bus=1, address=0x48)
    pins = PinsSettings(backend="mock", nrst=PinSpec(1) if nrst else None,
                        boot0=PinSpec(2) if boot0 else None)
    return Target(link, pins), bus


def _flash_and_start(sim, **wiring):
    target, bus = _target(sim, **wiring)
    image = Image([Segment(sim.chip.flash_start, VECTORS + bytes(range(248)))])
    with open_session(target, i2c_bus=bus, pin_backend=MockBackend(sim.set_line),
                      sleep=lambda s: None) as s:
        execute(plan(image, s.chip, flash_size=s.flash_size, max_write=s.link.caps.max_write), s.bl)
        return s.start_application()


def test_a_blank_l4_flashed_twice_still_starts_its_application_the_second_time():
    """Fails on the old client: it left the latch set, so the second OTA's reset landed in
    the ROM and was reported as a success."""
    sim = SimChip(CHIPS[0x435], boot0=False)  # factory-blank: the empty check boots the ROM
    assert sim.mode == "bootloader"
    _flash_and_start(sim)
    assert sim.mode == "application"
    sim.reset(boot0=False)  # a watchdog / NRST reset of the running application
    assert sim.mode == "application"
    assert _flash_and_start(sim) == "reset"
    assert sim.mode == "application"


@pytest.mark.parametrize("pid", [0x435, 0x462, 0x464, 0x460, 0x466, 0x453, 0x442])
def test_the_latch_is_cleared_on_every_family_that_allows_it(pid):
    chip = CHIPS[pid]
    sim = SimChip(chip, boot0=False)
    if chip.family in ("G0", "C0"):
        sim.mem.options.data[3] &= ~0x01  # nBOOT_SEL=0: the BOOT0 pin counts (not factory)
        sim.mem.options.data[7] |= 0x01
        sim.power_cycle()
    _flash_and_start(sim)
    assert ("ram_code", "obl_reset" if chip.family == "F0" else "spinning") in sim.events
    sim.reset(boot0=False)
    assert sim.mode == "application" and not sim.empty_flag


def test_without_nrst_the_routine_resets_the_chip_itself():
    sim = SimChip(CHIPS[0x435], boot0=False)
    assert _flash_and_start(sim, nrst=False) == "reset"
    assert ("ram_code", "system_reset") in sim.events and sim.mode == "application"


def test_a_part_whose_flag_cannot_be_cleared_is_started_with_go():
    chip = CHIPS[0x445]  # F04x: empty check, but the bootloader uses all of its RAM
    sim = SimChip(chip, boot0=False)
    assert sim.mode == "bootloader"
    assert _flash_and_start(sim) == "go"
    assert sim.mode == "application"
    # the next OTA: the reset lands in the ROM (latch kept since power-on); GO starts it
    assert _flash_and_start(sim) == "go"
    assert sim.mode == "application"


def test_a_programmed_l4_is_started_by_a_reset_with_boot0_low():
    chip = CHIPS[0x435]
    sim = SimChip(chip, boot0=False)
    sim.flash[:8] = VECTORS  # an application is there: the empty check does not apply
    sim.power_cycle()
    assert sim.mode == "application"
    assert _flash_and_start(sim) == "reset"
    assert sim.mode == "application"
    assert [e[1] for e in sim.events if e[0] == "go"] == [chip.ram_start]  # only the routine


def test_part_without_empty_check_is_reset_even_when_blank():
    chip = find("STM32F401xB")  # F4: no empty check in its AN2606 boot pattern
    assert not chip.empty_check and chip.i2c_version
    sim = SimChip(chip, boot0=True)
    assert _flash_and_start(sim) == "reset"
    assert sim.mode == "application"
    assert not [e for e in sim.events if e[0] == "go"]


def test_g4_has_no_empty_check():
    """AN2606 pattern 14 (G4) has no empty-flash row; the ST KB list has no G4."""
    assert not CHIPS[0x468].empty_check and not CHIPS[0x469].empty_check
    assert CHIPS[0x442].empty_check and CHIPS[0x445].empty_check and CHIPS[0x497].empty_check


def test_boot0_strapped_high_is_reported_not_taken_for_success():
    """Fails on the old client: it reported "reset" while the chip sat in the ROM."""
    sim = SimChip(find("STM32F401xB"), boot0=True)  # BOOT0 tied high, only NRST wired
    with pytest.raises(StillInBootloader, match="BOOT0 is not driven") as err:
        _flash_and_start(sim, boot0=False)
    assert err.value.code == "still_in_bootloader" and sim.mode == "bootloader"


def test_a_go_that_lands_in_the_rom_is_reported():
    sim = SimChip(find("STM32F401xB"), boot0=True)
    target, bus = _target(sim)
    with open_session(target, i2c_bus=bus, pin_backend=MockBackend(sim.set_line),
                      sleep=lambda s: None) as s:
        s.bl.write_memory(s.chip.ram_start, (0x20001000).to_bytes(4, "little")
                          + (s.chip.ram_start + 9).to_bytes(4, "little") + b"\xfe\xe7\x00\xbf")
        # code that spins forever: not the bootloader, so this counts as started
        assert s.start_application(s.chip.ram_start) == "go"
    assert ("ram_code", "spinning") in sim.events
