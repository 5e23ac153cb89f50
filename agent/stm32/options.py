"""The user option bytes that decide where BOOT0 comes from: read, explain, rewrite.

Through the ROM bootloader the option bytes are read and written as memory at the chip's
option area (`Chip.option_start`; the FLASH_OPTR register itself is refused, ST community
"program the FLASH_OPTR register in stm32G0B1KE through i2c"). Layouts:

  G0, C0, L4, G4, WL  the area starts with OPTR as a 32-bit little-endian value followed by
                      its bitwise complement (stm32flash dev_table.c areas; OpenBL
                      OPENBL_OB_Write reads the value words at offsets 0, 8, 16, ...)
  F0                  [RDP, ~RDP, USER, ~USER] (RM0091 4.1, Table 11)

Boot selection bits (CMSIS device headers; AN2606 Table 2 boot patterns):
  G0/C0  OPTR.nBOOT_SEL (bit 24): 1 = BOOT0 is the nBOOT0 bit (bit 26), the pin is IGNORED.
         Factory value 1 (RM0454 3.4.1: 0xDFFFE1AA): only an empty flash reaches the ROM.
  L4/G4/WL  OPTR.nSWBOOT0 (bit 26): 0 = BOOT0 is the nBOOT0 bit (bit 27), the pin is ignored.
  F0     USER bit 7 = BOOT_SEL (OBR bit 15): 0 = BOOT0 is nBOOT0 (USER bit 3).
  L47x/48x (0x415) has no such bits: the pin always counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from agent.stm32.chips import Chip

log = logging.getLogger(__name__)

_PIN_IGNORED_WHEN_SET = ("G0", "C0")  # nBOOT_SEL
_PIN_IGNORED_WHEN_CLEAR = ("L4", "G4", "WL")  # nSWBOOT0
_NO_BOOT_SELECT = frozenset({0x415})


@dataclass(frozen=True)
class UserOptions:
    """The first user option word as read, and what it means for BOOT0."""

    address: int
    raw: bytes  # 8 bytes (value, complement) or 4 on F0
    value: int  # OPTR, or the F0 USER byte
    register: str  # "OPTR" or "USER"
    pin_used: bool  # the BOOT0 pin decides; False: the nBOOT0 option bit decides
    nboot0: bool  # the nBOOT0 bit (used when the pin is ignored)
    select_bit: str  # name of the bit that chooses pin or option

    @property
    def boot0_source(self) -> str:
        """"pin", or what the option bit makes of BOOT0 when the pin is ignored."""
        if self.pin_used:
            return "pin"
        return "option nBOOT0=1 (main flash)" if self.nboot0 else "option nBOOT0=0 (bootloader)"

    def as_dict(self) -> dict[str, object]:
        """Plain data for `info --json` and `option-bytes --json`."""
        return {"address": f"0x{self.address:08X}", "raw": self.raw.hex(),
                "register": self.register, "value": f"0x{self.value:08X}",
                "boot0_source": self.boot0_source, "select_bit": self.select_bit,
                "pin_used": self.pin_used, "nboot0": self.nboot0}


def read_length(chip: Chip) -> int:
    """How many bytes of the option area hold the first word (0: no readable options)."""
    if chip.option_start == chip.option_end or chip.pid in _NO_BOOT_SELECT:
        return 0
    if chip.family == "F0":
        return 4
    if chip.family in _PIN_IGNORED_WHEN_SET + _PIN_IGNORED_WHEN_CLEAR:
        return 8
    return 0


def decode(chip: Chip, raw: bytes) -> Optional[UserOptions]:
    """What the first option word says about BOOT0; None where this chip has no such bit."""
    n = read_length(chip)
    if not n or len(raw) < n:
        return None
    if chip.family == "F0":
        user = raw[2]
        return UserOptions(chip.option_start, bytes(raw[:4]), user, "USER",
                           pin_used=bool(user & 0x80), nboot0=bool(user & 0x08),
                           select_bit="BOOT_SEL")
    value = int.from_bytes(raw[:4], "little")
    if int.from_bytes(raw[4:8], "little") != value ^ 0xFFFFFFFF:
        log.warning("option word at 0x%08X: complement %s does not match", chip.option_start,
                    raw[4:8].hex())
    if chip.family in _PIN_IGNORED_WHEN_SET:
        return UserOptions(chip.option_start, bytes(raw[:8]), value, "OPTR",
                           pin_used=not value >> 24 & 1, nboot0=bool(value >> 26 & 1),
                           select_bit="nBOOT_SEL")
    return UserOptions(chip.option_start, bytes(raw[:8]), value, "OPTR",
                       pin_used=bool(value >> 26 & 1), nboot0=bool(value >> 27 & 1),
                       select_bit="nSWBOOT0")


def boot_from_pin(chip: Chip, area: bytes) -> bytes:
    """The option area with the selection bit set so that the BOOT0 pin counts again.

    Everything else stays as read (complements of the changed word recomputed), so the
    bootloader, which rewrites the whole area (AN3155 3.6), keeps the other options.
    """
    opts = decode(chip, area)
    if opts is None:
        raise ValueError(f"{chip.name} has no boot selection bit in its option bytes")
    out = bytearray(area)
    if chip.family == "F0":
        user = out[2] | 0x80
        out[2], out[3] = user, user ^ 0xFF
        return bytes(out)
    value = opts.value & ~(1 << 24) if chip.family in _PIN_IGNORED_WHEN_SET else opts.value | 1 << 26
    out[0:8] = value.to_bytes(4, "little") + (value ^ 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


# Write protection (WRP) as the option area holds it, for `doctor`:
#   G0, L4, G4, WL  after OPTR come PCROP1(A)SR, PCROP1(A)ER, then WRP1AR and WRP1BR in 64-bit
#                   slots at +0x18 and +0x20 (CMSIS FLASH_TypeDef register order; OpenBL
#                   OPENBL_OB_Write writes the value words in that order). Each holds
#                   WRPxA_STRT (bits 7:0) and WRPxA_END (bits 23:16), page numbers; the area
#                   is off when STRT > END (HAL users disable it with STRT 0xFF, END 0x00;
#                   field widths per CMSIS: 8 bits on L4, 7 or fewer elsewhere [unverified]).
#   F0              WRP0..WRP3 bytes, each followed by its complement, at +8..+15; a 0 bit
#                   protects its group of pages (RM0091 4.1 Table 11, second-hand copy).
_WRP_AREAS = {"G0": 0x7F, "L4": 0xFF, "G4": 0x7F, "WL": 0x7F}  # family -> STRT/END mask
_WRP_OFFSET = 0x18


def wrp_span(chip: Chip) -> Optional[tuple[int, int]]:
    """(address, length) of the chip's write-protection option words; None: layout unknown."""
    if chip.family in _WRP_AREAS and chip.pid not in _NO_BOOT_SELECT:
        return chip.option_start + _WRP_OFFSET, 16
    if chip.family == "F0":
        return chip.option_start + 8, 8
    return None


def write_protected(chip: Chip, raw: bytes) -> list[str]:
    """The write-protected areas the WRP option words (from wrp_span) name; [] for none."""
    if chip.family == "F0":
        groups = [i * 8 + bit for i, byte in enumerate(raw[0:8:2]) for bit in range(8)
                  if not byte >> bit & 1]
        return [f"page group {g}" for g in groups]
    mask, found = _WRP_AREAS[chip.family], []
    for name, off in (("WRP1A", 0), ("WRP1B", 8)):
        word = int.from_bytes(raw[off:off + 4], "little")
        start, end = word & mask, word >> 16 & mask
        if start <= end:
            found.append(f"{name}: pages {start}-{end}")
    return found
