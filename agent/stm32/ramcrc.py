"""CRC-32 of flash ranges computed on the chip, for bootloaders without Get Checksum.

A USART bootloader before V3.3 has no 0xA1 (AN3155 3.13), so checking written flash means
reading all of it back: as many bytes again as were written. This routine computes the CRC
on the chip instead (the zlib / IEEE 802.3 CRC-32, reflected polynomial 0xEDB88320, from a
256-word table it builds in RAM first), one per (address, length) item, and stores them with
a done word (the complement of a nonce the host picked) after the last. It then spins: the
host brings the chip back into its bootloader with NRST and BOOT0 (RAM keeps its contents
through a reset; the bootloader uses only its own RAM, below `Chip.ram_start`, AN2606) and
reads the results. A done word that is not the complement of this run's nonce means the
routine did not finish: the host then reads back instead.

Layout from `load`: vector table, code, literal pool, then the parameters the host writes
(nonce, then address and length words per item, then a 0 length), then what the routine
writes: one CRC word per item, the done word, and the 1 KiB table.

Without NRST the routine ends in SYSRESETREQ instead, which brings the bootloader back where
BOOT0 is held high, or (`empty`) after it sets the empty-check flag: with main flash selected
the next reset then boots the ROM, whatever the flag was (a G0 bootloader V11.3 clears it
while starting, AN2606 45.3.1). Session.start_application makes the flag agree with the
flash again before leaving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from agent.stm32.ramcode import CC, EQ, FLASH_ACR, FLASH_SR_L4, LS, NE, Asm, system_reset

CRC32_POLY = 0xEDB88320
CRC_TABLE_BYTES = 1024
# what the host allows for: the byte loop is 10 instructions, 13 cycles on a Cortex-M0+, 14 on
# an M0, up to about 17 on an M3/M4 fetching from SRAM (taken branches refill the pipeline)
CRC_CYCLES_PER_BYTE = 20
CRC_TABLE_CYCLES = 24_000  # building the table: 256 x (8 x 6 + 8) cycles on an M0+, and more
STACK_RESERVE = 64  # above what the routine touches: it pushes nothing, an exception would


@dataclass(frozen=True)
class CrcJob:
    """The CRC routine laid out in RAM: what to write where, and where its answers land."""

    load: int  # where `blob` goes, and what GO is given
    blob: bytes  # vector table, code, literal pool and parameters
    results: int  # address of the first CRC word; the done word follows the last
    count: int  # items, i.e. CRC words
    done: int  # what the done word holds once the routine finished
    end: int  # one past the last RAM byte the routine may touch (its stack pointer)
    cycles: int  # core cycles it may need, with room for the slower cores (M0, M3/M4)

    def seconds(self, core_hz: float) -> float:
        """How long it runs at `core_hz`."""
        return self.cycles / core_hz

    def parse(self, answer: bytes) -> Optional[list[int]]:
        """The CRCs from the `count + 1` words read at `results`; None if it did not finish."""
        words = [int.from_bytes(answer[i:i + 4], "little") for i in range(0, len(answer), 4)]
        if len(words) != self.count + 1 or words[-1] != self.done:
            return None
        return words[:-1]


def _crc_code(params: int, results: int, table: int, reset: bool, empty: str) -> Asm:
    a = Asm()
    _crc_table(a, table)
    _crc_items(a, params, results)
    a.label("done")
    a.ldr_const(5, params)
    a.ldr(0, 5)
    a.alu("mvns", 0, 0)
    a.str_(0, 4)  # the done word, after the last CRC
    if empty:
        _set_empty_flag(a, empty)
    system_reset(a) if reset else a.spin()
    return a


def _set_empty_flag(a: Asm, scheme: str) -> None:
    """Set the empty-check flag, so the reset that follows boots the ROM while main flash is
    selected: RM0394 PEMPTY "can be cleared to boot in system Flash ... after Flash erase"
    (writing 1 flips it); G0 FLASH_ACR.EMPTY is read/write, HAL_FLASHEx_ForceFlashEmpty "for
    all next reset that do not launch Option Byte Loader"."""
    if scheme == "pempty":
        a.ldr_const(2, FLASH_SR_L4)
        a.ldr(3, 2)
        a.ldr_const(4, 0x00020000)
        a.alu("tst", 3, 4)
        a.skip_if(NE, 1)  # already set
        a.str_(4, 2)  # 1 flips it; the error flags (write 1 to clear) get 0
    elif scheme == "acr":
        a.ldr_const(2, FLASH_ACR)
        a.ldr(3, 2)
        a.ldr_const(4, 0x00010000)
        a.alu("orrs", 3, 4)
        a.str_(3, 2)
    else:
        raise ValueError(f"no way to set the empty-check flag of scheme {scheme!r}")


def _crc_table(a: Asm, table: int) -> None:
    """r7 = table, T[i] = i shifted right 8 times, XORing the polynomial after each 1 out."""
    a.ldr_const(7, table)
    a.ldr_const(6, CRC32_POLY)
    a.movs(0, 0)
    a.label("entry")
    a.shift("lsls", 1, 0, 0)  # MOVS r1, r0
    a.movs(2, 8)
    a.label("bit")
    a.shift("lsrs", 1, 1, 1)  # the bit shifted out goes to C
    a.b("even", CC)
    a.alu("eors", 1, 6)
    a.label("even")
    a.subs(2, 1)
    a.b("bit", NE)
    a.shift("lsls", 3, 0, 2)
    a.str_reg(1, 7, 3)
    a.adds(0, 1)
    a.cmp(0, 255)
    a.b("entry", LS)


def _crc_items(a: Asm, params: int, results: int) -> None:
    """r5 walks the (address, length) pairs, r4 the CRC words; a 0 length ends at "done"."""
    a.ldr_const(5, params)
    a.ldr_const(4, results)
    a.label("item")
    a.ldr_at(0, 5, 4)
    a.ldr_at(1, 5, 8)
    a.cmp(1, 0)
    a.b("done", EQ)
    a.add_reg(1, 0, 1)  # r1 = end
    a.movs(2, 0)
    a.alu("mvns", 2, 2)  # crc = 0xFFFFFFFF
    a.label("byte")
    a.ldrb(3, 0)
    a.adds(0, 1)
    a.alu("eors", 3, 2)
    a.uxtb(3, 3)
    a.shift("lsls", 3, 3, 2)
    a.ldr_reg(3, 7, 3)  # crc = (crc >> 8) ^ T[(crc ^ byte) & 0xFF]
    a.shift("lsrs", 2, 2, 8)
    a.alu("eors", 2, 3)
    a.cmp_reg(0, 1)
    a.b("byte", NE)
    a.alu("mvns", 2, 2)
    a.str_(2, 4)
    a.adds(4, 4)
    a.adds(5, 8)
    a.b("item")


def crc_job(items: Sequence[tuple[int, int]], load: int, ram_end: int,
            nonce: int, *, reset: bool = False, empty: str = "") -> Optional[CrcJob]:
    """The routine for CRCs of `items` ((address, length), length > 0), loaded at `load`;
    None when it does not fit the RAM below `ram_end`. With `reset` it ends in SYSRESETREQ
    (for a host without NRST), with `empty` (a Chip.empty_flag scheme) setting the empty-check
    flag first; else it spins until the host resets the chip."""
    if not items or any(length <= 0 for _, length in items):
        raise ValueError("every item needs a length above 0")
    code_len = len(_crc_code(1, 2, 3, reset, empty).image(load, 4))  # the pool: as many words
    params = load + code_len
    results = params + 4 + 8 * (len(items) + 1)
    table = results + 4 * (len(items) + 1)
    end = table + CRC_TABLE_BYTES
    stack = (end + STACK_RESERVE + 7) & ~7  # in the part's own RAM, whatever its size
    if stack > ram_end:
        return None
    code = _crc_code(params, results, table, reset, empty).image(load, stack)
    assert len(code) == code_len
    words = [nonce] + [w for addr, length in items for w in (addr, length)] + [0, 0]
    blob = code + b"".join(w.to_bytes(4, "little") for w in words)
    cycles = CRC_TABLE_CYCLES + sum(CRC_CYCLES_PER_BYTE * n + 40 for _, n in items)
    return CrcJob(load, blob, results, len(items), nonce ^ 0xFFFFFFFF, stack, cycles)
