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
