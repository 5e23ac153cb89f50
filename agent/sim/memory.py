"""Memory of a simulated STM32: main flash with silicon's programming rules, RAM, read-only areas.

Device side only (the simulator's model of the chip); the host-side client never imports this.
Every refusal raises `MemoryRefused` with a reason, which the session answers with NACK.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.errors import MemoryRefused, UsageError
from agent.stm32.chips import Chip

log = logging.getLogger(__name__)

# Families whose flash carries ECC per double word (or wider): a programmed unit cannot be
# programmed again except to all zeros (RM0394 3.3.7 PROGERR for L4; same scheme on G0/G4/WB/WL).
_ECC_FAMILIES = frozenset({"L4", "L4+", "L5", "U5", "G0", "G4", "WB", "WL", "H7", "C0", "U0", "H5"})

RDP_LEVEL0 = 0xAA  # option byte value that means "no read-out protection" (RM0394 3.5.1)
RDP_LEVEL1 = 0xBB  # any value other than 0xAA/0xCC is level 1

# Factory user option word per family and how it stores BOOT0 (device side; the client
# decodes it independently in agent.stm32.options). Each 64-bit slot of G0/C0/L4/G4/WL holds
# the 32-bit value and its complement (OpenBL OPENBL_OB_Write takes the values at offsets
# 0, 8, 16, ...); F0 words are [RDP, ~RDP, USER, ~USER] (RM0091 4.1 Table 11 copy).
#   G0/C0  OPTR 0xDFFFE1AA (RM0454 3.4.1 "ST production value", quoted by an ST moderator;
#          C0 assumed alike [INF]); nBOOT_SEL bit 24 = 1: BOOT0 comes from nBOOT0 (bit 26),
#          the pin is ignored (CMSIS FLASH_OPTR_nBOOT_SEL; AN2606 pattern 11)
#   L4/G4/WL  OPTR 0xFFEFF8AA ([unverified] value; what matters, nSWBOOT0 bit 26 = 1 = pin
#          used and nBOOT0 bit 27 = 1, is AN2606 patterns 6/13/14): nSWBOOT0 = 0 ignores it
#   F0     0x00FF55AA (RM0091 production value, second-hand copy): USER bit 7 = BOOT_SEL,
#          1 = pin used, USER bit 3 = nBOOT0 (OBR bits 15 and 11, CMSIS stm32f091xc.h)
_OPTION_WORD = {"G0": 0xDFFFE1AA, "C0": 0xDFFFE1AA, "L4": 0xFFEFF8AA, "G4": 0xFFEFF8AA,
                "WL": 0xFFEFF8AA}
_F0_WORD = 0x00FF55AA
_WRP_OFF = 0x000000FF  # WRPxA_STRT all ones, WRPxA_END 0: no write protection
_NO_SWBOOT0 = frozenset({0x415})  # L47x/48x: no nSWBOOT0/nBOOT0 in OPTR (CMSIS stm32l476xx.h)


@dataclass
class Region:
    """One address range of the simulated chip."""

    name: str
    start: int
    data: bytearray
    writable: bool

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.start + len(self.data)

    def holds(self, addr: int, n: int = 1) -> bool:
        """True if [addr, addr+n) lies entirely inside the region."""
        return self.start <= addr and addr + n <= self.end


class SimMemory:
    """Flash, RAM, system memory, option bytes and the ID registers of one simulated chip."""

    def __init__(self, chip: Chip, flash_size: int | None = None) -> None:
        self.chip = chip
        size = flash_size if flash_size is not None else chip.flash_size
        self.flash = bytearray(b"\xff" * size)
        self.ecc = chip.family in _ECC_FAMILIES or chip.write_align >= 8
        self.write_protected: set[int] = set()
        self.flash_region = Region("flash", chip.flash_start, self.flash, True)
        self.ram = Region("ram", chip.ram_start, bytearray(chip.ram_end - chip.ram_start), True)
        self.options = Region("option bytes", chip.option_start,
                              bytearray(b"\xff" * (chip.option_end - chip.option_start)), True)
        self._factory_options()
        # page number -> (address, size) for this size and the bank mode of the option
        # word (all-ones erased options: two banks)
        word = int.from_bytes(self.options.data[:4], "little") if self.options.data else None
        self.pages = chip.page_map(size, chip.dual_bank_from(word))
        if any(a + n > chip.flash_start + size for a, n in self.pages.values()):
            raise UsageError(f"{chip.name} with {size // 1024} KiB puts bank 2 apart from "
                             "bank 1, which the simulator does not model", code="usage")
        sysmem = bytearray(b"\xff" * (chip.sysmem_end - chip.sysmem_start))
        self.sysmem = Region("system memory", chip.sysmem_start, sysmem, False)
        self.regions = [self.flash_region, self.ram, self.options, self.sysmem]
        if chip.bootloader_id_addr is not None and chip.bootloader_id is not None:
            self._put_readonly("bootloader id", chip.bootloader_id_addr,
                               bytes([chip.bootloader_id]))
        if chip.flash_size_reg is not None:
            # AN2606/RM: flash size register holds the size in KiB, 16 bit little-endian
            self._put_readonly("flash size", chip.flash_size_reg, (size // 1024).to_bytes(2, "little"))

    def _put_readonly(self, name: str, addr: int, value: bytes) -> None:
        """Place a read-only value, inside an existing region or in a small one of its own."""
        for region in self.regions:
            if region.holds(addr, len(value)):
                region.data[addr - region.start:addr - region.start + len(value)] = value
                return
        base = addr & ~0xF  # a 16-byte window so word-aligned reads around it work
        region = Region(name, base, bytearray(b"\xff" * 16), False)
        region.data[addr - base:addr - base + len(value)] = value
        self.regions.append(region)

    def _factory_options(self) -> None:
        data, family = self.options.data, self.chip.family
        if family in _OPTION_WORD and len(data) >= 8:
            for off in range(0, len(data) - 7, 8):  # unused slots: erased value, complement
                data[off:off + 8] = b"\xff" * 4 + bytes(4)
            word = _OPTION_WORD[family]
            data[0:8] = word.to_bytes(4, "little") + (word ^ 0xFFFFFFFF).to_bytes(4, "little")
            # WRP1AR/WRP1BR (slots 3 and 4): area off, start page above end page (factory
            # state as STM32CubeProgrammer shows it, second-hand; RM "WRP area" rules)
            for off in (0x18, 0x20):
                if len(data) >= off + 8:
                    data[off:off + 8] = _WRP_OFF.to_bytes(4, "little") + \
                        (_WRP_OFF ^ 0xFFFFFFFF).to_bytes(4, "little")
        elif family == "F0" and len(data) >= 4:
            data[:] = (0x00FF00FF).to_bytes(4, "little") * (len(data) // 4)
            data[0:4] = _F0_WORD.to_bytes(4, "little")
        else:
            data[0] = RDP_LEVEL0

    def boot0_signal(self, pin: bool) -> bool:
        """The BOOT0 level the chip acts on: the pin, or nBOOT0 when the options say so."""
        data, family = self.options.data, self.chip.family
        if family in ("G0", "C0") and len(data) >= 4:
            word = int.from_bytes(data[0:4], "little")
            return not word >> 26 & 1 if word >> 24 & 1 else pin
        if family in ("L4", "G4", "WL") and self.chip.pid not in _NO_SWBOOT0 and len(data) >= 4:
            word = int.from_bytes(data[0:4], "little")
            return pin if word >> 26 & 1 else not word >> 27 & 1
        if family == "F0" and len(data) >= 3:
            user = data[2]
            return pin if user & 0x80 else not user & 0x08
        return pin

    @property
    def rdp_byte(self) -> int:
        """The RDP option byte as stored."""
        return self.options.data[0]

    def region_at(self, addr: int, n: int = 1) -> Region:
        """The region that holds the whole range, or MemoryRefused."""
        for region in self.regions:
            if region.holds(addr, n):
                return region
        raise MemoryRefused(f"address range 0x{addr:08X}+{n} is not in any memory of the chip",
                            code="bad_address")

    def read(self, addr: int, n: int) -> bytes:
        """Bytes at [addr, addr+n) from any readable region."""
        region = self.region_at(addr, n)
        off = addr - region.start
        return bytes(region.data[off:off + n])

    def check_write_start(self, addr: int) -> Region:
        """The writable region for a WRITE_MEMORY start address, or MemoryRefused."""
        region = self.region_at(addr)
        if not region.writable:
            raise MemoryRefused(f"0x{addr:08X} is in read-only {region.name}", code="read_only")
        if region is self.options and addr != region.start:
            # AN3155 3.6 / AN4221 2.6: option bytes are written from the start of their area
            raise MemoryRefused(f"option bytes are written from 0x{region.start:08X}, not "
                                f"0x{addr:08X}", code="bad_address")
        align = self.chip.write_align if region is self.flash_region else 4
        if addr % align:
            # AN2606 Table 7 (L4): an unaligned address makes the program operation fail
            raise MemoryRefused(f"0x{addr:08X} is not {align}-byte aligned", code="unaligned")
        return region

    def write(self, addr: int, data: bytes, *, strict: bool = True) -> str:
        """Program `data` at `addr`; returns the region name. MemoryRefused when silicon would fail."""
        region = self.check_write_start(addr)
        if not region.holds(addr, len(data)):
            raise MemoryRefused(f"write 0x{addr:08X}+{len(data)} runs past the end of {region.name}",
                                code="out_of_range")
        if region is self.flash_region:
            self._program_flash(addr, data, strict)
        else:
            off = addr - region.start
            region.data[off:off + len(data)] = data
        return region.name

    def _program_flash(self, addr: int, data: bytes, strict: bool) -> None:
        """Flash programming: whole units, only 1->0, ECC units only once (or to all zeros)."""
        unit = max(self.chip.write_align, 4)
        if len(data) % unit:
            if strict:
                raise MemoryRefused(f"write length {len(data)} is not a multiple of the "
                                    f"{unit}-byte programming unit", code="unaligned_length")
            data = data + b"\xff" * (unit - len(data) % unit)
        off = addr - self.flash_region.start
        new_flash = bytearray(self.flash[off:off + len(data)])
        for i in range(0, len(data), unit):
            old, new = bytes(new_flash[i:i + unit]), data[i:i + unit]
            if self._page_of(addr + i) in self.write_protected:
                continue  # AN3155 3.7: no error on write-protected sectors, data just not written
            if self.ecc and old != b"\xff" * unit and new != b"\x00" * unit:
                raise MemoryRefused(f"0x{addr + i:08X} is already programmed (ECC unit must be "
                                    "erased first)", code="not_erased")
            merged = bytes(a & b for a, b in zip(old, new))
            if merged != new:
                raise MemoryRefused(f"0x{addr + i:08X}: programming cannot turn 0 bits into 1 "
                                    "(erase first)", code="not_erased")
            new_flash[i:i + unit] = merged
        self.flash[off:off + len(data)] = new_flash

    def _page_of(self, addr: int) -> int:
        """Page number that holds a flash address."""
        for number, (start, size) in self.pages.items():
            if start <= addr < start + size:
                return number
        return -1

    def erase_pages(self, numbers: list[int]) -> list[int]:
        """Erase pages by number (all must exist); returns those actually erased (not WP'd)."""
        for number in numbers:
            if number not in self.pages:
                raise MemoryRefused(f"page {number} does not exist (chip has {len(self.pages)})",
                                    code="bad_page")
        done = []
        for number in numbers:
            if number in self.write_protected:
                continue  # AN3155 3.8: no error for write-protected sectors
            start, size = self.pages[number]
            off = start - self.flash_region.start
            self.flash[off:off + size] = b"\xff" * size
            done.append(number)
        return done

    def mass_erase(self) -> None:
        """Erase the whole main flash (RDP regression ignores write protection)."""
        self.flash[:] = b"\xff" * len(self.flash)

    def bank_pages(self, bank: int) -> list[int]:
        """Page numbers of bank 1 or 2 (halves of the flash on dual-bank parts)."""
        middle = self.flash_region.start + len(self.flash) // 2
        return [n for n, (a, _) in self.pages.items() if (a < middle) == (bank == 1)]

    def is_empty(self) -> bool:
        """AN2606 empty check: first word of main flash reads 0xFFFFFFFF."""
        return bytes(self.flash[:4]) == b"\xff\xff\xff\xff"
