"""What a session reads from the chip beyond GET/GET_ID: each fact once, and only when asked.

Every fact here costs a READ_MEMORY, three round trips (AN3155 3.4: the command, the address
and the length each wait for their ACK before the next part may go out), so none is read at
entry: a flash that needs only one of them pays for one.

- `read_protected`: AN3155 3.4 / AN4221 2.5: with RDP active the bootloader NACKs the READ
  command itself, so the session's first READ tells, whatever it reads.
- `head`: the first flash bytes as they were at entry: the empty check looks at the first
  word (AN2606), and the skip check of a flash takes them as its first look at page 0.
- `flash_size`: the flash-size register (KiB) where the table knows one; a flash does not
  ask it when the image fits the smallest part of a single-bank PID (`flash_size_for`).
- `options`: the user option word that decides BOOT0; `dual_bank`: the bank mode where the
  page layout depends on it.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from agent.errors import ProtocolError, ReadProtected
from agent.stm32 import options as optbytes
from agent.stm32.bootloader import Bootloader
from agent.stm32.chips import Chip
from agent.stm32.options import UserOptions

log = logging.getLogger(__name__)

HEAD = 16  # bytes of the flash start read as `head`: the empty-check word and a first look
_UNREAD: Any = object()


class ChipFacts:
    """Lazily read facts of the chip behind one bootloader connection."""

    def __init__(self, bl: Bootloader, chip: Chip) -> None:
        self.bl, self.chip = bl, chip
        self._protected: Optional[bool] = None
        self._size: Optional[int] = None
        self._head: Optional[bytes] = None
        self._options: Any = _UNREAD
        self._dual: Any = _UNREAD

    def _read(self, address: int, n: int) -> Optional[bytes]:
        """One READ; None if refused. The first one of the session settles `read_protected`."""
        try:
            data = self.bl.read_memory(address, n)
        except ReadProtected:
            self._protected = True
            return None
        if self._protected is None:
            self._protected = False
        return data

    @property
    def read_protected(self) -> bool:
        """Read-out protection is active. Found by the session's first READ; asked before
        any, the flash-size register's (what the other operations need next) where the chip
        has one, else `head`'s (a flash reads `head` first: it needs those bytes)."""
        if self._protected is None and self.chip.flash_size_reg is not None:
            self._size = self._size or self._read_flash_size()
        if self._protected is None:
            self.head()
        return bool(self._protected)

    def head(self) -> bytes:
        """The first HEAD flash bytes as read at the first call (b"" when unreadable): ask
        before anything is written, the empty check and the skip check want them as found."""
        if self._head is None:
            self._head = b""
            try:
                self._head = self._read(self.chip.flash_start, HEAD) or b""
            except ProtocolError as err:
                log.debug("flash start not readable (%s)", err)
                if self._protected is None:
                    self._protected = False
        return self._head

    @property
    def blank_at_entry(self) -> bool:
        """The first flash word read 0xFFFFFFFF: what the empty check looks at (AN2606)."""
        return self.chip.empty_check and self.head()[:4] == b"\xff" * 4

    @property
    def flash_size(self) -> int:
        """Bytes of flash: the flash-size register, or the table's largest for this PID."""
        if self._size is None:
            self._size = self._read_flash_size()
        return self._size

    def flash_size_for(self, end: int) -> Optional[int]:
        """The flash size a plan for an image ending at `end` needs: None (the table's
        layout) when the image fits the smallest part of a single-bank PID, whose page
        numbers do not depend on the size; else the register's."""
        chip = self.chip
        if self._size is None and chip.banks is None and not chip.dual_bank \
                and chip.min_flash_size and end <= chip.flash_start + chip.min_flash_size:
            return None
        return self.flash_size

    def _read_flash_size(self) -> int:
        chip = self.chip
        if chip.flash_size_reg is None:
            return chip.flash_size
        try:
            raw = self._read(chip.flash_size_reg, 2)
        except ProtocolError as err:
            log.debug("flash-size register not readable (%s); using the table's %d KiB",
                      err, chip.flash_size // 1024)
            return chip.flash_size
        if raw is None:  # read-out protection
            return chip.flash_size
        kib = int.from_bytes(raw[:2], "little")
        if kib == 0 or kib == 0xFFFF or kib * 1024 > chip.flash_size:
            log.warning("flash-size register says %d KiB, outside what %s can have; using %d "
                        "KiB", kib, chip.name, chip.flash_size // 1024)
            return chip.flash_size
        return kib * 1024

    @property
    def options(self) -> Optional[UserOptions]:
        """The user option word that decides BOOT0 (None: none, unreadable, or RDP)."""
        if self._options is _UNREAD:
            self._options = None if self.read_protected else self._read_options()
        return self._options

    def reload_options(self) -> Optional[UserOptions]:
        """Read the option word again (after writing the option area)."""
        self._options = _UNREAD
        return self.options

    def _read_options(self) -> Optional[UserOptions]:
        chip = self.chip
        n = optbytes.read_length(chip)
        if not n:
            return None
        try:
            raw = self._read(chip.option_start, n)
        except ProtocolError as err:
            log.info("option bytes at 0x%08X not readable: %s", chip.option_start, err)
            return None
        return None if raw is None else optbytes.decode(chip, raw)

    @property
    def dual_bank(self) -> Optional[bool]:
        """Bank mode where the page layout depends on it: a dual-bank part with less flash
        than its PID's largest and a bank-selection option bit (user option word at
        option_start, taken from `options` where those are OPTR)."""
        if self._dual is _UNREAD:
            self._dual = None if self.read_protected else self._read_dual_bank()
        return self._dual

    def _read_dual_bank(self) -> Optional[bool]:
        chip = self.chip
        if chip.banks is None:  # one layout whatever the size or the options
            return chip.dual_bank_from(None)
        if not chip.bank2_unknown(self.flash_size, None):
            return chip.dual_bank_from(None)
        if optbytes.read_length(chip) and self.options is not None \
                and self.options.register == "OPTR":
            return chip.dual_bank_from(self.options.value)
        try:
            raw = self._read(chip.option_start, 4)
        except ProtocolError as err:
            log.warning("option bytes of %s not readable (%s): bank 2 is left alone",
                        chip.name, err)
            return None
        return None if raw is None else chip.dual_bank_from(int.from_bytes(raw, "little"))

    def bootloader_id(self) -> Optional[int]:
        """The bootloader ID byte where AN2606 names its address (None: unknown or RDP)."""
        if self.chip.bootloader_id_addr is None or self.read_protected:
            return None
        try:
            raw = self._read(self.chip.bootloader_id_addr, 1)
        except ProtocolError:
            return None
        return None if raw is None else raw[0]
