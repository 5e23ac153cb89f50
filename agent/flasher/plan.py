"""Plan flashing an Image: which pages to erase and which blocks to write; pure, no I/O.

A Plan names the pages to erase (only those the image touches), and the write blocks: each at
most `max_write` bytes, start and length multiples of the chip's write unit (padded with 0xFF),
never crossing a page edge so a page can be erased and rewritten on its own. Erased (0xFF)
stretches are not written: an erased page reads 0xFF there already, and on ECC flash (L4, G0,
H7) a written 0xFF word could not be written again without an erase. For each page the plan
also holds what the whole page reads once flashed (`expected`: the image, 0xFF elsewhere) and
the image's own bytes in it (`regions`, what verification compares). `execute` carries a plan
out; `Span` groups adjacent pages so one checksum command covers many.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Optional

from agent.errors import ChipMismatch, UsageError
from agent.flasher.image import Image
from agent.stm32.chips import Chip

log = logging.getLogger(__name__)

ERASE_MODES = ("pages", "mass", "none")
MIN_ALIGN = 4  # AN3155 3.6: WRITE_MEMORY address and length are multiples of 4


@dataclass(frozen=True)
class Block:
    """One WRITE_MEMORY: aligned, padded data that lies within page `page`."""

    address: int
    data: bytes
    page: int

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.address + len(self.data)


@dataclass(frozen=True)
class Plan:
    """What to erase and what to write; a pure function of the image and the chip."""

    chip: Chip
    erase: str  # "pages", "mass" or "none"
    pages: tuple[int, ...]  # page numbers the image touches, ascending
    blocks: tuple[Block, ...]  # ascending by address; no all-0xFF block
    page_table: dict[int, tuple[int, int]]  # page number -> (address, size), address order
    image_size: int  # bytes of image data (without padding)
    regions: tuple[Block, ...] = ()  # per page: the image's aligned bytes in it (unsplit)
    expected: tuple[bytes, ...] = ()  # per entry of `pages`: the whole page once flashed

    @property
    def flash_range(self) -> tuple[int, int]:
        """[start, end) of the flash this plan was made for."""
        spans = self.page_table.values()
        return min(a for a, _ in spans), max(a + s for a, s in spans)

    def page_blocks(self, page: int) -> tuple[Block, ...]:
        """The blocks that lie in `page`."""
        return tuple(b for b in self.blocks if b.page == page)

    def page_span(self, page: int) -> "Span":
        """The whole of `page` as it reads once flashed (image bytes, 0xFF elsewhere)."""
        return Span(self.page_table[page][0], self.expected[self.pages.index(page)], (page,))


@dataclass(frozen=True)
class Span:
    """Adjacent flash bytes and the pages they lie in: one checksum command's worth."""

    address: int
    data: bytes
    pages: tuple[int, ...]

    def split(self, page_table: dict[int, tuple[int, int]]) -> tuple["Span", "Span"]:
        """Two halves cut at the page edge nearest the middle (needs two pages or more)."""
        if len(self.pages) < 2:
            raise ValueError("a span within one page cannot be split at a page edge")
        mid = len(self.pages) // 2
        cut = page_table[self.pages[mid]][0] - self.address
        return (Span(self.address, self.data[:cut], self.pages[:mid]),
                Span(self.address + cut, self.data[cut:], self.pages[mid:]))


def spans(parts: list[Span] | tuple[Span, ...]) -> list[Span]:
    """Join parts (ascending) that touch into spans; a part's pages follow its address."""
    out: list[Span] = []
    for part in parts:
        last = out[-1] if out else None
        if last is not None and last.address + len(last.data) == part.address:
            pages = last.pages + tuple(p for p in part.pages if p not in last.pages)
            out[-1] = Span(last.address, last.data + part.data, pages)
        else:
            out.append(part)
    return out


def page_table(chip: Chip, flash_size: Optional[int] = None) -> tuple[tuple[int, int], ...]:
    """(address, size) per erasable page/sector number, limited to `flash_size` bytes."""
    return chip.page_table(flash_size)  # one layout for planner, simulator and CLI (chips.py)


def plan(image: Image, chip: Chip, *, flash_size: Optional[int] = None, max_write: int = 256,
         erase: str = "pages", dual_bank: Optional[bool] = None) -> Plan:
    """Plan erasing and writing `image` on `chip`; ChipMismatch if any byte is outside flash.

    `dual_bank` is the bank mode from the option bytes (Chip.dual_bank_from): on a dual-bank
    part with less flash than its PID's largest, it decides where bank 2 and its page
    numbers are.
    """
    if erase not in ERASE_MODES:
        raise UsageError(f"erase must be one of {', '.join(ERASE_MODES)}, not {erase!r}",
                         code="bad_erase_mode")
    align = max(chip.write_align, MIN_ALIGN)
    if max_write < align:
        raise UsageError(f"max_write {max_write} is smaller than {chip.name}'s write unit "
                         f"({align} bytes)", code="bad_max_write")
    max_write -= max_write % align  # a link's frame limit need not be a multiple of it
    table = chip.page_map(flash_size, dual_bank)
    numbers = list(table)
    starts = [table[n][0] for n in numbers]
    blocks: list[Block] = []
    regions: list[Block] = []
    for lo, hi in image.spans(align):
        address = lo
        while address < hi:
            page = _page_of(table, numbers, starts, address, image, chip,
                            chip.bank2_unknown(flash_size, dual_bank))
            stop = min(hi, table[page][0] + table[page][1])
            regions.append(Block(address, image.read(address, stop - address), page))
            for a in range(address, stop, max_write):
                block = _trimmed(Block(a, image.read(a, min(max_write, stop - a)), page), align)
                if block is not None:
                    blocks.append(block)
            address = stop
    pages = tuple(sorted({r.page for r in regions}))
    return Plan(chip=chip, erase=erase, pages=pages, blocks=tuple(blocks), page_table=table,
                image_size=image.size, regions=tuple(regions),
                expected=tuple(image.read(*table[p]) for p in pages))


def _trimmed(block: Block, align: int) -> Optional[Block]:
    """The block without its leading and trailing all-0xFF write units; None if nothing is left."""
    data = block.data
    head = (len(data) - len(data.lstrip(b"\xff"))) // align * align
    tail = (len(data) - len(data.rstrip(b"\xff"))) // align * align
    if head >= len(data):
        return None
    return Block(block.address + head, data[head:len(data) - tail], block.page)


def _page_of(table: dict[int, tuple[int, int]], numbers: list[int], starts: list[int],
             address: int, image: Image, chip: Chip, bank2_unknown: bool) -> int:
    i = bisect.bisect_right(starts, address) - 1
    if i >= 0 and address < starts[i] + table[numbers[i]][1]:
        return numbers[i]
    first, last = table[numbers[0]], table[numbers[-1]]
    bad = max(address, image.start)
    if bank2_unknown and first[0] <= bad < chip.flash_start + 2 * (last[0] + last[1]
                                                                  - chip.flash_start):
        raise ChipMismatch(
            f"image byte at 0x{bad:08X} is in bank 2 of {chip.name}, whose place and page "
            f"numbers are not known for this flash size and bank mode (option bytes unreadable "
            f"or the layout not in the chip table): keep the image below "
            f"0x{last[0] + last[1]:08X} (bank 1)", code="bank_layout_unknown")
    raise ChipMismatch(
        f"image byte at 0x{bad:08X} is outside {chip.name}'s flash "
        f"0x{first[0]:08X}..0x{last[0] + last[1] - 1:08X} ({(last[0] + last[1] - first[0]) // 1024}"
        f" KiB); the image spans 0x{image.start:08X}..0x{image.end - 1:08X}",
        code="image_outside_flash")


def pages_of_range(chip: Chip, flash_size: int, start: int, length: int,
                   dual_bank: Optional[bool] = None) -> list[int]:
    """Page numbers exactly covering [start, start+length); UsageError if not page aligned."""
    pages = chip.page_map(flash_size, dual_bank)
    end = start + length
    flash_start = min(a for a, _ in pages.values())
    flash_end = max(a + s for a, s in pages.values())
    if length <= 0 or start < flash_start or end > flash_end:
        raise UsageError(f"0x{start:08X}+0x{max(length, 0):X} is not inside the flash "
                         f"(0x{flash_start:08X}-0x{flash_end - 1:08X})")
    chosen = chip.pages_covering(start, length, flash_size, dual_bank)
    first, last = pages[chosen[0]], pages[chosen[-1]]
    if first[0] != start or last[0] + last[1] != end:
        raise UsageError(
            f"erase works on whole pages: the range 0x{start:08X}-0x{end - 1:08X} cuts pages; use "
            f"--address 0x{first[0]:08X} --length 0x{last[0] + last[1] - first[0]:X}")
    return chosen
