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
from typing import Protocol

from agent.errors import SimFault

log = logging.getLogger(__name__)

FLASH_BASE = 0x40022000
AIRCR = 0xE000ED0C
_SYSRESETREQ = 0x05FA0004
_FLASH_KEYS = (0x45670123, 0xCDEF89AB)  # RM0091 3.5.1: FLASH_KEYR (and OPTKEYR on F0)
_MAX_STEPS = 10_000


class Machine(Protocol):
    """What the interpreter needs of the chip: memory words and the empty-check flag."""

    empty_flag: bool

    def load_word(self, addr: int) -> int:
        """A 32-bit little-endian word of flash, RAM or system memory."""

    def store_word(self, addr: int, value: int) -> None:
        """Write a RAM word."""


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


def run(m: Machine, regs: FlashRegs, vectors: int) -> str:
    """Start the code whose vector table is at `vectors`; returns how it ended.

    "system_reset" / "obl_reset": it asked for a reset; "spinning": a branch to itself;
    SimFault for an instruction or access this model refuses.
    """
    core = _Core(m, regs)
    core.r[13] = m.load_word(vectors)
    entry = m.load_word(vectors + 4)
    if not entry & 1:
        raise SimFault(f"reset vector 0x{entry:08X} lacks the Thumb bit")
    pc = entry & ~1
    for _ in range(_MAX_STEPS):
        op = m.load_word(pc & ~3) >> (16 * ((pc >> 1) & 1)) & 0xFFFF
        nxt = core.step(op, pc)
        if regs.request:
            return regs.request
        if nxt == pc:
            return "spinning"
        pc = nxt
    return "spinning"


class _Core:
    """Registers and the Z flag of the interpreted core."""

    def __init__(self, m: Machine, regs: FlashRegs) -> None:
        self.m, self.regs = m, regs
        self.r = [0] * 16
        self.z = False

    def step(self, op: int, pc: int) -> int:
        """Execute one instruction at `pc`; returns the next pc."""
        r, m = self.r, self.m
        rd, rm, imm8, top5 = op & 7, op >> 3 & 7, op & 0xFF, op >> 11
        if top5 == 0b01001:  # LDR Rt, [PC, #imm8*4]
            r[op >> 8 & 7] = m.load_word(((pc + 4) & ~3) + imm8 * 4)
        elif top5 in (0b01100, 0b01101):  # STR/LDR Rt, [Rn, #imm5*4]
            self._memory(top5 == 0b01101, rd, r[rm] + (op >> 6 & 31) * 4)
        elif top5 in (0b00100, 0b00110):  # MOVS / ADDS Rdn, #imm8
            n = op >> 8 & 7
            r[n] = imm8 if top5 == 0b00100 else (r[n] + imm8) & 0xFFFFFFFF
            self.z = r[n] == 0
        elif op >> 6 in _ALU:  # ANDS EORS TST ORRS BICS Rdn, Rm
            result = _ALU[op >> 6](r[rd], r[rm])
            self.z = result == 0
            if op >> 6 != 0b0100001000:  # TST only sets flags
                r[rd] = result
        elif op >> 12 == 0b1101 and op >> 9 & 7 == 0:  # BEQ / BNE
            if self.z == (op >> 8 & 1 == 0):
                return pc + 4 + (imm8 - 256 if imm8 & 0x80 else imm8) * 2
        elif top5 == 0b11100:  # B
            off = op & 0x7FF
            return pc + 4 + (off - 2048 if off & 0x400 else off) * 2
        else:
            raise SimFault(f"instruction 0x{op:04X} at 0x{pc:08X} is not modelled")
        return pc + 2

    def _memory(self, load: bool, rt: int, addr: int) -> None:
        peripheral = addr >= 0x40000000
        if load:
            self.r[rt] = self.regs.read(self.m, addr) if peripheral else self.m.load_word(addr)
        elif peripheral:
            self.regs.write(self.m, addr, self.r[rt])
        else:
            self.m.store_word(addr, self.r[rt])


_ALU = {
    0b0100000000: lambda a, b: a & b,  # ANDS
    0b0100000001: lambda a, b: a ^ b,  # EORS
    0b0100001000: lambda a, b: a & b,  # TST
    0b0100001100: lambda a, b: a | b,  # ORRS
    0b0100001110: lambda a, b: a & ~b & 0xFFFFFFFF,  # BICS
}
