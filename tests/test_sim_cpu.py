"""Power-on vs reset, code run from RAM, and the empty-check routines (issue 8, defect 1).

The routines' machine code is checked twice: by the simulator's interpreter (written from
the ARMv6-M ARM) and by capstone, a disassembler nobody here wrote, so one misreading of an
encoding cannot pass both.
"""

from __future__ import annotations

import pytest

from agent.pins import PinSpec
from agent.pins.base import Pins
from agent.pins.mock import MockBackend
from agent.sim import SimChip
from agent.stm32 import ramcode
from agent.stm32.chips import CHIPS

L432, G071, F091 = CHIPS[0x435], CHIPS[0x460], CHIPS[0x442]
VECTORS = (0x20004000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little")


def _programmed_blank_chip(chip):
    """A chip that powered up blank (flag set) and was then programmed."""
    sim = SimChip(chip, boot0=False)
    assert sim.mode == "bootloader" and sim.empty_flag
    sim.flash[:8] = VECTORS
    return sim


def test_nrst_and_system_reset_keep_the_latch_power_on_and_option_reload_resample_it():
    sim = _programmed_blank_chip(L432)
    sim.reset(boot0=False)
    assert sim.mode == "bootloader"  # NRST: flag not sampled again (RM0394 3.7.5)
    sim.system_reset()
    assert sim.mode == "bootloader"  # SYSRESETREQ / watchdog: neither
    sim.system_reset(obl=True)
    assert sim.mode == "application"  # option-byte reload samples it
    sim.flash[:4] = b"\xff" * 4
    sim.power_cycle()
    assert sim.mode == "bootloader"


def test_mock_pins_express_a_power_cycle_distinct_from_an_nrst_pulse():
    sim = _programmed_blank_chip(L432)
    backend = MockBackend(sim.set_line)
    with Pins(backend, {"nrst": PinSpec(1), "boot0": PinSpec(2)}, sleep=lambda s: None) as pins:
        pins.exit_bootloader()
        assert sim.mode == "bootloader"
        backend.power_cycle()
        assert sim.mode == "application"
    assert [h[1:] for h in backend.history if h[1] == "power"] == [("power", False),
                                                                  ("power", True)]
    assert ("power", "off") in sim.events


def _go(sim, image):
    base = sim.chip.ram_start
    sim.mem.write(base, image)
    sim.jump(base)


@pytest.mark.parametrize("chip", [L432, G071])
def test_the_routine_makes_the_flag_agree_with_the_flash_either_way(chip):
    sim = _programmed_blank_chip(chip)
    _go(sim, ramcode.clear_empty_latch(chip.empty_flag, chip.flash_start, chip.ram_start,
                                       chip.ram_end))
    assert ("ram_code", "system_reset") in sim.events and not sim.empty_flag
    assert sim.mode == "application"
    sim.flash[:4] = b"\xff" * 4  # erased again: the routine must set the flag, not flip it off
    sim.empty_flag = False
    _go(sim, ramcode.clear_empty_latch(chip.empty_flag, chip.flash_start, chip.ram_start,
                                       chip.ram_end, reset=False))
    assert sim.empty_flag and ("ram_code", "spinning") in sim.events


def test_f0_routine_unlocks_flash_cr_then_launches_the_option_reload():
    sim = _programmed_blank_chip(F091)
    _go(sim, ramcode.clear_empty_latch("obl_launch", F091.flash_start, F091.ram_start,
                                       F091.ram_end))
    assert ("ram_code", "obl_reset") in sim.events and ("option_reload",) in sim.events
    assert sim.mode == "application" and not sim.empty_flag


def test_code_the_core_does_not_model_is_a_hard_fault_not_a_crash():
    sim = SimChip(L432)
    image = (0x20001000).to_bytes(4, "little") + (L432.ram_start + 9).to_bytes(4, "little")
    _go(sim, image + b"\x00\xdf\x00\xbf")  # SVC 0
    assert sim.events[-1][0] == "hard_fault" and sim.mode == "application"


def _disassemble(image: bytes, load: int) -> list[str]:
    capstone = pytest.importorskip("capstone")
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB)
    entry = int.from_bytes(image[4:8], "little") & ~1
    code = image[entry - load:]
    return [f"{i.mnemonic} {i.op_str}".strip() for i in md.disasm(code, entry)]


def test_the_l4_routine_disassembles_as_intended():
    load = L432.ram_start
    image = ramcode.clear_empty_latch("pempty", L432.flash_start, load, L432.ram_end)
    text = _disassemble(image, load)
    pool = {load + 8 + i: int.from_bytes(image[8 + i:12 + i], "little")
            for i in range(0, len(image) - 8, 4)}
    literals = [pool[int(t.split("#")[-1].rstrip("]"), 16) + ((load + 8 + 2 * n + 4) & ~3)]
                for n, t in enumerate(text) if t.startswith("ldr") and "pc" in t]
    assert literals == [0x08000000, 0x00020000, 0x40022010, 0xE000ED0C, 0x05FA0004]
    body = [t for t in text if not (t.startswith("ldr") and "pc" in t)]
    assert body[:8] == ["ldr r1, [r0]", "movs r5, #0", "adds r1, #1",
                        f"bne #0x{load + 8 + 2 * 7:x}", "orrs r5, r4", "ldr r3, [r2]",
                        "ands r3, r4", "eors r3, r5"]
    assert "str r3, [r2]" in body and "str r1, [r0]" in body
