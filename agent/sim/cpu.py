"""Code run from RAM by GO: a small Thumb interpreter and the registers such code touches.

The ROM bootloader can only read and write memory; to change a peripheral register a host
uploads a few instructions to RAM and jumps there with GO (AN3155 3.5: the bootloader loads
the stack pointer from the address and jumps to the reset vector at address + 4), as
stm32flash does to clear the empty-check flag. This interpreter runs the 16-bit Thumb
instructions such routines need (ARMv6-M ARM, A6.7; encodings checked in the tests against
an independent table) and refuses anything else like a hard fault, so a wrongly encoded
routine fails here as it would on silicon.

Registers modelled (FLASH base 0x40022000 on F0/L4/G0/C0/WL, CMSIS device headers):
  F0   FLASH_KEYR +0x04, OPTKEYR +0x08, FLASH_CR +0x10 (LOCK bit 7, OPTWRE bit 9,
       OBL_LAUNCH bit 13: reloads the option bytes and resets, RM0091/RM0360 via stm32flash)
  L4   FLASH_SR +0x10, PEMPTY bit 17: writing 1 flips it (stm32flash commit c4293d3)
  G0/C0/WL  FLASH_ACR +0x00, bit 16 (PROGEMPTY/EMPTY): plain read/write (G0 HAL
       HAL_FLASHEx_ForceFlashEmpty)
  SCB AIRCR 0xE000ED0C: 0x05FA0004 (VECTKEY | SYSRESETREQ) requests a system reset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from agent.errors import SimFault

log = logging.getLogger(__name__)

FLASH_BASE = 0x40022000
AIRCR = 0xE000ED0C
_SYSRESETREQ = 0x05FA0004
_FLASH_KEYS = (0x45670123, 0xCDEF89AB)  # RM0091 3.5.1: FLASH_KEYR (and OPTKEYR on F0)
_MAX_STEPS = 10_000  # the empty-check routines take a few dozen


class Machine(Protocol):
    """What the interpreter needs of the chip: memory words and the empty-check flag."""

    empty_flag: bool

    def load_word(self, addr: int) -> int:
        """A 32-bit little-endian word of flash, RAM or system memory."""

    def store_word(self, addr: int, value: int) -> None:
        """Write a RAM word."""

    def load_byte(self, addr: int) -> int:
        """A byte of flash, RAM or system memory."""

    def store_byte(self, addr: int, value: int) -> None:
        """Write a RAM byte."""


@dataclass
class FlashRegs:
    """The FLASH interface registers of one chip and what writing them asks for."""

    scheme: str  # Chip.empty_flag: "obl_launch", "pempty", "acr" or ""
    cr_locked: bool = True
    opt_locked: bool = True
    keys: list[int] = field(default_factory=list)
    optkeys: list[int] = field(default_factory=list)
    request: str = ""  # "system_reset" or "obl_reset" once the code asked for one

    def read(self, m: Machine, addr: int) -> int:
        """A register read; unmodelled registers read 0."""
        if self.scheme == "pempty" and addr == FLASH_BASE + 0x10:
            return 0x00020000 if m.empty_flag else 0
        if self.scheme == "acr" and addr == FLASH_BASE:
            return 0x00000600 | (0x00010000 if m.empty_flag else 0)  # plus latency/prefetch
        if self.scheme == "obl_launch" and addr == FLASH_BASE + 0x10:
            return (0x80 if self.cr_locked else 0) | (0 if self.opt_locked else 0x200)
        return 0

    def write(self, m: Machine, addr: int, value: int) -> None:
        """A register write, with the side effects silicon has."""
        if addr == AIRCR:
            if value == _SYSRESETREQ:
                self.request = "system_reset"
        elif self.scheme == "pempty" and addr == FLASH_BASE + 0x10:
            if value & 0x00020000:
                m.empty_flag = not m.empty_flag
        elif self.scheme == "acr" and addr == FLASH_BASE:
            m.empty_flag = bool(value & 0x00010000)
        elif self.scheme == "obl_launch":
            self._f0_write(addr, value)

    def _f0_write(self, addr: int, value: int) -> None:
        if addr == FLASH_BASE + 0x04:
            self.keys.append(value)
            if self.keys == list(_FLASH_KEYS[:len(self.keys)]):
                self.cr_locked = self.cr_locked and len(self.keys) < 2
            else:
                raise SimFault("wrong FLASH_KEYR sequence: FLASH_CR locked until reset (RM0091 3.5.1)")
        elif addr == FLASH_BASE + 0x08 and not self.cr_locked:
            self.optkeys.append(value)
            if self.optkeys[-2:] == list(_FLASH_KEYS):
                self.opt_locked = False
        elif addr == FLASH_BASE + 0x10 and not self.cr_locked and value & 0x2000:
            self.request = "obl_reset"


@dataclass(frozen=True)
class Outcome:
    """How code run from RAM ended, and what it cost."""

    how: str  # "system_reset", "obl_reset" (it asked for one) or "spinning" (B . or out of steps)
    steps: int
    cycles: int  # Cortex-M0+ timing (ARM DDI 0484 table 3-1): loads, stores, taken branches 2


def run(m: Machine, regs: FlashRegs, vectors: int, max_steps: int = _MAX_STEPS) -> Outcome:
    """Start the code whose vector table is at `vectors`; returns how it ended.

    SimFault for an instruction or access this model refuses (a hard fault on silicon).
    """
    core = _Core(m, regs)
    core.r[13] = m.load_word(vectors)
    entry = m.load_word(vectors + 4)
    if not entry & 1:
        raise SimFault(f"reset vector 0x{entry:08X} lacks the Thumb bit")
    pc = entry & ~1
    decoded = core.decoded
    for step in range(max_steps):
        execute = decoded.get(pc)
        if execute is None:
            op = m.load_word(pc & ~3) >> (16 * ((pc >> 1) & 1)) & 0xFFFF
            execute = decoded[pc] = _compile(core, op, pc)
        nxt = execute()
        if regs.request:
            return Outcome(regs.request, step + 1, core.cycles)
        if nxt == pc:
            return Outcome("spinning", step + 1, core.cycles)
        pc = nxt
    return Outcome("spinning", max_steps, core.cycles)


_M32 = 0xFFFFFFFF


def _cond(core: "_Core", cond: int) -> bool:
    """ARMv6-M A6.3.1: does the condition pass on the flags."""
    if cond >= 14:
        return True
    n, z, c, v = core.n, core.z, core.c, core.v
    holds = (z, c, n, v, c and not z, n == v, n == v and not z)[cond >> 1]
    return holds != bool(cond & 1)  # odd codes are the negations (NE, CC, PL, VC, LS, LT, LE)


class _Core:
    """Registers and the N, Z, C, V flags of the interpreted core."""

    def __init__(self, m: Machine, regs: FlashRegs) -> None:
        self.m, self.regs = m, regs
        self.r = [0] * 16
        self.n = self.z = self.c = self.v = False
        self.cycles = 0
        # pc -> the instruction there, ready to run; dropped when code stores to RAM
        self.decoded: dict[int, Callable[[], int]] = {}

    def _nz(self, value: int) -> int:
        self.n, self.z = value >> 31 == 1, value == 0
        return value

    def _add(self, a: int, b: int, carry: int = 0) -> int:
        """AddWithCarry (ARMv6-M A2.2.1): the sum, setting N Z C V."""
        total = a + b + carry
        result = total & _M32
        self.c = total > _M32
        self.v = (a ^ result) & (b ^ result) & 0x80000000 != 0
        return self._nz(result)

    def step(self, op: int, pc: int) -> int:
        """Execute one instruction at `pc`; returns the next pc."""
        r = self.r
        self.cycles += 1
        top5 = op >> 11
        rd, rm = op & 7, op >> 3 & 7
        if top5 <= 0b00001:  # LSLS / LSRS Rd, Rm, #imm5 (LSLS #0: MOVS Rd, Rm, C kept)
            r[rd] = self._shift(top5 == 1, r[rm], op >> 6 & 31)
        elif top5 == 0b00011:  # ADDS/SUBS Rd, Rn, Rm / #imm3
            b = op >> 6 & 7 if op & 0x400 else r[op >> 6 & 7]
            r[rd] = self._add(r[rm], b) if not op & 0x200 else self._add(r[rm], ~b & _M32, 1)
        elif top5 >> 2 == 0b001:  # MOVS / CMP / ADDS / SUBS Rdn, #imm8
            n, imm, kind = op >> 8 & 7, op & 0xFF, top5 & 3
            if kind == 0:
                r[n] = self._nz(imm)
            elif kind == 1:
                self._add(r[n], ~imm & _M32, 1)
            else:
                r[n] = self._add(r[n], imm) if kind == 2 else self._add(r[n], ~imm & _M32, 1)
        elif op >> 10 == 0b010000:  # data processing Rdn, Rm
            self._data(op >> 6 & 15, rd, r[rd], r[rm])
        elif top5 == 0b01001:  # LDR Rt, [PC, #imm8*4]
            self.cycles += 1
            r[op >> 8 & 7] = self.m.load_word(((pc + 4) & ~3) + (op & 0xFF) * 4)
        elif op >> 12 == 0b0101:  # LDR/STR/LDRB Rt, [Rn, Rm]
            self._memory(op >> 9 & 7, rd, r[rm] + r[op >> 6 & 7])
        elif op >> 13 == 0b011:  # STR/LDR/STRB/LDRB Rt, [Rn, #imm5(*4)]
            kind, imm = top5 & 3, op >> 6 & 31
            self._memory((0, 4, 2, 6)[kind], rd, r[rm] + (imm if kind >= 2 else imm * 4))
        elif op & 0xFFC0 == 0xB2C0:  # UXTB Rd, Rm
            r[rd] = r[rm] & 0xFF
        elif op == 0xBF00:  # NOP
            pass
        elif op == 0xF3BF and self._halfword(pc + 2) == 0x8F4F:  # DSB SY (32-bit)
            self.cycles += 2
            return pc + 4
        elif op >> 12 == 0b1101 and op >> 9 & 7 != 7:  # B<cond> (0xDE UDF, 0xDF SVC excluded)
            if _cond(self, op >> 8 & 15):
                self.cycles += 1
                imm8 = op & 0xFF
                return pc + 4 + (imm8 - 256 if imm8 & 0x80 else imm8) * 2
        elif top5 == 0b11100:  # B
            self.cycles += 1
            off = op & 0x7FF
            return pc + 4 + (off - 2048 if off & 0x400 else off) * 2
        else:
            raise SimFault(f"instruction 0x{op:04X} at 0x{pc:08X} is not modelled")
        return pc + 2

    def _halfword(self, addr: int) -> int:
        return self.m.load_word(addr & ~3) >> (16 * ((addr >> 1) & 1)) & 0xFFFF

    def _shift(self, right: bool, value: int, imm: int) -> int:
        """LSRS / LSLS by an immediate: the result, setting N Z and C (the last bit out)."""
        if right:
            imm = imm or 32  # LSRS #0 encodes a shift by 32
            self.c = value >> (imm - 1) & 1 == 1
            return self._nz(value >> imm)
        if imm:
            self.c = value >> (32 - imm) & 1 == 1
        return self._nz(value << imm & _M32)

    def _data(self, opcode: int, rd: int, a: int, b: int) -> None:
        """ARMv6-M A6.7 data-processing (register): the ones modelled."""
        r = self.r
        if opcode == 0b0000:  # ANDS
            r[rd] = self._nz(a & b)
        elif opcode == 0b0001:  # EORS
            r[rd] = self._nz(a ^ b)
        elif opcode == 0b1000:  # TST
            self._nz(a & b)
        elif opcode == 0b1010:  # CMP
            self._add(a, ~b & _M32, 1)
        elif opcode == 0b1100:  # ORRS
            r[rd] = self._nz(a | b)
        elif opcode == 0b1110:  # BICS
            r[rd] = self._nz(a & ~b & _M32)
        elif opcode == 0b1111:  # MVNS
            r[rd] = self._nz(~b & _M32)
        else:
            raise SimFault(f"data-processing opcode {opcode:04b} is not modelled")

    def _memory(self, kind: int, rt: int, addr: int) -> None:
        """kind: 0 STR, 2 STRB, 4 LDR, 6 LDRB (the opB field of A6.2.4)."""
        self.cycles += 1
        addr &= _M32
        if kind not in (0, 2, 4, 6):
            raise SimFault(f"halfword and signed loads are not modelled (opB {kind:03b})")
        if kind in (0, 4) and addr & 3:
            raise SimFault(f"unaligned word access at 0x{addr:08X}")  # ARMv6-M: always faults
        if addr >= 0x40000000:
            if kind == 4:
                self.r[rt] = self.regs.read(self.m, addr)
            elif kind == 0:
                self.regs.write(self.m, addr, self.r[rt])
            else:
                raise SimFault(f"byte access to the register at 0x{addr:08X} is not modelled")
        elif kind == 4:
            self.r[rt] = self.m.load_word(addr)
        elif kind == 6:
            self.r[rt] = self.m.load_byte(addr)
        else:
            if kind == 0:
                self.m.store_word(addr, self.r[rt])
            else:
                self.m.store_byte(addr, self.r[rt] & 0xFF)
            self.decoded.clear()  # the code may have changed itself


def _compile(core: _Core, op: int, pc: int) -> Callable[[], int]:
    """The instruction at `pc` as a call that runs it and returns the next pc.

    The loop of a CRC over flash runs a handful of instructions a million times, so those
    get a call of their own (the same semantics as `_Core.step`, which the tests hold them
    to); everything else goes through `step`.
    """
    return _fast(core, op, pc) or (lambda: core.step(op, pc))


def _fast(core: _Core, op: int, pc: int) -> Optional[Callable[[], int]]:
    return _fast_memory(core, op, pc) or _fast_alu(core, op, pc)


def _fast_memory(core: _Core, op: int, pc: int) -> Optional[Callable[[], int]]:
    r, nxt = core.r, pc + 2
    rd, rm, rn = op & 7, op >> 3 & 7, op >> 6 & 7
    if op & 0xF800 == 0x7800:  # LDRB Rt, [Rn, #imm5] in flash or RAM
        load_byte, imm = core.m.load_byte, op >> 6 & 31

        def ldrb() -> int:
            addr = (r[rm] + imm) & _M32
            if addr >= 0x40000000:  # a register: `step` says what is modelled
                return core.step(op, pc)
            core.cycles += 2
            r[rd] = load_byte(addr)
            return nxt
        return ldrb
    if op & 0xFE00 == 0x5800:  # LDR Rt, [Rn, Rm] in flash or RAM (registers: `step`)
        load_word = core.m.load_word

        def ldr() -> int:
            addr = (r[rm] + r[rn]) & _M32
            if addr & 3 or addr >= 0x40000000:
                return core.step(op, pc)
            core.cycles += 2
            r[rd] = load_word(addr)
            return nxt
        return ldr
    return None


def _fast_alu(core: _Core, op: int, pc: int) -> Optional[Callable[[], int]]:
    r, nxt = core.r, pc + 2
    rd, rm = op & 7, op >> 3 & 7
    if op & 0xFFC0 in (0x4040, 0xB2C0):  # EORS Rdn, Rm / UXTB Rd, Rm
        eors = op & 0xFFC0 == 0x4040

        def logic() -> int:
            core.cycles += 1
            if eors:
                value = r[rd] = r[rd] ^ r[rm]
                core.n, core.z = value >> 31 == 1, value == 0
            else:
                r[rd] = r[rm] & 0xFF
            return nxt
        return logic
    if op & 0xF000 == 0 and op >> 6 & 31:  # LSLS / LSRS Rd, Rm, #imm5 (not MOVS)
        right, imm = bool(op & 0x800), op >> 6 & 31

        def shift() -> int:
            core.cycles += 1
            r[rd] = core._shift(right, r[rm], imm)
            return nxt
        return shift
    if op & 0xF800 == 0x3000 or op & 0xFFC0 == 0x4280:  # ADDS Rdn, #imm8 / CMP Rn, Rm
        n, imm, cmp = op >> 8 & 7, op & 0xFF, op & 0xFFC0 == 0x4280

        def arith() -> int:
            core.cycles += 1
            if cmp:
                core._add(r[rd], ~r[rm] & _M32, 1)
            else:
                r[n] = core._add(r[n], imm)
            return nxt
        return arith
    if op & 0xFF00 == 0xD100:  # BNE
        imm8 = op & 0xFF
        target = pc + 4 + (imm8 - 256 if imm8 & 0x80 else imm8) * 2

        def bne() -> int:
            core.cycles += 1
            if core.z:
                return nxt
            core.cycles += 1
            return target
        return bne
    return None
