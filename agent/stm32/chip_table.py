"""The rows of the chip table, from AN2606: the single source of truth for chip facts.

Where the rows come from: AN2606 Rev 69/70 "Bootloader device-dependent parameters" and the
per-product chapters (bootloader RAM, system memory, IDs, protocol versions); flash layout and
option bytes as in stm32flash's dev_table.c (which follows the same AN2606 table) checked
against the reference manuals; flash-size register addresses from each family's RM
("Flash size data register"); erase/program times are typical datasheet values, rounded,
used by the simulator and to size the client's erase timeouts. Values marked [INF] are
inferences that no document here confirms.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.stm32.chip_model import Banks, KiB, Chip

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Family defaults. A row below gives what differs per PID.

# RM0090 3.3 / RM0033 3.3: 4 x 16K, 1 x 64K, then 128K sectors; one bank of up to 12 sectors.
def _f2f4(kib: int) -> tuple[tuple[int, int], ...]:
    return ((4, 16 * KiB), (1, 64 * KiB)) + (((kib - 128) // 128, 128 * KiB),) * (kib > 128)


# RM0090 3.5: F42x/43x (and F469/479, RM0386) with 2 MiB: bank 2 repeats the layout; the
# bootloader numbers its sectors on from 12 (AN3155 erase takes sector numbers 0..23).
_F4_DUAL = _f2f4(1024) * 2
# RM0385 3.3: F74x/75x 1 MiB: 4 x 32K, 1 x 128K, 3 x 256K; F76x/77x single-bank (nDBANK=1,
# the factory default) 2 MiB: 7 x 256K.
_F7 = ((4, 32 * KiB), (1, 128 * KiB))
_F4_ERASE = ((16 * KiB, 400.0), (64 * KiB, 1100.0), (128 * KiB, 2000.0))  # DS x32, typ
_F7_ERASE = ((32 * KiB, 400.0), (128 * KiB, 1100.0), (256 * KiB, 2000.0))  # DS x32, typ [INF]

_FAMILY: dict[str, dict[str, Any]] = {
    # AN2606 F0 chapters; RM0091 flash size 0x1FFFF7CC; half-word program 53 us, 1K erase 20 ms.
    "F0": dict(sysmem_end=0x1FFFF800, option_start=0x1FFFF800, option_end=0x1FFFF810,
               flash_size_reg=0x1FFFF7CC, write_align=4, erase_ms_per_page=20.0,
               program_us_per_word=106.0),
    # AN2606 F1 chapters: bootloader V2.x speaks USART V2.2 (no Extended Erase: 0x43).
    # RM0008 flash size 0x1FFFF7E0; DS: half-word 52.5 us, page erase 20 ms.
    "F1": dict(sysmem_end=0x1FFFF800, option_start=0x1FFFF800, option_end=0x1FFFF810,
               flash_size_reg=0x1FFFF7E0, write_align=4, uart_version=0x22,
               erase_ms_per_page=20.0, program_us_per_word=105.0),
    # AN2606 F2 chapter; RM0033 flash size 0x1FFF7A22; DS x32: word 16 us.
    "F2": dict(sysmem_start=0x1FFF0000, sysmem_end=0x1FFF7800, option_start=0x1FFFC000,
               option_end=0x1FFFC010, flash_size_reg=0x1FFF7A22, write_align=4,
               bootloader_id_addr=0x1FFF77DE, erase_ms_by_size=_F4_ERASE,
               erase_ms_per_page=400.0, program_us_per_word=16.0),
    # AN2606 F3 chapters; RM0316 flash size 0x1FFFF7CC; I2C V1.0 where present.
    "F3": dict(sysmem_start=0x1FFFD800, sysmem_end=0x1FFFF800, option_start=0x1FFFF800,
               option_end=0x1FFFF810, flash_size_reg=0x1FFFF7CC, write_align=4,
               bootloader_id_addr=0x1FFFF796, erase_ms_per_page=20.0,
               program_us_per_word=105.0),
    # AN2606 F4 chapters: bootloader uses 12 KiB from 0x20000000; RM0090 flash size 0x1FFF7A22.
    "F4": dict(sysmem_start=0x1FFF0000, sysmem_end=0x1FFF7800, option_start=0x1FFFC000,
               option_end=0x1FFFC010, flash_size_reg=0x1FFF7A22, write_align=4,
               ram_start=0x20003000, bootloader_id_addr=0x1FFF76DE, i2c_version=0x11,
               erase_ms_by_size=_F4_ERASE, erase_ms_per_page=400.0, program_us_per_word=16.0),
    # AN2606 F7 chapters: 16 KiB bootloader RAM; RM0385 flash size 0x1FF0F442 (F72x: 0x1FF07A22).
    "F7": dict(sysmem_start=0x1FF00000, sysmem_end=0x1FF0EDC0, option_start=0x1FFF0000,
               option_end=0x1FFF0020, flash_size_reg=0x1FF0F442, write_align=4,
               ram_start=0x20004000, bootloader_id_addr=0x1FF0EDBE, i2c_version=0x11,
               erase_ms_by_size=_F7_ERASE, erase_ms_per_page=400.0, program_us_per_word=16.0),
    # AN2606 G0 chapters; RM0444: 64-bit double words, flash size 0x1FFF75E0, erase 22 ms.
    "G0": dict(sysmem_start=0x1FFF0000, sysmem_end=0x1FFF7000, option_start=0x1FFF7800,
               option_end=0x1FFF7880, flash_size_reg=0x1FFF75E0, write_align=8,
               bootloader_id_addr=0x1FFF6FFE, i2c_version=0x12, erase_ms_per_page=22.0,
               program_us_per_word=85.0),
    # AN2606 G4 chapters: 16 KiB bootloader RAM; RM0440: double words, flash size 0x1FFF75E0.
    "G4": dict(sysmem_start=0x1FFF0000, sysmem_end=0x1FFF7000, option_start=0x1FFF7800,
               option_end=0x1FFF7830, flash_size_reg=0x1FFF75E0, write_align=8,
               ram_start=0x20004000, bootloader_id_addr=0x1FFF6FFE, i2c_version=0x12,
               erase_ms_per_page=22.0, program_us_per_word=82.0),
    # AN2606 H7 chapters; RM0433: 256-bit flash words, option bytes only via registers,
    # flash size 0x1FF1E880; DS: 128K sector erase ~2 s.
    "H7": dict(sysmem_start=0x1FF00000, sysmem_end=0x1FF1E800, option_start=0, option_end=0,
               flash_size_reg=0x1FF1E880, write_align=32, ram_start=0x20004100,
               ram_end=0x20020000, bootloader_id_addr=0x1FF1E7FE, i2c_version=0x11,
               erase_ms_per_page=2000.0, program_us_per_word=100.0),
    # AN2606 L0 chapters; RM0377: no mass erase through the bootloader (stm32flash F_NO_ME),
    # word program / page erase 3.2 ms, flash size 0x1FF8007C.
    "L0": dict(sysmem_start=0x1FF00000, option_start=0x1FF80000, option_end=0x1FF80020,
               flash_size_reg=0x1FF8007C, write_align=4, mass_erase=False, i2c_version=0x11,
               erase_ms_per_page=3.2, program_us_per_word=3200.0),
    # AN2606 L1 chapters; RM0038: like L0 (no mass erase, 3.2 ms), no I2C bootloader.
    "L1": dict(sysmem_start=0x1FF00000, option_start=0x1FF80000, option_end=0x1FF80020,
               write_align=4, mass_erase=False, erase_ms_per_page=3.2,
               program_us_per_word=3200.0),
    # AN2606 L4 chapters: 12 KiB bootloader RAM (+256 B margin as stm32flash); RM0394/RM0351:
    # double words (AN2606 Table 7: 8-byte aligned), flash size 0x1FFF75E0; DS 22 ms / 82 us.
    "L4": dict(sysmem_start=0x1FFF0000, sysmem_end=0x1FFF7000, option_start=0x1FFF7800,
               option_end=0x1FFF7810, flash_size_reg=0x1FFF75E0, write_align=8,
               ram_start=0x20003100, bootloader_id_addr=0x1FFF6FFE, i2c_version=0x12,
               erase_ms_per_page=22.0, program_us_per_word=82.0),
    # AN2606 L5 chapter; RM0438: option bytes via registers, flash size 0x0BFA05E0.
    "L5": dict(sysmem_start=0x0BF90000, sysmem_end=0x0BF98000, option_start=0, option_end=0,
               flash_size_reg=0x0BFA05E0, write_align=8, ram_start=0x20004000,
               bootloader_id_addr=0x0BF97FFE, i2c_version=0x12, dual_bank=True,
               erase_ms_per_page=22.0, program_us_per_word=82.0),
    # AN2606 U5 chapters; RM0456: 128-bit quad words, 8K pages, flash size 0x0BFA07A0.
    "U5": dict(sysmem_start=0x0BF90000, sysmem_end=0x0BFA0000, option_start=0, option_end=0,
               flash_size_reg=0x0BFA07A0, write_align=16, ram_start=0x20004000,
               bootloader_id_addr=0x0BF99EFE, i2c_version=0x12, dual_bank=True,
               erase_ms_per_page=1.5, program_us_per_word=120.0),
    # AN2606 WB chapters; RM0434: double words, flash size 0x1FFF75E0.
    "WB": dict(sysmem_start=0x1FFF0000, sysmem_end=0x1FFF7000, flash_size_reg=0x1FFF75E0,
               write_align=8, bootloader_id_addr=0x1FFF6FFE, i2c_version=0x12,
               erase_ms_per_page=22.0, program_us_per_word=82.0),
    # AN2606 WL chapter: USART and SPI only (no I2C bootloader); RM0461 flash size 0x1FFF75E0.
    "WL": dict(sysmem_start=0x1FFF0000, sysmem_end=0x1FFF4000, option_start=0x1FFF7800,
               option_end=0x1FFF8000, flash_size_reg=0x1FFF75E0, write_align=8,
               bootloader_id_addr=0x1FFF3EFE, erase_ms_per_page=22.0, program_us_per_word=82.0),
    # AN2606 C0 chapters; RM0490: double words, flash size 0x1FFF75A0, 2K pages.
    "C0": dict(sysmem_start=0x1FFF0000, sysmem_end=0x1FFF1800, option_start=0x1FFF7800,
               option_end=0x1FFF7880, flash_size_reg=0x1FFF75A0, write_align=8,
               bootloader_id_addr=0x1FFF17FE, i2c_version=0x12, erase_ms_per_page=22.0,
               program_us_per_word=85.0),
    # Not in AN2606, kept because stm32flash knows them (F1-like, and STM32W108).
    "W": dict(sysmem_start=0x08040000, sysmem_end=0x08040800, option_start=0x08040800,
              option_end=0x08040810, write_align=4, uart_version=0x22,
              erase_ms_per_page=20.0, program_us_per_word=105.0),
}


def _chip(family: str, pid: int, name: str, flash_kib: int, pages: tuple[tuple[int, int], ...],
          ram: tuple[int, int] | int, parts: tuple[str, ...] = (), **extra: Any) -> Chip:
    """One row: family defaults, then this PID's facts. `ram` may be just its end."""
    values: dict[str, Any] = dict(flash_start=0x08000000, ram_start=0x20000000)
    values.update(_FAMILY[family])
    if isinstance(ram, tuple):
        values["ram_start"], values["ram_end"] = ram
    else:
        values["ram_end"] = ram
    values.update(extra)
    return Chip(pid=pid, name=name, family=family, flash_size=flash_kib * KiB, pages=pages,
                parts=parts, **values)


def _p(count: int, size: int) -> tuple[tuple[int, int], ...]:
    return ((count, size),)


_2K, _4K, _8K, _128K = 2 * KiB, 4 * KiB, 8 * KiB, 128 * KiB
_ANY_RAM_NOTE = "the bootloader uses all of the RAM: nothing can be run from RAM"

ROWS: tuple[Chip, ...] = (
    # F0 -- AN2606 F03xx4/6, F030x8/F05xxx, F030xC/F09xxx, F04xxx/F070x6, F07xxx chapters.
    _chip("F0", 0x440, "STM32F030x8/F05xxx", 64, _p(64, KiB), (0x20000800, 0x20002000),
          ("F030x8", "F051", "F058"), sysmem_start=0x1FFFEC00, bootloader_id_addr=0x1FFFF7A6),
    _chip("F0", 0x444, "STM32F03xx4/6", 32, _p(32, KiB), (0x20000800, 0x20001000),
          ("F030x4", "F030x6", "F031", "F038"), sysmem_start=0x1FFFEC00,
          bootloader_id_addr=0x1FFFF7A6),
    _chip("F0", 0x442, "STM32F030xC/F09xxx", 256, _p(128, _2K), (0x20001800, 0x20008000),
          ("F030xC", "F091", "F098"), sysmem_start=0x1FFFD800, bootloader_id_addr=0x1FFFF796,
          i2c_version=0x10,  # system memory from 0x1FFFD800: stm32flash 5361ed8 (RM0091/RM0360)
          note="empty check: after flashing a blank part a reset re-enters the bootloader "
               "until power-off or OBL_LAUNCH (RM0360 2.5; stm32flash F_OBLL)"),
    _chip("F0", 0x445, "STM32F04xxx/F070x6", 32, _p(32, KiB), (0x20001800, 0x20001800),
          ("F042", "F048", "F070x6"), sysmem_start=0x1FFFC400, bootloader_id_addr=0x1FFFF6A6,
          i2c_version=0x10, note=_ANY_RAM_NOTE),
    _chip("F0", 0x448, "STM32F070xB/F071xx/F072xx", 128, _p(64, _2K), (0x20001800, 0x20004000),
          ("F070xB", "F071", "F072", "F078"), sysmem_start=0x1FFFC800,
          bootloader_id_addr=0x1FFFF6A6, i2c_version=0x10),
    # F1 -- AN2606 F10xxx chapters (bootloader V2.x, USART V2.2, no I2C). XL density: 2 banks.
    _chip("F1", 0x412, "STM32F10xxx Low-density", 32, _p(32, KiB), (0x20000200, 0x20002800),
          ("F101x4", "F101x6", "F102x4", "F102x6", "F103x4", "F103x6"), sysmem_start=0x1FFFF000),
    _chip("F1", 0x410, "STM32F10xxx Medium-density", 128, _p(128, KiB), (0x20000200, 0x20005000),
          ("F101x8", "F101xB", "F102x8", "F102xB", "F103x8", "F103xB"), sysmem_start=0x1FFFF000),
    _chip("F1", 0x414, "STM32F10xxx High-density", 512, _p(256, _2K), (0x20000200, 0x20010000),
          ("F101xC", "F101xD", "F101xE", "F103xC", "F103xD", "F103xE"), sysmem_start=0x1FFFF000),
    _chip("F1", 0x420, "STM32F10xxx Medium-density VL", 128, _p(128, KiB),
          (0x20000200, 0x20002000), ("F100x4", "F100x6", "F100x8", "F100xB"),
          sysmem_start=0x1FFFF000, bootloader_id_addr=0x1FFFF7D6),
    _chip("F1", 0x428, "STM32F10xxx High-density VL", 512, _p(256, _2K),
          (0x20000200, 0x20008000), ("F100xC", "F100xD", "F100xE"), sysmem_start=0x1FFFF000,
          bootloader_id_addr=0x1FFFF7D6),
    _chip("F1", 0x418, "STM32F105xx/F107xx", 256, _p(128, _2K), (0x20001000, 0x20010000),
          ("F105", "F107"), sysmem_start=0x1FFFB000),
    _chip("F1", 0x430, "STM32F10xxx XL-density", 1024, _p(512, _2K), (0x20000800, 0x20018000),
          ("F101xF", "F101xG", "F103xF", "F103xG"), sysmem_start=0x1FFFE000,
          bootloader_id_addr=0x1FFFF7D6, dual_bank=True),
    # Not in AN2606; stm32flash lists it next to F1 medium density.
    _chip("F1", 0x641, "Medium_Density PL", 128, _p(128, KiB), (0x20000200, 0x20005000),
          sysmem_start=0x1FFFF000, note="not in AN2606; facts as stm32flash"),
    # F2 -- AN2606 F2xxxx chapter: 8 KiB bootloader RAM; USART and CAN/DFU, no I2C.
    _chip("F2", 0x411, "STM32F2xxxx", 1024, _f2f4(1024), (0x20002000, 0x20020000),
          ("F205", "F207", "F215", "F217")),
    # F3 -- AN2606 F3 chapters. I2C exists on some parts of each PID only [INF].
    _chip("F3", 0x432, "STM32F373xx/F378xx", 256, _p(128, _2K), (0x20001400, 0x20008000),
          ("F373", "F378"), bootloader_id_addr=0x1FFFF7A6),
    _chip("F3", 0x422, "STM32F302xB(C)/F303xB(C)/F358xx", 256, _p(128, _2K),
          (0x20001400, 0x2000A000), ("F302xB", "F302xC", "F303xB", "F303xC", "F358")),
    _chip("F3", 0x439, "STM32F301xx/F302x4(6/8)/F318xx", 64, _p(32, _2K),
          (0x20001800, 0x20004000), ("F301", "F302x4", "F302x6", "F302x8", "F318"),
          i2c_version=0x10),
    _chip("F3", 0x438, "STM32F303x4(6/8)/F334xx/F328xx", 64, _p(32, _2K),
          (0x20001800, 0x20003000), ("F303x4", "F303x6", "F303x8", "F334", "F328"),
          i2c_version=0x10),
    _chip("F3", 0x446, "STM32F302xD(E)/F303xD(E)/F398xx", 512, _p(256, _2K),
          (0x20001800, 0x20010000), ("F302xD", "F302xE", "F303xD", "F303xE", "F398"),
          i2c_version=0x10),
    # F4 -- AN2606 F4 chapters (12 KiB bootloader RAM). I2C addresses: F401 0x39 (AN2606),
    # F42x 0x38 (ST's CubeProgrammer I2C example).
    _chip("F4", 0x413, "STM32F40xxx/41xxx", 1024, _f2f4(1024), 0x20020000,
          ("F405", "F407", "F415", "F417"), bootloader_id_addr=0x1FFF77DE, i2c_version=0x10,
          note="bootloader V3.1 parts have no I2C; V9.0 added it"),
    _chip("F4", 0x419, "STM32F42xxx/43xxx", 2048, _F4_DUAL, 0x20030000,
          ("F427", "F429", "F437", "F439"), option_start=0x1FFEC000, dual_bank=True,
          i2c_address=0x38),
    _chip("F4", 0x423, "STM32F401xB(C)", 256, _f2f4(256), 0x20010000, ("F401xB", "F401xC"),
          i2c_address=0x39),
    _chip("F4", 0x433, "STM32F401xD(E)", 512, _f2f4(512), 0x20018000, ("F401xD", "F401xE"),
          i2c_address=0x39),
    _chip("F4", 0x458, "STM32F410xx", 128, _f2f4(128), 0x20008000, ("F410",)),
    _chip("F4", 0x431, "STM32F411xx", 512, _f2f4(512), 0x20020000, ("F411",),
          i2c_address=0x39),  # [INF] same I2C address as F401
    _chip("F4", 0x441, "STM32F412xx", 1024, _f2f4(1024), 0x20040000, ("F412",)),
    _chip("F4", 0x421, "STM32F446xx", 512, _f2f4(512), 0x20020000, ("F446",),
          bootloader_id_addr=0x1FFF77DE),
    _chip("F4", 0x434, "STM32F469xx/479xx", 2048, _F4_DUAL, 0x20060000, ("F469", "F479"),
          option_start=0x1FFEC000, dual_bank=True),
    _chip("F4", 0x463, "STM32F413xx/423xx", 1536, _f2f4(1536), 0x20050000, ("F413", "F423")),
    # F7 -- AN2606 F7 chapters (16 KiB bootloader RAM). F72x sectors are F4-like (RM0431).
    # AN2606 Table 97: 0b1001001 (0x49) on I2C1 and I2C3; I2C2 is printed as 0b1001101
    # (0x4D), maybe a typo: on I2C2, give the address explicitly.
    _chip("F7", 0x452, "STM32F72xxx/73xxx", 512, _f2f4(512), 0x20040000,
          ("F722", "F723", "F730", "F732", "F733"), flash_size_reg=0x1FF07A22,
          erase_ms_by_size=_F4_ERASE, i2c_address=0x49,
          note="I2C address 0x49 on I2C1/I2C3; AN2606 prints 0x4D for I2C2"),
    _chip("F7", 0x449, "STM32F74xxx/75xxx", 1024, _F7 + ((3, 256 * KiB),), 0x20050000,
          ("F745", "F746", "F750", "F756"), i2c_address=0x45),  # AN2606 Table 99
    _chip("F7", 0x451, "STM32F76xxx/77xxx", 2048, _F7 + ((7, 256 * KiB),), 0x20080000,
          ("F765", "F767", "F769", "F777", "F778", "F779"),
          note="single-bank sector layout (nDBANK=1, the factory default)"),
    # G0 -- AN2606 G0 chapters. I2C 0x56 for G03x/04x (AN2606 Rev 47 fix, ST community),
    # 0x51 for G07x/08x.
    _chip("G0", 0x466, "STM32G03xxx/04xxx", 64, _p(32, _2K), (0x20001000, 0x20002000),
          ("G030", "G031", "G041"), sysmem_end=0x1FFF2000, bootloader_id_addr=0x1FFF1FFE,
          i2c_address=0x56),
    _chip("G0", 0x456, "STM32G05xxx/061xx", 64, _p(32, _2K), (0x20001000, 0x20004800),
          ("G050", "G051", "G061"), sysmem_end=0x1FFF2000, bootloader_id_addr=0x1FFF1FFE,
          i2c_address=0x62),  # AN2606 G05x/061 chapter
    _chip("G0", 0x460, "STM32G07xxx/08xxx", 128, _p(64, _2K), (0x20002700, 0x20009000),
          ("G070", "G071", "G081"), i2c_address=0x51),
    _chip("G0", 0x467, "STM32G0B0/B1/C1xx", 512, _p(256, _2K), (0x20004000, 0x20020000),
          ("G0B0", "G0B1", "G0C1"), bootloader_id_addr=0x1FFF9FFE, dual_bank=True,
          i2c_address=0x5D,  # AN2606 G0B0/B1 chapter
          # OPTR DUAL_BANK bit 21 (CMSIS); bank 2 of the 256/128 KiB parts: RM0444 not read
          banks=Banks(option_bit=21, known=False),
          note="bank 2 of parts under 512 KiB is not mapped here: flash only bank 1 there"),
    # G4 -- AN2606 G4 chapters. G47x/48x: DBANK=1 (default) gives 2 x 128 pages of 2 KiB.
    _chip("G4", 0x468, "STM32G431xx/441xx", 128, _p(64, _2K), 0x20005800, ("G431", "G441")),
    _chip("G4", 0x469, "STM32G47xxx/48xxx", 512, _p(256, _2K), 0x20018000,
          ("G471", "G473", "G474", "G483", "G484"), dual_bank=True,
          banks=Banks(option_bit=22, known=False)),  # OPTR DBANK (CMSIS); RM0440 not read
    _chip("G4", 0x479, "STM32G491xx/A1xx", 512, _p(256, _2K), 0x2001C000, ("G491", "G4A1"),
          i2c_address=0x5F),  # AN2606, confirmed on the ST community forum
    # H7 -- AN2606 H7 chapters. H74x I2C 0x4E (CubeProgrammer example), H7A3 0x57 (ST
    # community, AN2606's "0b10101111x" typo). H7A3 programs 128-bit flash words (RM0455).
    _chip("H7", 0x450, "STM32H74xxx/75xxx", 2048, _p(16, _128K), 0x20020000,
          ("H742", "H743", "H745", "H747", "H750", "H753", "H755", "H757"), dual_bank=True,
          i2c_address=0x4E,  # CMSIS stm32h743xx.h: FLASH_BANK2_BASE 0x08100000 on every size
          banks=Banks(bank2_address=0x08100000)),
    _chip("H7", 0x483, "STM32H72xxx/73xxx", 1024, _p(8, _128K), 0x20020000,
          ("H723", "H725", "H730", "H733", "H735"),
          note="flash starts at 0x08000000 (stm32flash has the typo 0x80000000)"),
    _chip("H7", 0x480, "STM32H7A3xx/B3xx", 2048, _p(256, _8K), 0x20020000,
          ("H7A3", "H7B0", "H7B3"), sysmem_end=0x1FF14000, bootloader_id_addr=0x1FF13FFE,
          flash_size_reg=0x08FFF80C, write_align=16, dual_bank=True, i2c_address=0x57,
          erase_ms_per_page=20.0, program_us_per_word=60.0),  # times [INF]
    # L0 -- AN2606 L0 chapters; 128-byte pages, erased 1 page per number.
    _chip("L0", 0x457, "STM32L01xxx/02xxx", 16, _p(128, 128), (0x20000800, 0x20000800),
          ("L010x4", "L011", "L021"), sysmem_end=0x1FF01000, bootloader_id_addr=0x1FF00FFE,
          note=_ANY_RAM_NOTE),
    _chip("L0", 0x425, "STM32L031xx/041xx", 32, _p(256, 128), (0x20001000, 0x20002000),
          ("L010x6", "L031", "L041"), sysmem_end=0x1FF01000, bootloader_id_addr=0x1FF00FFE),
    _chip("L0", 0x417, "STM32L05xxx/06xxx", 64, _p(512, 128), (0x20001000, 0x20002000),
          ("L010x8", "L051", "L052", "L053", "L062", "L063"), sysmem_end=0x1FF01000,
          bootloader_id_addr=0x1FF00FFE),
    _chip("L0", 0x447, "STM32L07xxx/08xxx", 192, _p(1536, 128), (0x20002000, 0x20005000),
          ("L010xB", "L071", "L072", "L073", "L081", "L082", "L083"), sysmem_end=0x1FF02000,
          bootloader_id_addr=0x1FF01FFE),
    # L1 -- AN2606 L1 chapters; 256-byte pages; flash-size register moved for cat. 3+ (RM0038).
    _chip("L1", 0x416, "STM32L1xxx6(8/B)", 128, _p(512, 256), (0x20000800, 0x20004000),
          ("L100x6", "L100x8", "L100xB", "L151x6", "L151x8", "L151xB", "L152x6", "L152x8",
           "L152xB"), sysmem_end=0x1FF01000, bootloader_id_addr=0x1FF00FFE,
          flash_size_reg=0x1FF8004C),
    _chip("L1", 0x429, "STM32L1xxx6(8/B)A", 128, _p(512, 256), (0x20001000, 0x20008000),
          ("L100x6xxA", "L100x8xxA", "L100xBxxA", "L151x6xxA", "L151x8xxA", "L151xBxxA",
           "L152x6xxA", "L152x8xxA", "L152xBxxA"), sysmem_end=0x1FF01000,
          bootloader_id_addr=0x1FF00FFE, flash_size_reg=0x1FF8004C),
    _chip("L1", 0x427, "STM32L1xxxC", 256, _p(1024, 256), (0x20001000, 0x20008000),
          ("L100xC", "L151xC", "L152xC", "L162xC"), sysmem_end=0x1FF02000,
          bootloader_id_addr=0x1FF01FFE, flash_size_reg=0x1FF800CC),
    _chip("L1", 0x436, "STM32L1xxxD", 384, _p(1536, 256), (0x20001000, 0x2000C000),
          ("L151xD", "L152xD", "L162xD"), sysmem_end=0x1FF02000, bootloader_id_addr=0x1FF01FFE,
          flash_size_reg=0x1FF800CC, dual_bank=True),
    _chip("L1", 0x437, "STM32L1xxxE", 512, _p(2048, 256), (0x20001000, 0x20014000),
          ("L151xE", "L152xE", "L162xE"), sysmem_end=0x1FF02000, bootloader_id_addr=0x1FF01FFE,
          flash_size_reg=0x1FF800CC, dual_bank=True),
    # L4 -- AN2606 L4 chapters (Tables 3/164/165 for L43x/44x: bootloader V9.1, USART V3.1,
    # I2C V1.2 at 0x48). L45x I2C 0x4A: ST's CubeProgrammer I2C example.
    _chip("L4", 0x464, "STM32L412xx/422xx", 128, _p(64, _2K), 0x20008000, ("L412", "L422"),
          note="bootloader V13.1 sends an extra ACK after the connection (AN2606)"),
    _chip("L4", 0x435, "STM32L43xxx/44xxx", 256, _p(128, _2K), 0x2000C000,
          ("L431", "L432", "L433", "L442", "L443"), i2c_address=0x48, bootloader_id=0x91,
          note="I2C erase may not send its final ACK (seed notes)",
          # DS11453/DS11451 (L431, L432) device summaries: xB 128 KiB, xC 256 KiB; L433 the
          # same, L442/L443 xC only
          min_flash_size=128 * KiB),
    _chip("L4", 0x462, "STM32L45xxx/46xxx", 512, _p(256, _2K), 0x20020000,
          ("L451", "L452", "L462"), i2c_address=0x4A,
          note="clear PEMPTY after flashing a blank part, or it re-enters the bootloader"),
    _chip("L4", 0x415, "STM32L47xxx/48xxx", 1024, _p(512, _2K), 0x20018000,
          ("L471", "L475", "L476", "L485", "L486"), option_end=0x1FFFF810, dual_bank=True,
          i2c_version=0x11, i2c_address=0x43,  # AN2606 L47x/48x chapter
          # OPTR DUALBANK bit 21 (CMSIS); 512/256 KiB: bank 2 pages from 256 (RM0351 Table 9
          # as quoted on the ST community; second-hand)
          banks=Banks(option_bit=21)),
    _chip("L4", 0x461, "STM32L496xx/4A6xx", 1024, _p(512, _2K), 0x20040000, ("L496", "L4A6"),
          option_end=0x1FFFF810, dual_bank=True, i2c_version=0x11, i2c_address=0x4C,
          banks=Banks(option_bit=21)),  # as L47x
    # RM0432: 2 MiB, DBANK=1 (default) gives 2 x 256 pages of 4 KiB (stm32flash: 1 MiB/2 KiB).
    _chip("L4", 0x470, "STM32L4Rxx/4Sxx", 2048, _p(512, _4K), (0x20003200, 0x200A0000),
          ("L4R5", "L4R7", "L4R9", "L4S5", "L4S7", "L4S9"), option_end=0x1FFFF810,
          dual_bank=True),
    _chip("L4", 0x471, "STM32L4P5xx/Q5xx", 1024, _p(256, _4K), (0x20004000, 0x20050000),
          ("L4P5", "L4Q5"), option_start=0x1FF00000, option_end=0x1FF00010, dual_bank=True,
          i2c_address=0x5B),  # AN2606 L4P5/Q5 chapter
    # L5 -- AN2606 L5 chapter; DBANK=1 (default): 2 x 128 pages of 2 KiB.
    _chip("L5", 0x472, "STM32L552xx/562xx", 512, _p(256, _2K), 0x20040000, ("L552", "L562")),
    # U5 -- AN2606 U5 chapters; 8 KiB pages, 2 banks.
    _chip("U5", 0x482, "STM32U575xx/585xx", 2048, _p(256, _8K), 0x200C0000, ("U575", "U585")),
    _chip("U5", 0x481, "STM32U59xxx/5Axxx", 4096, _p(512, _8K), 0x20270000,
          ("U595", "U599", "U5A5", "U5A9")),
    _chip("U5", 0x455, "STM32U535xx/545xx", 512, _p(64, _8K), 0x20040000, ("U535", "U545")),
    # WB -- AN2606 WB chapters. The wireless stack sits at the top of flash (SFSA).
    _chip("WB", 0x494, "STM32WB10xx/15xx", 320, _p(160, _2K), (0x20005000, 0x20040000),
          ("WB10", "WB15", "WB1M"), option_start=0x1FFF7800, option_end=0x1FFF7880,
          bootloader_id_addr=0x1FFF6FFE),
    _chip("WB", 0x495, "STM32WB30(5)xx/50(5)xx", 1024, _p(256, _4K), (0x20004000, 0x2000C000),
          ("WB30", "WB35", "WB50", "WB55", "WB5M"), option_start=0x1FFF8000,
          option_end=0x1FFF8080, note="writes into the wireless stack (above SFSA) fail"),
    # WL -- AN2606 WL chapter.
    _chip("WL", 0x497, "STM32WLE5xx/WL55xx", 256, _p(128, _2K), (0x20002000, 0x20010000),
          ("WLE4", "WLE5", "WL54", "WL55")),
    # C0 -- AN2606 C0 chapters (RAM split [INF]: 4 KiB for the bootloader).
    _chip("C0", 0x443, "STM32C011xx", 32, _p(16, _2K), (0x20001000, 0x20001800), ("C011",)),
    _chip("C0", 0x453, "STM32C031xx", 32, _p(16, _2K), (0x20001000, 0x20003000), ("C031",)),
    # STM32W108 -- not in AN2606; facts as stm32flash.
    _chip("W", 0x9A8, "STM32W-128K", 128, _p(128, KiB), (0x20000200, 0x20002000),
          ("W108xB",), note="not in AN2606; facts as stm32flash"),
    _chip("W", 0x9B0, "STM32W-256K", 256, _p(128, _2K), (0x20000200, 0x20004000),
          ("W108xC", "W108xZ"), note="not in AN2606; facts as stm32flash"),
)
