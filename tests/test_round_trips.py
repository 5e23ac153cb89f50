"""Round trips of a flash over UART, as the simulator counts them (issue 10): no timing.

Each round trip costs the adapter's turnaround latency (FTDI: 16 ms by default), so a flash
should make as few as the protocol allows. AN3155 forbids sending before the ACK, so a
256-byte block takes 3 to write (command, address, data) and 3 to read back (command,
address, length); stm32flash -w -v makes exactly those plus sync, GET_VERSION, GET, GET_ID
and one erase command (2).
"""

from __future__ import annotations

from typing import Iterator

import pytest

from agent.flasher import ops
from agent.flasher.image import Image, Segment
from agent.flasher.target import Target, UartSettings
from agent.sim import PtySim, SimChip
from agent.stm32.chips import CHIPS

L432 = CHIPS[0x435]
BASE = L432.flash_start
BLOCKS = 64  # 16 KiB: 8 pages of 2 KiB
CONNECT = 4  # 0x7F sync, GET_VERSION, GET, GET_ID (each one answer)
ERASE = 2  # the command, then the page list
STM32FLASH = CONNECT + ERASE + 6 * BLOCKS
READ = 3  # one READ_MEMORY
# what stm32ota adds: one READ of the flash start (read-out protection, the empty check and
# the skip check's first look at once); the flash-size register is not asked for an image
# that fits the smallest L43x (Chip.min_flash_size)
OURS = STM32FLASH + READ
# the CRC computed on the chip instead of reading back: WRITE the routine (one block for 8
# pages), GO (command, address), connect again after its reset, READ the CRCs
RAM_CRC = 3 + 2 + CONNECT + READ


def _image(seed: int, change_at: int | None = None) -> Image:
    data = bytearray((i * 7 + seed) & 0xFF for i in range(256 * BLOCKS))
    if change_at is not None:
        data[change_at] ^= 0xFF
    return Image([Segment(BASE, bytes(data))])


@pytest.fixture
def chip() -> Iterator[tuple[SimChip, PtySim]]:
    sim = SimChip(L432, realtime=False, boot0=True)
    pty = PtySim(sim).start()
    yield sim, pty
    pty.stop()


def _flash(pty: PtySim, image: Image) -> tuple[int, ops.Result]:
    before = pty.stats.round_trips
    result, _ = ops.flash(Target(UartSettings(pty.path, baud=115200, parity="none")), image)
    return pty.stats.round_trips - before, result


def test_a_full_flash_of_a_blank_chip_checks_on_the_chip_and_halves_the_round_trips(chip):
    """No pins, but the chip came up through its empty check: the CRC routine can reset it
    back into the bootloader, so nothing is read back (test_ram_crc.py has the details)."""
    sim, pty = chip
    trips, result = _flash(pty, _image(1))
    assert result.pages_erased == 8 and result.verify == "ram-crc"
    assert trips <= CONNECT + READ + ERASE + 3 * BLOCKS + RAM_CRC < STM32FLASH * 0.6
    reads = [e[1:] for e in sim.events if e[0] == "read"]
    # no option bytes without a BOOT0 pin, one look at the flash start, then the CRCs
    assert reads[0] == (BASE, 16) and len(reads) == 2


def test_a_full_flash_read_back_costs_a_few_reads_more_than_stm32flash(chip) -> None:
    sim, pty = chip
    sim.flash[:4] = b"\0\0\0\0"  # not blank at entry: no sure way back after code in RAM
    trips, result = _flash(pty, _image(1))
    assert result.pages_erased == 8 and result.verify == "readback"
    # the first page differs, so pages 1, 3 and 7 are probed (the gaps double): 3 reads
    assert trips <= OURS + 3 * READ
    reads = [e[1:] for e in sim.events if e[0] == "read"]
    assert reads[0] == (BASE, 16) and len(reads) == 1 + 3 + BLOCKS


def test_an_image_past_the_smallest_part_asks_the_flash_size_register(chip) -> None:
    sim, pty = chip
    image = Image([Segment(BASE + L432.min_flash_size - 256, bytes(512))])
    _flash(pty, image)
    assert ("read", L432.flash_size_reg, 2) in sim.events


def test_a_chip_holding_another_image_costs_a_few_probes_more(chip) -> None:
    _, pty = chip
    _flash(pty, _image(1))
    pty.sim.reset(boot0=True)
    trips, result = _flash(pty, _image(2))
    assert result.pages_skipped == 0
    # pages 1, 3 and 7 probed after page 0 differed (the gaps double): 3 reads
    assert trips <= OURS + 3 * READ
    pty.sim.reset(boot0=True)
    trips, result = _flash(pty, _image(2, change_at=5 * 2048 + 100))
    assert result.pages_skipped == 7 and result.pages_erased == 1


def test_an_identical_image_is_checked_by_reading_it_once(chip) -> None:
    _, pty = chip
    _flash(pty, _image(1))
    pty.sim.reset(boot0=True)
    trips, result = _flash(pty, _image(1))
    assert result.pages_skipped == 8 and result.pages_erased == 0
    # every byte read once: the first 16 at entry, then 64 reads of at most 256 bytes (page 0
    # in 8: its 2032 bytes after the 16), which also verify it: no erase, write or read-back
    assert trips <= CONNECT + READ + READ * BLOCKS


def test_other_operations_learn_read_protection_from_the_flash_size_read() -> None:
    f4 = CHIPS[0x413]  # no empty check: nothing is read at entry
    sim = SimChip(f4, realtime=False, boot0=True)
    with PtySim(sim) as pty:
        target = Target(UartSettings(pty.path, baud=115200, parity="none"))
        address, data = ops.read(target, f4.flash_start, 32)
    assert (address, data) == (f4.flash_start, b"\xff" * 32)
    assert [e[1:] for e in sim.events if e[0] == "read"] == [(f4.flash_size_reg, 2),
                                                            (f4.flash_start, 32)]
