"""The command handlers of the simulated ROM bootloader, written from AN3155 (USART) and AN4221 (I2C).

`Bootrom` is one boot's session: framing.py takes the packets in and the answers out, each
handler here does what one command does to the simulated chip, as strictly as silicon: bad
checksums, misaligned writes and commands refused by read-out protection are answered with
NACK (`NackReason`). The protocol facts come from agent.stm32.protocol, shared with the
host-side client; no other code is.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from agent.errors import NackReason
from agent.sim.framing import Device, Framing, Gen
from agent.sim.memory import RDP_LEVEL0, RDP_LEVEL1
from agent.stm32.protocol import (ACK, CRC_INIT, CRC_POLY, ERASE, ERASE_BANK1, ERASE_BANK2,
                                  ERASE_GLOBAL, ERASE_GLOBAL_N, ERASE_SPECIAL, EXTENDED_ERASE,
                                  EXTENDED_ERASE_NS, GET, GET_CHECKSUM, GET_ID, GET_VERSION, GO,
                                  MAX_ERASE_PAGES, READ_MEMORY, READOUT_PROTECT,
                                  READOUT_PROTECT_NS, READOUT_UNPROTECT, READOUT_UNPROTECT_NS,
                                  WRITE_MEMORY, WRITE_MEMORY_NS, WRITE_PROTECT,
                                  WRITE_PROTECT_NS, WRITE_UNPROTECT, WRITE_UNPROTECT_NS,
                                  stm32_crc32, xor)

log = logging.getLogger(__name__)


class Bootrom(Framing):
    """The command set of one boot, serving one interface ("uart" or "i2c")."""

    def __init__(self, chip: Device, iface: str) -> None:
        super().__init__(chip, iface, {
            GET: self._get, GET_VERSION: self._get_version, GET_ID: self._get_id,
            READ_MEMORY: self._read, GO: self._go, WRITE_MEMORY: self._write,
            WRITE_MEMORY_NS: self._write, ERASE: self._erase, EXTENDED_ERASE: self._ext_erase,
            EXTENDED_ERASE_NS: self._ext_erase, WRITE_PROTECT: self._wp,
            WRITE_PROTECT_NS: self._wp, WRITE_UNPROTECT: self._wup, WRITE_UNPROTECT_NS: self._wup,
            READOUT_PROTECT: self._rp, READOUT_PROTECT_NS: self._rp,
            READOUT_UNPROTECT: self._rup, READOUT_UNPROTECT_NS: self._rup,
            GET_CHECKSUM: self._checksum,
        })

    # -- identification ---------------------------------------------------------------------

    def _get(self, op: int) -> Gen:
        self.emit(bytes([ACK]), bytes([len(self.commands), self.version, *self.commands]),
                  bytes([ACK]))
        yield from ()  # receives nothing more, but every handler is a generator

    def _get_version(self, op: int) -> Gen:
        # AN3155 3.2: version + two 0x00 legacy bytes; AN4221 2.3: version byte only
        extra = b"\x00\x00" if self.iface == "uart" else b""
        self.emit(bytes([ACK]), bytes([self.version]) + extra, bytes([ACK]))
        yield from ()  # receives nothing more, but every handler is a generator

    def _get_id(self, op: int) -> Gen:
        pid = self.chip.chip.pid
        self.emit(bytes([ACK]), bytes([1, pid >> 8, pid & 0xFF]), bytes([ACK]))
        yield from ()  # receives nothing more, but every handler is a generator

    # -- memory -----------------------------------------------------------------------------

    def _read(self, op: int) -> Gen:
        self._unprotected()
        if self.chip.fault_read_nack():
            raise NackReason("fault: nack-read")
        self.emit(bytes([ACK]))
        addr = yield from self._word("address")
        self.mem.region_at(addr)
        self.emit(bytes([ACK]))
        n, comp = yield 2
        if n ^ comp != 0xFF:
            raise NackReason("length complement mismatch")
        data = self.mem.read(addr, n + 1)
        self.chip.note("read", addr, n + 1)
        self.emit(bytes([ACK]), data)

    def _go(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        addr = yield from self._word("address")
        region = self.mem.region_at(addr)
        if region not in (self.mem.flash_region, self.mem.ram):
            raise NackReason(f"GO to 0x{addr:08X} in {region.name}")
        self.emit(bytes([ACK]), then=lambda: self.chip.jump(addr))

    def _write(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        addr = yield from self._word("address")
        region = self.mem.check_write_start(addr)
        self.emit(bytes([ACK]))
        count = yield 1
        rest = yield count[0] + 2
        data = rest[:-1]
        if xor(count + rest) != 0:
            raise NackReason("data checksum mismatch")
        if len(data) % 4:
            raise NackReason(f"N+1 = {len(data)} is not a multiple of 4 (AN3155 3.6)")
        if self.chip.fault_write_nack():
            raise NackReason("fault injection: nack-write")
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
        if count[0] == ERASE_GLOBAL_N:  # AN3155 3.7: 0xFF 0x00 = global erase
            check = yield 1
            if check[0] != 0x00:
                raise NackReason("global erase checksum mismatch")
            self._do_erase(op, None)
            return
        rest = yield count[0] + 2
        if xor(count + rest) != 0:
            raise NackReason("page list checksum mismatch")
        self._do_erase(op, list(rest[:-1]))

    def _ext_erase(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        if self.iface == "i2c":
            # AN4221 2.7: the page count travels in its own frame with its own checksum
            head = yield 3
            if head[2] != head[0] ^ head[1]:
                raise NackReason("page count checksum mismatch")
            n = int.from_bytes(head[:2], "big")
            if n < ERASE_SPECIAL:
                self._check_count(n)
                self.emit(bytes([ACK]))
                body = yield 2 * (n + 1) + 1
                if xor(body[:-1]) != body[-1]:
                    raise NackReason("page list checksum mismatch")
        else:
            head = yield 2
            n = int.from_bytes(head, "big")
            if n < ERASE_SPECIAL:
                self._check_count(n)
                body = yield 2 * (n + 1) + 1
                if xor(head + body) != 0:
                    raise NackReason("page list checksum mismatch")
            else:
                check = yield 1
                if check[0] != head[0] ^ head[1]:
                    raise NackReason("special erase checksum mismatch")
        if n >= ERASE_SPECIAL:
            self._special_erase(op, n)
            return
        pages = [int.from_bytes(body[i:i + 2], "big") for i in range(0, 2 * (n + 1), 2)]
        self._do_erase(op, pages)

    def _check_count(self, n: int) -> None:
        if n + 1 > MAX_ERASE_PAGES:
            raise NackReason(f"{n + 1} pages in one erase (at most {MAX_ERASE_PAGES})")

    def _special_erase(self, op: int, n: int) -> None:
        # AN3155 3.8: 0xFFFF global, 0xFFFE bank 1, 0xFFFD bank 2; 0xFFFC..0xFFF0 reserved
        if n == ERASE_GLOBAL:
            self._do_erase(op, None)
        elif n in (ERASE_BANK1, ERASE_BANK2) and self.chip.chip.dual_bank:
            self._do_erase(op, self.mem.bank_pages(1 if n == ERASE_BANK1 else 2))
        else:
            raise NackReason(f"special erase 0x{n:04X} not available on this chip")

    def _do_erase(self, op: int, pages: list[int] | None) -> None:
        if pages is None:
            if not self.chip.chip.mass_erase:
                raise NackReason("global erase is not supported by this chip")
            pages = list(self.mem.pages)
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
            # OpenBL OPENBL_I2C_WriteProtect (AN4221 2.8): [N, ~N] -> ACK, then the N+1
            # sector codes and the XOR of the codes alone (N is not in it) -> ACK
            head = yield 2
            if head[1] != head[0] ^ 0xFF:
                raise NackReason("sector count complement mismatch")
            self.emit(bytes([ACK]))
            body = yield head[0] + 2
            ok = xor(body[:-1]) == body[-1]
        else:  # AN3155 3.9: one frame N, codes, XOR of N and the codes
            head = yield 1
            body = yield head[0] + 2
            ok = xor(head + body) == 0
        if not ok:
            raise NackReason("sector list checksum mismatch")
        sectors = list(body[:-1])
        if any(s not in self.mem.pages for s in sectors):
            raise NackReason("sector number out of range")
        self.mem.write_protected.update(sectors)
        self.chip.note("write_protect", sectors)
        self.answer(bytes([ACK]), 0.01, op, then=self._reset_after())

    def _wup(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        self.mem.write_protected.clear()
        self.chip.note("write_unprotect")
        self.answer(bytes([ACK]), 0.01, op, then=self._reset_after())
        yield from ()  # receives nothing more, but every handler is a generator

    def _rp(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        self.mem.options.data[0] = RDP_LEVEL1
        self.chip.note("readout_protect")
        self.answer(bytes([ACK]), 0.01, op, then=self._reset_after())
        yield from ()  # receives nothing more, but every handler is a generator

    def _rup(self, op: int) -> Gen:
        # OpenBL OPENBL_USART/I2C_ReadoutUnprotect: ACK, ACK, and only then the RDP regression
        # (mass erase, and from USART V2.2 a RAM wipe, AN3155 Table 3) and the reset: the
        # chip is deaf for the mass-erase time after the second ACK. The AN3155 3.12 / AN4221
        # 2.11 text orders it ACK, erase, ACK, reset (fault "rup-ack-after-erase").
        self.emit(bytes([ACK]))
        self.mem.write_protected.clear()
        self.mem.mass_erase()
        self.mem.ram.data[:] = bytes(len(self.mem.ram.data))
        self.mem.options.data[0] = RDP_LEVEL0
        self.chip.note("readout_unprotect")
        seconds = self._erase_seconds(list(self.mem.pages))
        if self.chip.faults.rup_ack_after_erase:
            self.answer(bytes([ACK]), seconds, op, erase=True, then=self._reset_after())
        else:
            self.emit(bytes([ACK]))
            self.answer(b"", seconds, op, erase=True, then=self._reset_after())
        yield from ()  # receives nothing more, but every handler is a generator

    # -- checksum ---------------------------------------------------------------------------

    def _checksum(self, op: int) -> Gen:
        self._unprotected()
        self.emit(bytes([ACK]))
        addr = yield from self._word("address")
        if not self.mem.flash_region.holds(addr):
            raise NackReason(f"checksum start 0x{addr:08X} is not in flash")
        if addr % 4:  # the CRC unit reads words; stm32flash refuses unaligned starts too
            raise NackReason(f"checksum start 0x{addr:08X} is not a multiple of 4")
        self.emit(bytes([ACK]))
        size = yield from self._word("size")
        poly, init = CRC_POLY, CRC_INIT
        if self.iface == "uart":
            nbytes = size * 4  # AN3155 3.13: size in 32-bit words, then polynomial and init
            self._check_crc_range(addr, nbytes)
            self.emit(bytes([ACK]))
            poly = yield from self._word("polynomial")
            self.emit(bytes([ACK]))
            init = yield from self._word("initial value")
            # AN3155 3.13 (flashers.md 4.3): the initial value is ACKed like the other
            # parameters; once computed, the result comes as ACK, CRC, XOR
            self.emit(bytes([ACK]))
        else:
            nbytes = size  # AN4221 2.20: size in bytes, a non-zero multiple of 4
            if size % 4:
                raise NackReason(f"checksum size {size} is not a multiple of 4")
            self._check_crc_range(addr, nbytes)
            self.emit(bytes([ACK]))  # then BUSY until the result: ACK, CRC, xor
        crc = stm32_crc32(self.mem.read(addr, nbytes), poly=poly, init=init).to_bytes(4, "big")
        self.chip.note("checksum", addr, nbytes)
        # estimate, not a datasheet figure: the CRC unit takes a word per 4 AHB cycles (RM0394
        # 14.3) from flash with wait states, ~30 MB/s at the bootloader's 60 MHz (AN2606)
        self.answer(bytes([ACK]), nbytes / 30e6, op, rest=crc + bytes([xor(crc)]))

    def _check_crc_range(self, addr: int, nbytes: int) -> None:
        if nbytes == 0 or not self.mem.flash_region.holds(addr, nbytes):
            raise NackReason(f"checksum range 0x{addr:08X}+{nbytes} is not inside flash")
