"""Tiny routines run from RAM through GO, to change what the bootloader cannot reach.

The ROM bootloader reads and writes only memory (AN2606 Table 5: flash, RAM, system memory,
option bytes), not peripheral registers. To clear the empty-check latch before leaving
(see `Chip.empty_flag`), a host uploads a few Thumb instructions with WRITE_MEMORY and
starts them with GO, as stm32flash does (stm32.c stm32_run_raw_code; our routines are
written anew). The image is a vector table, [initial SP, entry | 1], then the code and its
literal pool; GO loads both words (AN3155 3.5).

Each routine makes the flag agree with the first flash word (empty iff 0xFFFFFFFF, the
AN2606 empty check), so it is right whatever the flag was, then either resets the chip
(`reset=True`, for a host without an NRST pin) or spins until the host pulses NRST:
  pempty      L4: FLASH_SR (0x40022010) bit 17 flips when 1 is written (stm32flash c4293d3):
              write (flag XOR wanted), then SYSRESETREQ
  acr         G0/C0/WL: FLASH_ACR (0x40022000) bit 16 is plain read/write (G0 HAL
              HAL_FLASHEx_ForceFlashEmpty): clear or set it, then SYSRESETREQ
  obl_launch  F0: unlock FLASH_CR (and the option bytes) if locked (RM0091 3.5.1 keys), then
              set OBL_LAUNCH (FLASH_CR bit 13), which reloads the options, samples the flag
              and resets (RM0360 2.5 as quoted by stm32flash)
Encodings: ARMv6-M Architecture Reference Manual A6.7 (16-bit Thumb).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

FLASH_ACR = 0x40022000
FLASH_KEYR = 0x40022004
FLASH_OPTKEYR = 0x40022008
FLASH_SR_L4 = 0x40022010
FLASH_CR_F0 = 0x40022010
AIRCR = 0xE000ED0C  # ARMv6-M B3.2.6
SYSRESETREQ = 0x05FA0004  # VECTKEY 0x05FA in the upper half, SYSRESETREQ bit 2
KEYS = (0x45670123, 0xCDEF89AB)  # RM0091 3.5.1 / RM0394 3.3.5: FLASH_KEYR (F0: OPTKEYR too)
EQ, NE, CC, LS, AL = 0, 1, 3, 9, 14  # ARMv6-M A6.3: condition codes (AL: plain B)


class Asm:
    """Assemble the few 16-bit Thumb instructions the routines need, with a literal pool."""

    def __init__(self) -> None:
        self.code: list[int | tuple[str, int, int] | tuple[str, int, str]] = []
        self.pool: list[int] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        """Name the next instruction, for `b`."""
        self.labels[name] = len(self.code)

    def b(self, name: str, cond: int = AL) -> None:
        """B<cond> label (imm8, +-256 bytes) or B label (imm11), fixed up in `image`."""
        self.code.append(("b", cond, name))

    def shift(self, name: str, rd: int, rm: int, imm5: int) -> None:
        """LSLS / LSRS Rd, Rm, #imm5 (LSLS #0 is MOVS Rd, Rm)."""
        self.code.append({"lsls": 0x0000, "lsrs": 0x0800}[name] | imm5 << 6 | rm << 3 | rd)

    def add_reg(self, rd: int, rn: int, rm: int) -> None:
        """ADDS Rd, Rn, Rm."""
        self.code.append(0x1800 | rm << 6 | rn << 3 | rd)

    def subs(self, rdn: int, imm: int) -> None:
        """SUBS Rdn, #imm8."""
        self.code.append(0x3800 | rdn << 8 | imm)

    def cmp(self, rn: int, imm: int) -> None:
        """CMP Rn, #imm8."""
        self.code.append(0x2800 | rn << 8 | imm)

    def cmp_reg(self, rn: int, rm: int) -> None:
        """CMP Rn, Rm (T1)."""
        self.code.append(0x4280 | rm << 3 | rn)

    def ldrb(self, rt: int, rn: int) -> None:
        """LDRB Rt, [Rn]."""
        self.code.append(0x7800 | rn << 3 | rt)

    def ldr_at(self, rt: int, rn: int, offset: int) -> None:
        """LDR Rt, [Rn, #offset] (a multiple of 4 below 128)."""
        self.code.append(0x6800 | (offset // 4) << 6 | rn << 3 | rt)

    def ldr_reg(self, rt: int, rn: int, rm: int) -> None:
        """LDR Rt, [Rn, Rm]."""
        self.code.append(0x5800 | rm << 6 | rn << 3 | rt)

    def str_reg(self, rt: int, rn: int, rm: int) -> None:
        """STR Rt, [Rn, Rm]."""
        self.code.append(0x5000 | rm << 6 | rn << 3 | rt)

    def uxtb(self, rd: int, rm: int) -> None:
        """UXTB Rd, Rm."""
        self.code.append(0xB2C0 | rm << 3 | rd)

    def ldr_const(self, rt: int, value: int) -> None:
        """LDR Rt, =value (PC-relative literal, fixed up when the pool is placed)."""
        if value not in self.pool:
            self.pool.append(value)
        self.code.append(("lit", rt, self.pool.index(value)))

    def ldr(self, rt: int, rn: int) -> None:
        """LDR Rt, [Rn]."""
        self.code.append(0x6800 | rn << 3 | rt)

    def str_(self, rt: int, rn: int) -> None:
        """STR Rt, [Rn]."""
        self.code.append(0x6000 | rn << 3 | rt)

    def movs(self, rd: int, imm: int) -> None:
        """MOVS Rd, #imm8."""
        self.code.append(0x2000 | rd << 8 | imm)

    def adds(self, rdn: int, imm: int) -> None:
        """ADDS Rdn, #imm8."""
        self.code.append(0x3000 | rdn << 8 | imm)

    def alu(self, name: str, rdn: int, rm: int) -> None:
        """ANDS / EORS / TST / ORRS / BICS / MVNS Rdn, Rm."""
        opcode = {"ands": 0x0, "eors": 0x1, "tst": 0x8, "orrs": 0xC, "bics": 0xE,
                  "mvns": 0xF}[name]
        self.code.append(0x4000 | opcode << 6 | rm << 3 | rdn)

    def skip_if(self, cond: int, count: int) -> None:
        """B<cond> over the next `count` instructions (BEQ/BNE)."""
        self.code.append(0xD000 | cond << 8 | (count - 1))

    def dsb(self) -> None:
        """DSB SY (32-bit: 0xF3BF 0x8F4F), so stores before it complete first."""
        self.code += [0xF3BF, 0x8F4F]

    def spin(self) -> None:
        """B . (wait for the reset the previous store asked for)."""
        self.code.append(0xE7FE)

    def image(self, load: int, stack: int) -> bytes:
        """Vector table + code + word-aligned literal pool, for loading at `load`."""
        start = load + 8
        pool_at = start + (2 * len(self.code) + 3) // 4 * 4
        halfwords = []
        for i, item in enumerate(self.code):
            if isinstance(item, tuple) and item[0] == "b":
                _, cond, name = item
                offset = (self.labels[name] - i) * 2 - 4  # from the PC, 4 bytes ahead
                if cond == AL:
                    assert -1024 <= offset // 2 < 1024, name
                    halfwords.append(0xE000 | (offset // 2) & 0x7FF)
                else:
                    assert -128 <= offset // 2 < 128, name
                    halfwords.append(0xD000 | cond << 8 | (offset // 2) & 0xFF)
            elif isinstance(item, tuple):
                _, rt, index = item
                pc = (start + 2 * i + 4) & ~3
                assert 0 <= pool_at + 4 * index - pc <= 1020, "literal pool out of LDR's reach"
                halfwords.append(0x4800 | rt << 8 | (pool_at + 4 * index - pc) // 4)
            else:
                halfwords.append(item)
        if len(halfwords) % 2:
            halfwords.append(0xBF00)  # NOP, padding up to the pool
        body = b"".join(h.to_bytes(2, "little") for h in halfwords)
        pool = b"".join(v.to_bytes(4, "little") for v in self.pool)
        return stack.to_bytes(4, "little") + (start | 1).to_bytes(4, "little") + body + pool


def _want_flag(a: Asm, flash_start: int, mask: int) -> None:
    """r4 = mask, r5 = mask if the first flash word is erased (0xFFFFFFFF) else 0."""
    a.ldr_const(0, flash_start)
    a.ldr(1, 0)
    a.ldr_const(4, mask)
    a.movs(5, 0)
    a.adds(1, 1)  # 0xFFFFFFFF + 1 == 0: Z set when the flash is empty
    a.skip_if(NE, 1)
    a.alu("orrs", 5, 4)


def system_reset(a: Asm) -> None:
    """SYSRESETREQ as CMSIS NVIC_SystemReset does it: DSB first, so the stores before it
    reach RAM and registers before the reset (a Cortex-M7 buffers them)."""
    a.ldr_const(0, AIRCR)
    a.ldr_const(1, SYSRESETREQ)
    a.dsb()
    a.str_(1, 0)
    a.spin()


def _unlock(a: Asm, cr: int, bit: int, key_register: int) -> None:
    """Write the two keys to `key_register` only while FLASH_CR shows `bit` (a lock) set."""
    a.ldr_const(2, cr)
    a.ldr(3, 2)
    a.ldr_const(4, bit)
    a.alu("tst", 3, 4)
    a.skip_if(EQ if bit == 0x80 else NE, 5)  # LOCK clear / OPTWRE set: nothing to do
    a.ldr_const(0, key_register)
    a.ldr_const(1, KEYS[0])
    a.str_(1, 0)
    a.ldr_const(1, KEYS[1])
    a.str_(1, 0)


def clear_empty_latch(scheme: str, flash_start: int, load: int, stack: int, *,
                      reset: bool = True) -> bytes:
    """The routine for `Chip.empty_flag` scheme, as an image to load at `load` and GO to.

    F0's OBL_LAUNCH always resets; the others end in SYSRESETREQ with `reset`, else spin.
    """
    a = Asm()
    if scheme == "pempty":
        _want_flag(a, flash_start, 0x00020000)
        a.ldr_const(2, FLASH_SR_L4)
        a.ldr(3, 2)
        a.alu("ands", 3, 4)
        a.alu("eors", 3, 5)  # the bits that differ: writing 1 flips them
        a.str_(3, 2)
        system_reset(a) if reset else a.spin()
    elif scheme == "acr":
        _want_flag(a, flash_start, 0x00010000)
        a.ldr_const(2, FLASH_ACR)
        a.ldr(3, 2)
        a.alu("bics", 3, 4)
        a.alu("orrs", 3, 5)
        a.str_(3, 2)
        system_reset(a) if reset else a.spin()
    elif scheme == "obl_launch":
        _unlock(a, FLASH_CR_F0, 0x80, FLASH_KEYR)  # FLASH_CR.LOCK (bit 7)
        _unlock(a, FLASH_CR_F0, 0x200, FLASH_OPTKEYR)  # FLASH_CR.OPTWRE (bit 9)
        a.ldr_const(2, FLASH_CR_F0)
        a.ldr(3, 2)
        a.ldr_const(4, 0x2000)  # OBL_LAUNCH
        a.alu("orrs", 3, 4)
        a.str_(3, 2)
        a.spin()
    else:
        raise ValueError(f"no routine for empty-flag scheme {scheme!r}")
    return a.image(load, stack)
