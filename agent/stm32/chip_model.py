"""The `Chip` record: the facts about one STM32 product ID that flashing depends on.

Page numbering is over the whole flash from flash_start, in the order of `pages` (the erase
commands take these numbers). Helpers for the flash planner and the simulator:
`Chip.page_table(flash_size)` lists (address, size) per page number; `Chip.page_index(address)`,
`Chip.pages_covering(address, length)`, `Chip.erase_ms(page)`. The rows live in chip_table.py;
lookups in chips.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from agent.errors import ChipMismatch, UsageError

log = logging.getLogger(__name__)

KiB = 1024


# Parts whose boot pattern has the empty check (AN2606 Table 2, patterns 6/11/13/16; ST KB
# "Empty check mechanism on STM32"), by PID, with the way software re-evaluates the flag that
# is otherwise sampled only at power-on or option-byte reload (RM0360 2.5 and RM0394 3.7.5 as
# quoted by stm32flash stm32.c; CMSIS device headers for the bits):
#   "obl_launch"  F0: the flag is not readable; FLASH_CR.OBL_LAUNCH reloads the options
#   "pempty"      L41x-L46x, L4R/S: FLASH_SR.PEMPTY (bit 17), writing 1 flips it
#   "acr"         G0, C0: FLASH_ACR (0x40022000) bit 16 (PROGEMPTY/EMPTY), read/write
#   ""            has the check, but no documented software flag (L496: no PEMPTY in CMSIS;
#                 WB, L01x/02x not researched; WL: its FLASH interface is at 0x58004000, not
#                 0x40022000, and the bit there is not checked yet): only a power cycle clears it
# Not G4 (AN2606 pattern 14 has no empty row; absent from the ST KB list), not L47x (pattern 7).
EMPTY_CHECK: dict[int, str] = {
    0x442: "obl_launch", 0x445: "obl_launch",
    0x464: "pempty", 0x435: "pempty", 0x462: "pempty", 0x470: "pempty", 0x461: "",
    0x466: "acr", 0x456: "acr", 0x460: "acr", 0x467: "acr", 0x443: "acr", 0x453: "acr",
    0x497: "", 0x494: "", 0x495: "", 0x457: "",
}


@dataclass(frozen=True)
class Banks:
    """Where bank 2 of a dual-bank PID lies on a part with less flash than the largest.

    The bootloader numbers bank-2 pages on from the largest part's pages per bank, whatever
    the part's size (OpenBL's flash pattern splits page numbers at a fixed count; RM0351
    Table 9 via the ST community for L47x 512 KiB: bank 2 from page 256).
    """

    bank2_address: int | None = None  # fixed start of bank 2 (H7); None: right after bank 1
    option_bit: int | None = None  # bit of the user option word (at option_start) that
    # selects two banks (1) or one (0); None: always two banks
    known: bool = True  # False: the RM layout was not read; pages past bank 1 are withheld


@dataclass(frozen=True)
class Chip:
    """Facts about one product ID that flashing depends on."""

    pid: int
    name: str  # e.g. "STM32L43xxx/44xxx"
    family: str  # "F0", "F1", ..., "L4", "WB"
    flash_start: int
    flash_size: int  # largest flash of the PID, bytes (the flash-size register may say less)
    pages: tuple[tuple[int, int], ...]  # runs of (count, size in bytes), from flash_start
    write_align: int  # bytes a WRITE_MEMORY start and length must be a multiple of (4, 8, 32)
    ram_start: int  # first RAM byte free for us (after the bootloader's own RAM)
    ram_end: int  # one past the last RAM byte
    sysmem_start: int
    sysmem_end: int
    option_start: int  # option_start == option_end == 0: no memory-mapped option bytes
    option_end: int  # one past the last option byte
    mass_erase: bool = True  # False where AN2606/stm32flash say global erase does not work
    flash_size_reg: int | None = None  # address of the flash-size register (KiB, 16 bit LE)
    bootloader_id_addr: int | None = None  # where AN2606 says the bootloader ID byte lives
    bootloader_id: int | None = None  # that byte on the bootloader version AN2606 names, if known
    dual_bank: bool = False
    uart_version: int = 0x31  # USART bootloader protocol version (AN2606 per product), 0 = none
    i2c_version: int = 0  # I2C bootloader protocol version, 0 = no I2C bootloader
    i2c_address: int | None = None  # 7-bit I2C address of the bootloader (AN2606)
    erase_ms_per_page: float = 25.0  # typical page/sector erase time (datasheet), for the simulator
    program_us_per_word: float = 90.0  # typical programming time per write_align unit
    # Added fields (defaults keep the seed contract):
    parts: tuple[str, ...] = ()  # part-number patterns for find(); "x" matches any one character
    erase_ms_by_size: tuple[tuple[int, float], ...] = ()  # (sector size, ms) where sizes differ
    note: str = ""  # known quirk or doubt, shown by `info`
    banks: Banks | None = None  # dual-bank layout below the largest flash (None: contiguous)
    # the smallest flash of any part with this PID (datasheet ordering information); None:
    # not researched. An image below it fits every such part: no need to ask the register
    min_flash_size: int | None = None

    @property
    def flash_end(self) -> int:
        """One past the last byte of the largest flash of this PID."""
        return self.flash_start + self.flash_size

    @property
    def empty_check(self) -> bool:
        """AN2606 boot patterns with an empty check: a blank flash at power-on boots the
        bootloader even with BOOT0 low, and the flag stays latched until the next power-on."""
        return self.pid in EMPTY_CHECK

    @property
    def empty_flag(self) -> str:
        """How software re-evaluates the empty-check flag (see EMPTY_CHECK); "" if it cannot."""
        return EMPTY_CHECK.get(self.pid, "")

    def page_table(self, flash_size: int | None = None) -> tuple[tuple[int, int], ...]:
        """(address, size) of each erasable page/sector number, in number order.

        With `flash_size` (bytes, from the flash-size register) the table is cut to the pages
        inside that size; a size larger than this PID's flash or not on a page boundary is an
        error, because then the chip is not the one this table describes.
        """
        table = _expand(self.flash_start, self.pages)
        if flash_size is None or flash_size == self.flash_size:
            return table
        if flash_size <= 0 or flash_size > self.flash_size:
            raise ChipMismatch(
                f"{self.name} has at most {self.flash_size // KiB} KiB of flash, but the "
                f"flash-size register says {flash_size // KiB} KiB: wrong chip or bad read",
                code="flash_size_mismatch")
        end = self.flash_start + flash_size
        cut = tuple(p for p in table if p[0] < end)
        if cut[-1][0] + cut[-1][1] != end:
            raise ChipMismatch(
                f"{flash_size // KiB} KiB does not end on a page boundary of {self.name}",
                code="flash_size_mismatch")
        return cut  # the contiguous cut; page_map() places bank 2 where it moves

    def dual_bank_from(self, option_word: int | None) -> bool | None:
        """Two banks (True), one (False) or unknown (None) from the user option word."""
        if self.banks is None or self.banks.option_bit is None:
            return self.dual_bank
        if option_word is None:
            return None
        return bool(option_word >> self.banks.option_bit & 1)

    def page_map(self, flash_size: int | None = None,
                 dual: bool | None = None) -> dict[int, tuple[int, int]]:
        """{page number: (address, size)} in address order, for the flash-size register's
        size and the bank mode (`dual_bank_from`); numbers may skip where bank 2 begins."""
        full = _expand(self.flash_start, self.pages)
        if flash_size is None or flash_size == self.flash_size:
            return dict(enumerate(full))
        if self.banks is None or not self.bank2_unknown(flash_size, dual) and dual is False:
            return dict(enumerate(self.page_table(flash_size)))  # one bank: contiguous
        self.page_table(flash_size)  # the same size checks
        half, first2 = flash_size // 2, len(full) // 2
        bank1 = {n: p for n, p in enumerate(full[:first2]) if p[0] < self.flash_start + half}
        if self.bank2_unknown(flash_size, dual):
            log.warning("%s with %d KiB: where its bank 2 lies is not known here; only bank 1 "
                        "is used", self.name, flash_size // KiB)
            return bank1
        bank2 = self.banks.bank2_address or self.flash_start + half
        shift = full[first2][0] - bank2
        return {**bank1, **{n: (a - shift, size) for n, (a, size) in enumerate(full)
                            if n >= first2 and a - shift < bank2 + half}}

    def bank2_unknown(self, flash_size: int | None, dual: bool | None) -> bool:
        """True when this size and bank mode leave bank 2's place and numbers unknown."""
        if self.banks is None or flash_size is None or flash_size >= self.flash_size:
            return False
        return not self.banks.known or dual is None and self.banks.option_bit is not None

    def page_index(self, address: int, flash_size: int | None = None,
                   dual: bool | None = None) -> int:
        """Number of the page/sector holding `address` (ChipMismatch outside the flash)."""
        table = self.page_map(flash_size, dual)
        for index, (start, size) in table.items():
            if start <= address < start + size:
                return index
        top = max(a + s for a, s in table.values())
        raise ChipMismatch(
            f"address 0x{address:08X} is outside the flash of {self.name} "
            f"(0x{self.flash_start:08X}..0x{top - 1:08X})", code="out_of_flash")

    def pages_covering(self, address: int, length: int, flash_size: int | None = None,
                       dual: bool | None = None) -> list[int]:
        """Page numbers that [address, address+length) touches, in order ([] for length 0)."""
        if length < 0:
            raise UsageError(f"length must not be negative (got {length})")
        if length == 0:
            return []
        self.page_index(address, flash_size, dual)
        self.page_index(address + length - 1, flash_size, dual)
        end = address + length
        return [n for n, (a, s) in self.page_map(flash_size, dual).items()
                if a < end and address < a + s]

    def erase_ms(self, page: int) -> float:
        """Typical erase time of page/sector number `page` (uneven F2/F4/F7 sectors differ)."""
        size = _expand(self.flash_start, self.pages)[page][1]
        for sector_size, ms in self.erase_ms_by_size:
            if sector_size == size:
                return ms
        return self.erase_ms_per_page


@lru_cache(maxsize=256)
def _expand(start: int, runs: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Turn runs of (count, size) into (address, size) per page."""
    out: list[tuple[int, int]] = []
    address = start
    for count, size in runs:
        for _ in range(count):
            out.append((address, size))
            address += size
    return tuple(out)

