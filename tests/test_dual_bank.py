"""Dual-bank parts with less flash than their PID's largest (issue 8, defect 5).

Bank-2 page numbers continue from the largest part's pages per bank (L47x 512 KiB: from 256,
RM0351 Table 9 as quoted on the ST community, second-hand; OpenBL's flash pattern splits page
numbers at a fixed count); H74x keeps bank 2 at 0x08100000 (CMSIS FLASH_BANK2_BASE). Where the
RM was not read (G0B1, G47x under 512 KiB) the layout is withheld, not guessed.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.errors import ChipMismatch
from agent.flasher import ops
from agent.flasher.execute import Result
from agent.flasher.image import Image, Segment
from agent.flasher.plan import pages_of_range, plan
from agent.flasher.target import I2cSettings, PinsSettings, Target
from agent.pins import PinSpec
from agent.pins.mock import MockBackend
from agent.sim import SimChip, SimI2CBus
from agent.stm32.chips import CHIPS, KiB

L476, H743, G0B1 = CHIPS[0x415], CHIPS[0x450], CHIPS[0x467]
DUALBANK = 1 << 21  # RM0351 FLASH_OPTR DUALBANK (CMSIS FLASH_OPTR_DUALBANK_Pos 21)


def test_l47x_512k_numbers_bank2_pages_from_256() -> None:
    pages = L476.page_map(512 * KiB, dual=True)
    assert list(pages) == list(range(128)) + list(range(256, 384))
    assert pages[127] == (0x0803F800, 2 * KiB)
    assert pages[256] == (0x08040000, 2 * KiB) and pages[383] == (0x0807F800, 2 * KiB)
    assert L476.dual_bank_from(0xFFEFF8AA) is True and L476.dual_bank_from(0xFFCFF8AA) is False


def test_l47x_512k_single_bank_is_contiguous() -> None:
    assert list(L476.page_map(512 * KiB, dual=False)) == list(range(256))


def test_h743xg_bank2_stays_at_0x08100000() -> None:
    pages = H743.page_map(1024 * KiB)  # always two banks: no option bit
    assert pages == {0: (0x08000000, 128 * KiB), 1: (0x08020000, 128 * KiB),
                     2: (0x08040000, 128 * KiB), 3: (0x08060000, 128 * KiB),
                     8: (0x08100000, 128 * KiB), 9: (0x08120000, 128 * KiB),
                     10: (0x08140000, 128 * KiB), 11: (0x08160000, 128 * KiB)}
    image = Image([Segment(0x08100000, b"\x01" * 64)])
    assert plan(image, H743, flash_size=1024 * KiB, dual_bank=True).pages == (8,)
    with pytest.raises(ChipMismatch) as err:  # the hole between the banks
        plan(Image([Segment(0x08080000, b"\x01" * 64)]), H743, flash_size=1024 * KiB)
    assert err.value.code == "image_outside_flash"


@pytest.mark.parametrize("chip,dual", [(G0B1, True), (L476, None)], ids=["g0b1", "unread"])
def test_unknown_bank2_is_refused_before_anything_is_erased(chip, dual) -> None:
    size = chip.flash_size // 2
    assert list(chip.page_map(size, dual)) == list(range(64 if chip is G0B1 else 128))
    bank1 = plan(Image([Segment(0x08000000, b"\x01" * 64)]), chip, flash_size=size,
                 dual_bank=dual)
    assert bank1.pages == (0,)
    with pytest.raises(ChipMismatch) as err:
        plan(Image([Segment(0x08000000 + size // 2, b"\x01" * 64)]), chip, flash_size=size,
             dual_bank=dual)
    assert err.value.code == "bank_layout_unknown"


def test_erase_range_in_bank2_names_its_pages() -> None:
    assert pages_of_range(L476, 512 * KiB, 0x0803F800, 4 * KiB, True) == [127, 256]


def _session(sim: SimChip) -> tuple[Target, SimI2CBus]:
    bus = SimI2CBus()
    bus.attach(0x43, sim)
    pins = PinsSettings(backend="mock", nrst=PinSpec(1), boot0=PinSpec(2))
    return Target(I2cSettings(bus=1, address=0x43), pins, verify="readback"), bus


def test_flash_across_the_banks_of_a_512k_l476_erases_bank2_pages_and_verifies() -> None:
    sim = SimChip(L476, flash_size=512 * KiB)
    sim.flash[:] = b"\x00" * len(sim.flash)  # an old firmware everywhere
    target, bus = _session(sim)
    data = bytes(range(256)) * 32  # 8 KiB from 0x0803F000: pages 126, 127, 256, 257
    image = Image([Segment(0x0803F000, data)])
    result, _ = ops.flash(target, image, i2c_bus=bus, pin_backend=MockBackend(sim.set_line),
                          sleep=lambda s: None)
    erased = sorted(p for e in sim.events if e[0] == "erase" for p in e[1])
    assert erased == [126, 127, 256, 257]
    assert bytes(sim.flash[0x3F000:0x41000]) == data
    assert result.pages_erased == 4


def test_unknown_layout_stays_in_bank1_even_in_single_bank_mode() -> None:
    # G47x with DBANK=0 has 4 KiB pages (HAL): nothing about it is guessed
    g474 = CHIPS[0x469]
    assert list(g474.page_map(256 * KiB, dual=False)) == list(range(64))



@pytest.mark.parametrize("i2c_version,method", [(None, "readback"), (None, "ram-crc"),
                                                (0x12, "crc")])
def test_reflash_across_the_banks_skips_pages_by_their_numbers(i2c_version, method) -> None:
    """The skip check and the CRC halving walk the page map: page 127 is followed by 256.

    The L47x's I2C bootloader has no Get Checksum: with its pins wired the chip computes the
    CRCs from RAM (`ram-crc`), unless told to read back; for the 0xA1 path the chip is given
    the v1.2 protocol (as on L43x), which changes nothing about its pages.
    """
    chip = L476 if i2c_version is None else replace(L476, i2c_version=i2c_version)
    sim = SimChip(chip, flash_size=512 * KiB)
    target, bus = _session(sim)
    target = replace(target, verify="readback" if method == "readback" else "auto")
    data = bytearray(bytes(range(256)) * 32)  # 8 KiB from 0x0803F000: pages 126, 127, 256, 257

    def flash() -> Result:
        result, _ = ops.flash(target, Image([Segment(0x0803F000, bytes(data))]), i2c_bus=bus,
                              pin_backend=MockBackend(sim.set_line), sleep=lambda s: None)
        return result

    flash()
    sim.events.clear()
    data[0x1800 + 5] ^= 0xFF  # 0x08040805: bank 2's second page, number 257
    result = flash()
    erased = [p for e in sim.events if e[0] == "erase" for p in e[1]]
    assert erased == [257]
    assert (result.pages_skipped, result.verify) == (3, method)
    if method == "crc":  # halving the 8 KiB span cut it at bank 2's first page (0x08040000)
        assert (0x08040000, 4 * KiB) in [e[1:] for e in sim.events if e[0] == "checksum"]
    assert bytes(sim.flash[0x3F000:0x41000]) == bytes(data)
