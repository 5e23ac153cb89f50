"""Device side of the ROM bootloader command set (AN3155 USART, AN4221 I2C) for the simulator.

One `Bootrom` session serves one interface from one boot. It is a generator driven by what the
host sends: a handler does `data = yield n` to receive the next n bytes. On UART the bytes are a
stream; on I2C each host write is one frame, and a frame must hold exactly the packet the
protocol expects at that point (a short frame or extra bytes are answered with NACK).
Written from the application notes only; it shares no code with the host-side client.
"""

from __future__ import annotations

import logging
from functools import reduce
from typing import TYPE_CHECKING, Callable, Generator, Iterable

from agent.errors import ProtocolError
from agent.stm32.protocol import stm32_crc32
from agent.sim.memory import RDP_LEVEL0, RDP_LEVEL1, MemoryRefused

if TYPE_CHECKING:
    from agent.sim.core import SimChip

log = logging.getLogger(__name__)

ACK, NACK, BUSY = 0x79, 0x1F, 0x76
MAX_ERASE_PAGES = 512  # AN4221 3.7: at most 512 pages per erase; stm32flash applies it to UART too

Gen = Generator[int, bytes, None]

# AN3155 2 (Table 2): the V3.x command list; V2.x offers Erase 0x43 instead of Extended Erase 0x44
_UART_BASE = (0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x63, 0x73, 0x82, 0x92)
# AN4221 2 (Table 2): V1.0 set; V1.1 adds the no-stretch variants; V1.2 adds 0xA1
_I2C_BASE = (0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92)
_I2C_NO_STRETCH = (0x32, 0x45, 0x64, 0x74, 0x83, 0x93)
NO_STRETCH_OPS = frozenset(_I2C_NO_STRETCH + (0xA1,))


def xor(data: bytes) -> int:
    """XOR of all bytes: the checksum of every AN3155/AN4221 packet."""
    return reduce(lambda a, b: a ^ b, data, 0)


def command_set(iface: str, version: int) -> tuple[int, ...]:
    """Opcodes a bootloader of this protocol version lists in its GET answer."""
    if iface == "uart":
        erase = (0x44,) if version >= 0x30 else (0x43,)
        extra = (0xA1,) if version >= 0x33 else ()  # AN3155 3.13: Get Checksum from V3.3
        return tuple(sorted(_UART_BASE + erase + extra))
    ops = _I2C_BASE
    if version >= 0x11:
        ops += _I2C_NO_STRETCH
    if version >= 0x12:
        ops += (0xA1,)
    return tuple(sorted(ops))


class Nack(ProtocolError):
    """Inside the simulator: the bootloader refuses; the session answers NACK."""

    code = "sim_nack"


class Bootrom:
    """The command loop of one boot, serving one interface ("uart" or "i2c")."""

    def __init__(self, chip: SimChip, iface: str) -> None:
        self.chip = chip
        self.mem = chip.mem
        self.iface = iface
        self.version = chip.chip.uart_version if iface == "uart" else chip.chip.i2c_version
        self.commands = command_set(iface, self.version)
        self.at_top = True
        self._frame = bytearray()  # I2C: unread rest of the current frame
        self._buf = bytearray()  # UART: bytes received but not yet asked for
        self._gen = self._serve()
        self._want = next(self._gen)

    # -- transport side -------------------------------------------------------------------

    def feed_byte(self, byte: int) -> None:
        """UART: one received byte."""
        self._buf.append(byte)
        while len(self._buf) >= self._want:
            chunk = bytes(self._buf[:self._want])
            del self._buf[:self._want]
            self._want = self._gen.send(chunk)

    def feed_frame(self, frame: bytes) -> None:
        """I2C: one complete write transaction."""
        self._frame = bytearray(frame)
        while self._frame:
            if len(self._frame) < self._want:
                self._violation(f"frame of {len(frame)} bytes where {self._want} were expected")
                return
            chunk = bytes(self._frame[:self._want])
            del self._frame[:self._want]
            self._want = self._gen.send(chunk)

    def _violation(self, why: str) -> None:
        """Abandon the command in progress and answer NACK."""
        self._frame.clear()
        self._gen.close()
        self._gen = self._serve()
        self._want = next(self._gen)
        self.chip.note("nack", None, why)
        self.chip.emit(bytes([NACK]))

    def emit(self, data: bytes, *, then: Callable[[], None] | None = None) -> None:
        """Send an immediate answer; on I2C the frame must have been used up exactly."""
        if self.iface == "i2c" and self._frame:
            raise Nack(f"frame carries {len(self._frame)} byte(s) more than the packet")
        self.chip.emit(data, then=then)

    def answer(self, data: bytes, seconds: float, op: int, *, erase: bool = False,
               then: Callable[[], None] | None = None) -> None:
        """Final answer of an operation that takes `seconds` of simulated chip time."""
        if self.iface == "i2c" and self._frame:
            raise Nack(f"frame carries {len(self._frame)} byte(s) more than the packet")
        no_stretch = self.iface == "i2c" and op in NO_STRETCH_OPS
        self.chip.emit(data, delay=self.chip.op_time(seconds, erase=erase),
                       no_stretch=no_stretch, then=then)

    # -- command loop -----------------------------------------------------------------------

    def _serve(self) -> Gen:
        handlers = {
            0x00: self._get, 0x01: self._get_version, 0x02: self._get_id, 0x11: self._read,
            0x21: self._go, 0x31: self._write, 0x32: self._write, 0x43: self._erase,
            0x44: self._ext_erase, 0x45: self._ext_erase, 0x63: self._wp, 0x64: self._wp,
            0x73: self._wup, 0x74: self._wup, 0x82: self._rp, 0x83: self._rp,
            0x92: self._rup, 0x93: self._rup, 0xA1: self._checksum,
        }
        while True:
            self.at_top = True
            op, comp = yield 2
            self.at_top = False
            try:
                if op ^ comp != 0xFF:
                    raise Nack(f"command 0x{op:02X} with complement 0x{comp:02X}")
                if op not in self.commands:
                    raise Nack(f"command 0x{op:02X} is not offered")
                yield from handlers[op](op)
            except (Nack, MemoryRefused) as err:
                self._frame.clear()
                self.chip.note("nack", op, str(err))
                self.chip.emit(bytes([NACK]))

    def _unprotected(self) -> None:
        # AN3155 Table 2 note: with RDP active only Get, Get Version, Get ID (and Readout
        # Unprotect) are served; everything else is NACKed right after the command bytes
        if self.chip.read_protected:
            raise Nack("read-out protection is active")

    def _addr(self) -> Generator[int, bytes, int]:
        raw = yield 5
        if xor(raw[:4]) != raw[4]:
            raise Nack("address checksum mismatch")
        return int.from_bytes(raw[:4], "big")

    def _word(self) -> Generator[int, bytes, int]:
        raw = yield 5
        if xor(raw[:4]) != raw[4]:
            raise Nack("checksum mismatch")
        return int.from_bytes(raw[:4], "big")

    # -- identification ---------------------------------------------------------------------

    def _get(self, op: int) -> Gen:
        self.emit(bytes([ACK, len(self.commands), self.version, *self.commands, ACK]))
        return
        yield  # pragma: no cover

    def _get_version(self, op: int) -> Gen:
        # AN3155 3.2: version + two 0x00 legacy bytes; AN4221 2.3: version byte only
        extra = b"\x00\x00" if self.iface == "uart" else b""
        self.emit(bytes([ACK, self.version]) + extra + bytes([ACK]))
        return
        yield  # pragma: no cover

    def _get_id(self, op: int) -> Gen:
        pid = self.chip.chip.pid
        self.emit(bytes([ACK, 1, pid >> 8, pid & 0xFF, ACK]))
        return
        yield  # pragma: no cover

    # -- memory -----------------------------------------------------------------------------

    def _read(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        addr = yield from self._addr()
        self.mem.region_at(addr)
        self.emit(bytes([ACK]))
        n, comp = yield 2
        if n ^ comp != 0xFF:
            raise Nack("length complement mismatch")
        data = self.mem.read(addr, n + 1)
        self.chip.note("read", addr, n + 1)
        self.emit(bytes([ACK]) + data)

    def _go(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        addr = yield from self._addr()
        region = self.mem.region_at(addr)
        if region not in (self.mem.flash_region, self.mem.ram):
            raise Nack(f"GO to 0x{addr:08X} in {region.name}")
        self.emit(bytes([ACK]), then=lambda: self.chip.jump(addr))

    def _write(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        addr = yield from self._addr()
        region = self.mem.check_write_start(addr)
        self.emit(bytes([ACK]))
        count = yield 1
        rest = yield count[0] + 2
        data = rest[:-1]
        if xor(count + rest) != 0:
            raise Nack("data checksum mismatch")
        if len(data) % 4:
            raise Nack(f"N+1 = {len(data)} is not a multiple of 4 (AN3155 3.6)")
        if self.chip.fault_write_nack():
            raise Nack("fault injection: nack-write")
        self.mem.write(addr, data, strict=self.chip.strict)
        self.chip.note("write", addr, len(data))
        seconds = len(data) / max(self.chip.chip.write_align, 4) * self.chip.chip.program_us_per_word / 1e6
        if region is self.mem.options:
            # AN3155 3.6: writing option bytes ends in a system reset that reloads them
            self.answer(bytes([ACK]), seconds, op, then=lambda: self.chip.system_reset(obl=True))
        else:
            self.answer(bytes([ACK]), seconds if region is self.mem.flash_region else 0.0, op)

    # -- erase ------------------------------------------------------------------------------

    def _erase(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        count = yield 1
        if count[0] == 0xFF:  # AN3155 3.7: 0xFF 0x00 = global erase
            check = yield 1
            if check[0] != 0x00:
                raise Nack("global erase checksum mismatch")
            yield from self._do_erase(op, None)
            return
        rest = yield count[0] + 2
        if xor(count + rest) != 0:
            raise Nack("page list checksum mismatch")
        yield from self._do_erase(op, list(rest[:-1]))

    def _ext_erase(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        if self.iface == "i2c":
            # AN4221 2.7: the page count travels in its own frame with its own checksum
            head = yield 3
            if head[2] != head[0] ^ head[1]:
                raise Nack("page count checksum mismatch")
            n = int.from_bytes(head[:2], "big")
            if n < 0xFFF0:
                self._check_count(n)
                self.emit(bytes([ACK]))
                body = yield 2 * (n + 1) + 1
                if xor(body[:-1]) != body[-1]:
                    raise Nack("page list checksum mismatch")
        else:
            head = yield 2
            n = int.from_bytes(head, "big")
            if n < 0xFFF0:
                self._check_count(n)
                body = yield 2 * (n + 1) + 1
                if xor(head + body) != 0:
                    raise Nack("page list checksum mismatch")
            else:
                check = yield 1
                if check[0] != head[0] ^ head[1]:
                    raise Nack("special erase checksum mismatch")
        if n >= 0xFFF0:
            yield from self._special_erase(op, n)
            return
        pages = [int.from_bytes(body[i:i + 2], "big") for i in range(0, 2 * (n + 1), 2)]
        yield from self._do_erase(op, pages)

    def _check_count(self, n: int) -> None:
        if n + 1 > MAX_ERASE_PAGES:
            raise Nack(f"{n + 1} pages in one erase (at most {MAX_ERASE_PAGES})")

    def _special_erase(self, op: int, n: int) -> Gen:
        # AN3155 3.8: 0xFFFF global, 0xFFFE bank 1, 0xFFFD bank 2; 0xFFFC..0xFFF0 reserved
        if n == 0xFFFF:
            yield from self._do_erase(op, None)
        elif n in (0xFFFE, 0xFFFD) and self.chip.chip.dual_bank:
            yield from self._do_erase(op, self.mem.bank_pages(1 if n == 0xFFFE else 2))
        else:
            raise Nack(f"special erase 0x{n:04X} not available on this chip")

    def _do_erase(self, op: int, pages: list[int] | None) -> Gen:
        if pages is None:
            if not self.chip.chip.mass_erase:
                raise Nack("global erase is not supported by this chip")
            pages = list(range(len(self.mem.pages)))
            self.mem.erase_pages(pages)
            self.chip.note("mass_erase")
        else:
            self.chip.note("erase", self.mem.erase_pages(pages))
        seconds = self._erase_seconds(pages)
        if self.iface == "i2c" and self.chip.faults.i2c_erase_no_ack:
            # seed-notes.md: the L432 erases but never sends the final ACK; polls read NACK
            self.chip.i2c_swallow_answer()
            return
        self.answer(bytes([ACK]), seconds, op, erase=True)
        return
        yield  # pragma: no cover

    def _erase_seconds(self, pages: Iterable[int]) -> float:
        """Typical erase time from the chip table: F2/F4/F7 sectors of 16..256 KiB differ."""
        return sum(self.chip.chip.erase_ms(p) for p in pages) / 1000

    # -- protection -------------------------------------------------------------------------

    def _reset_after(self) -> Callable[[], None]:
        # AN3155 3.9-3.12: WP, WUP, RDP and RUP end with ACK and a system reset that reloads
        # the option bytes; the host must connect (sync) again afterwards
        return lambda: self.chip.system_reset(obl=True)

    def _wp(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        if self.iface == "i2c":
            head = yield 2
            if head[0] != head[1]:
                raise Nack("sector count checksum mismatch")
            self.emit(bytes([ACK]))
            body = yield head[0] + 2
            ok = xor(body[:-1]) == body[-1]
        else:
            head = yield 1
            body = yield head[0] + 2
            ok = xor(head + body) == 0
        if not ok:
            raise Nack("sector list checksum mismatch")
        sectors = list(body[:-1])
        if any(s >= len(self.mem.pages) for s in sectors):
            raise Nack("sector number out of range")
        self.mem.write_protected.update(sectors)
        self.chip.note("write_protect", sectors)
        self.answer(bytes([ACK]), 0.01, op, then=self._reset_after())

    def _wup(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        self.mem.write_protected.clear()
        self.chip.note("write_unprotect")
        self.answer(bytes([ACK]), 0.01, op, then=self._reset_after())
        return
        yield  # pragma: no cover

    def _rp(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        self.mem.options.data[0] = RDP_LEVEL1
        self.chip.note("readout_protect")
        self.answer(bytes([ACK]), 0.01, op, then=self._reset_after())
        return
        yield  # pragma: no cover

    def _rup(self, op: int) -> Gen:
        # AN3155 3.12: ACK, mass erase, RDP back to level 0, second ACK, system reset
        self.emit(bytes([ACK]))
        self.mem.write_protected.clear()
        self.mem.mass_erase()
        self.mem.options.data[0] = RDP_LEVEL0
        self.chip.note("readout_unprotect")
        seconds = self._erase_seconds(range(len(self.mem.pages)))
        self.answer(bytes([ACK]), seconds, op, erase=True, then=self._reset_after())
        return
        yield  # pragma: no cover

    # -- checksum ---------------------------------------------------------------------------

    def _checksum(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        addr = yield from self._addr()
        if not self.mem.flash_region.holds(addr):
            raise Nack(f"checksum start 0x{addr:08X} is not in flash")
        self.emit(bytes([ACK]))
        size = yield from self._word()
        poly, init = 0x04C11DB7, 0xFFFFFFFF
        if self.iface == "uart":
            nbytes = size * 4  # AN3155 3.13: size in 32-bit words, then polynomial and init
            self._check_crc_range(addr, nbytes)
            self.emit(bytes([ACK]))
            poly = yield from self._word()
            self.emit(bytes([ACK]))
            init = yield from self._word()
            # AN3155 3.13 (flashers.md 4.3): the initial value is ACKed like the other
            # parameters; once computed, the result comes as ACK, CRC, XOR
            self.emit(bytes([ACK]))
        else:
            nbytes = size  # AN4221 2.20: size in bytes, a non-zero multiple of 4
            if size % 4:
                raise Nack(f"checksum size {size} is not a multiple of 4")
            self._check_crc_range(addr, nbytes)
            self.emit(bytes([ACK]))  # then BUSY until the result: ACK, CRC, xor
        crc = stm32_crc32(self.mem.read(addr, nbytes), poly=poly, init=init).to_bytes(4, "big")
        self.chip.note("checksum", addr, nbytes)
        self.answer(bytes([ACK]) + crc + bytes([xor(crc)]), 0.0, op)

    def _check_crc_range(self, addr: int, nbytes: int) -> None:
        if nbytes == 0 or not self.mem.flash_region.holds(addr, nbytes):
            raise Nack(f"checksum range 0x{addr:08X}+{nbytes} is not inside flash")
