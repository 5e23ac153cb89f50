"""Starting the application after a flash, including the empty-check trap of L4/G0/G4/C0."""

from __future__ import annotations

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


def _target(chip, sim):
    bus = SimI2CBus()
    bus.attach(0x48, sim)
    link = I2cSettings(bus=1, address=0x48)
    pins = PinsSettings(backend="mock", nrst=PinSpec(1), boot0=PinSpec(2))
    return Target(link, pins), bus


def _flash_and_start(chip, sim):
    target, bus = _target(chip, sim)
    image = Image([Segment(chip.flash_start, VECTORS + bytes(range(248)))])
    with open_session(target, i2c_bus=bus, pin_backend=MockBackend(sim.set_line),
                      sleep=lambda s: None) as s:
        execute(plan(image, s.chip, flash_size=s.flash_size, max_write=s.link.caps.max_write), s.bl)
        how = s.start_application()
    return how


def test_blank_l4_is_started_with_go_because_a_reset_would_land_in_the_bootloader():
    chip = CHIPS[0x435]
    sim = SimChip(chip, boot0=False)  # factory-blank: the empty check boots the bootloader
    assert sim.mode == "bootloader"
    assert _flash_and_start(chip, sim) == "go"
    assert sim.mode == "application"
    assert ("go", chip.flash_start) in [e[:2] for e in sim.events]


def test_programmed_l4_is_started_by_a_reset_with_boot0_low():
    chip = CHIPS[0x435]
    sim = SimChip(chip, boot0=False)
    sim.flash[:8] = VECTORS  # an application is there: the empty check does not apply
    sim.power_cycle()
    assert sim.mode == "application"
    assert _flash_and_start(chip, sim) == "reset"
    assert sim.mode == "application"
    assert not [e for e in sim.events if e[0] == "go"]


def test_part_without_empty_check_is_reset_even_when_blank():
    chip = find("STM32F401xB")  # F4: no empty check in its AN2606 boot pattern
    assert not chip.empty_check and chip.i2c_version
    sim = SimChip(chip, boot0=True)
    assert _flash_and_start(chip, sim) == "reset"
    assert sim.mode == "application"
