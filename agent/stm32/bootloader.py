"""AN3155 (USART) / AN4221 (I2C) ROM bootloader client.

CONTRACT (agent/flasher and agent/cli code against these names):

    bl = Bootloader(link, timeouts=Timeouts(), clock=time.monotonic, sleep=time.sleep,
                    i2c_erase_nack="verify")
    info = bl.connect()            # sync if link needs it, GET_VERSION, GET, GET_ID -> BootloaderInfo
    bl.info                        # the BootloaderInfo of the last connect()
    bl.supports("checksum")        # by function name, picked from the GET reply
    bl.read_memory(addr, n)        # n <= link.caps.max_read (<= 256); raises ReadProtected on NACK
                                   # at the command when RDP is set
    bl.write_memory(addr, data)    # len <= link.caps.max_write, padded by caller to chip alignment
    bl.erase_pages(pages)          # list of page/sector numbers; split at 511 (0x44) / 255 (0x43)
    bl.last_erase_unconfirmed      # True if an I2C erase's final ACK was missing (blank-check!)
    bl.mass_erase() / bank_erase(1 | 2)   # 0x44 FFFF/FFFE/FFFD, 0x43 FF; Unsupported if absent
    bl.checksum(addr, length)      # CRC-32 (STM32 CRC unit) via 0xA1 in the layout of the link
    bl.go(addr)
    bl.readout_protect() / readout_unprotect() / write_unprotect() / write_protect(sectors)
                                   # never called implicitly; the chip resets, we re-sync
    bl.resync()                    # after a LinkTimeout mid-command: get the bootloader listening
    bl.close()

Function names for supports(): get, get_version, get_id, read, go, write, erase,
write_protect, write_unprotect, readout_protect, readout_unprotect, checksum.

Every command goes through one choke point (`_command`, in wire.py with BUSY polling and
sync) that sends opcode + complement, waits for ACK and raises Nack / LinkTimeout; timeouts are
named fields of Timeouts. The protocol facts (opcodes, answers, XOR, CRC) are in protocol.py.

Quirks (constructor keywords):
    i2c_erase_nack="verify"  On a frame link, a missing or NACK final answer after an erase
                             (the seed's L432: "the last ACK is not returned ... a 0x1F is
                             returned but the erase succeeded") returns normally and sets
                             `last_erase_unconfirmed`, so the caller blank-checks the pages.
                             "strict" raises instead.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Optional, Callable, Iterable, Sequence

from agent.errors import LinkTimeout, Nack, ProtocolError, ReadProtected, Unsupported, UsageError
from agent.link.base import Link
from agent.stm32.protocol import (ACK, CRC_INIT, CRC_POLY, ERASE, ERASE_BANK1, ERASE_BANK2,
                                  ERASE_GLOBAL, ERASE_GLOBAL_N, ERASE_SPECIAL, GET, GET_ID,
                                  GET_VERSION, I2C_GET_N, MAX_ERASE_PAGES, OPCODES,
                                  pick_opcodes, with_xor, xor)
from agent.stm32.wire import BootloaderInfo, Timeouts, Wire

# BootloaderInfo and Timeouts are part of this module's contract (see above)
__all__ = ["Bootloader", "BootloaderInfo", "Timeouts"]

log = logging.getLogger(__name__)

# Erase deadlines sized from the chip table: a page may take this many times its typical erase
# time (datasheet maxima run 2-3x typical, more at low supply voltage), and a mass erase this
# many times the sum of its pages. The configured Timeouts stay the floor.
ERASE_MARGIN = 3.0
ERASE_MARGIN_MASS = 1.5


class Bootloader(Wire):
    """Client of one STM32 ROM bootloader over one link."""

    def __init__(
        self,
        link: Link,
        timeouts: Timeouts = Timeouts(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        *,
        i2c_erase_nack: str = "verify",
    ) -> None:
        if i2c_erase_nack not in ("verify", "strict"):
            raise UsageError(f"i2c_erase_nack must be 'verify' or 'strict', not "
                             f"{i2c_erase_nack!r}", code="bad_quirk")
        super().__init__(link, timeouts, clock, sleep)
        self.i2c_erase_nack = i2c_erase_nack
        self.last_erase_unconfirmed = False
        # A READ_MEMORY succeeded since connect(): RDP is off until the next reset, because
        # the bootloader changes RDP only through the option bytes, whose reload resets the
        # chip (AN3155 3.9, 3.10). A later NACK is noise on the line, never read protection.
        self.read_granted = False
        self._erase_ms: Optional[Callable[[int], float]] = None  # typical ms per page number
        self._mass_erase_s = 0.0  # deadline of a mass erase (typical x ERASE_MARGIN_MASS)

    # ---- connection -----------------------------------------------------------------------

    def connect(self) -> BootloaderInfo:
        """Sync (if the link needs it), GET_VERSION, GET, GET_ID -> BootloaderInfo."""
        self.info = None
        self._ops = {}
        self.read_granted = False
        if self.caps.needs_sync:
            self.sync()
        version, options = self._get_version()
        commands = self._get(version)
        self._ops = pick_opcodes(commands, self.caps.no_stretch)
        self.info = BootloaderInfo(version=version, option_bytes=options, commands=commands)
        pid = self._get_id()
        self.info = BootloaderInfo(version=version, option_bytes=options, commands=commands,
                                   pid=pid)
        log.info("bootloader V%d.%d, PID 0x%03X, commands %s", version >> 4, version & 15, pid,
                 self._offered())
        return self.info

    def _get_version(self) -> tuple[int, bytes]:
        what = "GET_VERSION (0x01)"
        self._command(GET_VERSION, what)
        n = 1 + self.caps.version_extra_bytes
        reply = self._read(n, self.timeouts.byte, what)
        if self.caps.byte_stream and reply[0] == ACK:
            # flashers.md 1.2: L412/L422 V13.1 sends an extra ACK after init, so the command's
            # real ACK arrives where the version should be
            reply = reply[1:] + self._read(1, self.timeouts.byte, what)
        self._wait_ack(what, self.timeouts.byte)
        return reply[0], bytes(reply[1:])

    def _get(self, version: int) -> tuple[int, ...]:
        what = "GET (0x00)"
        self._command(GET, what)
        if self.caps.byte_stream:
            count = self._read(1, self.timeouts.byte, what)[0]
            body = self._read(count + 1, self.timeouts.byte + self._line_time(count + 1), what)
        else:
            # the length is a guess from the version (stm32flash stm32_guess_len_cmd)
            frame = self._get_frame(GET, I2C_GET_N.get(version, 17), what)
            body = frame[1:frame[0] + 2]
        self._wait_ack(what, self.timeouts.byte)
        return tuple(body[1:])

    def _get_id(self) -> int:
        what = "GET_ID (0x02)"
        self._command(GET_ID, what)
        if self.caps.byte_stream:
            count = self._read(1, self.timeouts.byte, what)[0]
            body = self._read(count + 1, self.timeouts.byte, what)
        else:
            body = self._read(3, self.timeouts.byte, what)[1:]  # AN4221: N=1, PID MSB, LSB
        self._wait_ack(what, self.timeouts.byte)
        if len(body) < 2:
            raise ProtocolError(f"{what}: reply too short ({body.hex(' ')})")
        return (body[0] << 8) | body[1]

    def supports(self, name: str) -> bool:
        """True if GET offered an opcode for the function `name` (e.g. "checksum")."""
        if name not in OPCODES:
            raise UsageError(f"unknown bootloader function {name!r}; known: "
                             f"{', '.join(OPCODES)}", code="bad_function")
        return name in self._ops

    def opcode(self, name: str) -> int:
        """The opcode chosen for a function (Unsupported if GET did not offer it)."""
        return self._op(name)

    # ---- memory ---------------------------------------------------------------------------

    def read_memory(self, addr: int, n: int) -> bytes:
        """READ_MEMORY (0x11): n bytes from addr; ReadProtected if RDP refuses the command
        (only before the first read of the connection succeeded; a NACK after that is Nack)."""
        what = f"READ_MEMORY at 0x{addr:08X}"
        limit = min(256, self.caps.max_read)
        if not 1 <= n <= limit:
            raise UsageError(f"{what}: length {n} is outside 1..{limit}", code="bad_length")
        try:
            self._command(self._op("read"), what)
        except Nack as exc:
            if self.info is not None and self.info.pid and not self.read_granted:
                # AN3155 3.4: with RDP active the command itself is NACKed (some parts NACK twice)
                self._sleep(self.timeouts.byte / 10)
                self.link.flush_input()
                raise ReadProtected(
                    f"{what}: refused, read-out protection (RDP) is active. Removing it with "
                    f"`readout_unprotect` (stm32flash -k) MASS-ERASES the whole flash; do it "
                    f"explicitly only if losing the current firmware is acceptable") from exc
            raise
        self._address(addr, what)
        self._send(bytes([n - 1, (n - 1) ^ 0xFF]), f"{what}: length {n}")
        data = self._read(n, self.timeouts.byte + self._line_time(n), f"{what}: {n} data bytes")
        self.read_granted = True
        return data

    def write_memory(self, addr: int, data: bytes) -> None:
        """WRITE_MEMORY (0x31/0x32): data (padded with 0xFF to 4 bytes) at a 4-aligned addr."""
        what = f"WRITE_MEMORY at 0x{addr:08X}"
        limit = min(256, self.caps.max_write)
        if not 1 <= len(data) <= limit:
            raise UsageError(f"{what}: length {len(data)} is outside 1..{limit}",
                             code="bad_length")
        if addr % 4:
            raise UsageError(f"{what}: address is not a multiple of 4 (AN3155 3.6)",
                             code="bad_address")
        data = bytes(data) + b"\xff" * (-len(data) % 4)  # AN3155 3.6: N+1 a multiple of 4
        self._command(self._op("write"), what)
        self._address(addr, what)
        frame = with_xor(bytes([len(data) - 1]) + data)
        self._send(frame, f"{what}: {len(data)} data bytes",
                   self.timeouts.write_block + self._line_time(len(frame)))

    def go(self, addr: int) -> None:
        """GO (0x21): jump to addr (the application's vector table); the bootloader is left."""
        what = f"GO to 0x{addr:08X}"
        self._command(self._op("go"), what)
        self._address(addr, what)

    def checksum(self, addr: int, length: int) -> int:
        """0xA1: the STM32 CRC-32 of length bytes (multiple of 4) at addr, computed on chip."""
        what = f"CHECKSUM of 0x{addr:08X}+{length}"
        if length <= 0 or length % 4:
            raise UsageError(f"{what}: length must be a positive multiple of 4",
                             code="bad_length")
        self._command(self._op("checksum"), what)
        self._address(addr, what)
        if self.caps.byte_stream:
            # AN3155 3.13 (USART V3.3): size in 32-bit words, CRC polynomial, CRC initial
            # value, each with its XOR and its own ACK (flashers.md 4.3)
            self._send(with_xor(struct.pack(">I", length // 4)), f"{what}: size")
            self._send(with_xor(struct.pack(">I", CRC_POLY)), f"{what}: polynomial")
            self._send(with_xor(struct.pack(">I", CRC_INIT)), f"{what}: initial value")
        else:
            # AN4221 2.20 (I2C V1.2, no-stretch): size in bytes, a non-zero multiple of 4
            self._send(with_xor(struct.pack(">I", length)), f"{what}: size")
        # both: the chip computes (I2C answers BUSY meanwhile), then ACK, CRC MSB first, XOR
        self._wait_ack(f"{what}: result", self.timeouts.checksum)
        reply = self._read(5, self.timeouts.byte, f"{what}: CRC")
        if xor(reply) != 0:
            raise ProtocolError(f"{what}: CRC reply {reply.hex(' ')} fails its checksum")
        return struct.unpack(">I", reply[:4])[0]

    # ---- erase ----------------------------------------------------------------------------

    def _erase_limit(self, extended: bool) -> int:
        # AN4221 2.7: at most 512 pages per erase; stm32flash: "STM32L152 cannot erase more
        # than 512 pages ... even 511 for STM32L082". 0x43: N+1 <= 255, N=255 is the global
        # erase (AN3155 3.7). A frame link must also fit 2 bytes a page + XOR in one frame.
        limit = MAX_ERASE_PAGES - 1 if extended else ERASE_GLOBAL_N
        if self.caps.max_frame is not None:
            limit = min(limit, (self.caps.max_frame - 1) // 2)
        return limit

    def erase_pages(self, pages: Iterable[int]) -> None:
        """Erase the given page/sector numbers, split into as few commands as allowed."""
        pages = list(pages)
        op = self._op("erase")
        extended = op != ERASE
        top = ERASE_SPECIAL - 1 if extended else 0xFF  # ERASE: one byte per page number
        bad = [p for p in pages if not isinstance(p, int) or not 0 <= p <= top]
        if bad or not pages:
            raise UsageError(f"ERASE: page numbers must be 0..{top}, got {bad or 'none'}",
                             code="bad_pages")
        self.last_erase_unconfirmed = False
        limit = self._erase_limit(extended)
        for i in range(0, len(pages), limit):
            chunk = pages[i:i + limit]
            self._erase_chunk(op, chunk)

    def size_erase_deadlines(self, erase_ms: Callable[[int], float], pages: int) -> None:
        """Let erase deadlines follow the chip's typical erase times where they exceed the
        configured floor (a 128 KiB F4 sector takes seconds, a 2 KiB L4 page 22 ms)."""
        self._erase_ms = erase_ms
        self._mass_erase_s = ERASE_MARGIN_MASS * sum(erase_ms(p) for p in range(pages)) / 1000

    def _page_deadline(self, page: int) -> float:
        floor = self.timeouts.erase_page
        if self._erase_ms is None:
            return floor
        return max(floor, ERASE_MARGIN * self._erase_ms(page) / 1000)

    def _erase_chunk(self, op: int, chunk: list[int]) -> None:
        what = f"ERASE (0x{op:02X}) of pages {chunk[0]}..{chunk[-1]} ({len(chunk)} pages)"
        self._command(op, what)
        timeout = sum(self._page_deadline(p) for p in chunk)
        if op == ERASE:
            body = bytes([len(chunk) - 1]) + bytes(chunk)
            self.link.write(with_xor(body))
            return self._erase_answer(what, timeout)
        count = struct.pack(">H", len(chunk) - 1)
        pages = b"".join(struct.pack(">H", p) for p in chunk)
        if self.caps.erase_count_checksum:
            # AN4221 2.x: the count has its own checksum and ACK before the page list
            self._send(with_xor(count), f"{what}: page count")
            self.link.write(with_xor(pages))
        else:
            self.link.write(with_xor(count + pages))
        self._erase_answer(what, timeout + self._line_time(len(pages)))

    def _erase_answer(self, what: str, timeout: float) -> None:
        """The final answer of an erase, with the I2C missing-ACK quirk (seed-notes)."""
        try:
            self._wait_ack(what, timeout)
        except (Nack, LinkTimeout) as exc:
            if self.caps.byte_stream or self.i2c_erase_nack == "strict":
                raise
            log.warning("%s: final answer missing (%s); continuing, pages must be blank-checked",
                        what, exc)
            self.last_erase_unconfirmed = True

    def _special_erase(self, code: int, what: str) -> None:
        op = self._op("erase")
        if op == ERASE:
            if code != ERASE_GLOBAL:
                raise Unsupported(f"{what}: needs Extended Erase (0x44), the bootloader offers "
                                  f"only 0x43")
            self._command(op, what)
            self.link.write(bytes([ERASE_GLOBAL_N, 0x00]))  # AN3155 3.7: N=255 means global erase
        else:
            self._command(op, what)
            self.link.write(with_xor(struct.pack(">H", code)))  # AN3155 3.8 special codes
        self.last_erase_unconfirmed = False
        try:
            self._erase_answer(what, max(self.timeouts.mass_erase, self._mass_erase_s))
        except Nack as exc:
            raise Nack(f"{what}: refused; the chip may not allow a global erase (L0/L1) or "
                       f"is protected: erase the pages one by one instead") from exc

    def mass_erase(self) -> None:
        """Erase the whole flash (0x44 FFFF / 0x43 FF)."""
        self._special_erase(ERASE_GLOBAL, "MASS ERASE")

    def bank_erase(self, bank: int) -> None:
        """Erase bank 1 or 2 (0x44 FFFE / FFFD) on dual-bank parts."""
        if bank not in (1, 2):
            raise UsageError(f"bank must be 1 or 2, not {bank}", code="bad_bank")
        code = ERASE_BANK1 if bank == 1 else ERASE_BANK2
        self._special_erase(code, f"BANK {bank} ERASE")

    # ---- protection (explicit only; the chip resets afterwards) -----------------------------

    def _protection(self, name: str, timeout: float, frames: Sequence[bytes] = (),
                    erases: bool = False) -> None:
        what = name.upper().replace("_", " ")
        self._command(self._op(name), what)
        for frame in frames[:-1]:
            self._send(frame, f"{what}: count")
        if frames:
            self.link.write(frames[-1])
        started = self._clock()
        self._wait_ack(f"{what}: completion", timeout)
        # AN3155 3.9-3.12, OpenBL: the last ACK, then the option reload resets the chip
        self.info = None
        self.read_granted = False
        wait = self.timeouts.reset_settle
        erase_s = self._mass_erase_s / ERASE_MARGIN_MASS
        if erases and self._clock() - started < erase_s / 2:
            # OpenBL sends both ACKs of Readout Unprotect first and only then mass-erases
            # (AN3155 3.12: wait the mass-erase time after the second ACK); where the ACK
            # came after the erase (the AN text's order) only the reset remains
            wait = max(wait, erase_s - (self._clock() - started))
        back = self.timeouts.sync * 20 + (self._mass_erase_s if erases else 0.0)
        self._await_reset(what, wait, back)

    def readout_protect(self) -> None:
        """Set RDP level 1 (0x82/0x83); the chip resets and needs connect() again."""
        self._protection("readout_protect", self.timeouts.byte * 2)

    def readout_unprotect(self) -> None:
        """Remove RDP (0x92/0x93): this MASS-ERASES the flash; the chip then resets."""
        self._protection("readout_unprotect", max(self.timeouts.unprotect, self._mass_erase_s),
                         erases=True)

    def write_unprotect(self) -> None:
        """Remove write protection from all sectors (0x73/0x74); the chip then resets."""
        self._protection("write_unprotect", self.timeouts.byte * 2)

    def write_protect(self, sectors: Sequence[int]) -> None:
        """Write-protect the given sectors (0x63/0x64); the chip then resets."""
        if not sectors or any(not 0 <= s <= 0xFF for s in sectors) or len(sectors) > 256:
            raise UsageError("WRITE PROTECT needs 1..256 sector numbers 0..255",
                             code="bad_pages")
        count = len(sectors) - 1
        if self.caps.byte_stream:  # AN3155 3.9: N, the codes, XOR of N and the codes
            frames = (with_xor(bytes([count]) + bytes(sectors)),)
        else:  # AN4221 2.8 / OpenBL: [N, ~N] and its ACK, then the codes and their XOR
            frames = (bytes([count, count ^ 0xFF]), with_xor(bytes(sectors)))
        self._protection("write_protect", self.timeouts.byte * 2, frames)

    def close(self) -> None:
        """Release the link."""
        self.link.close()
