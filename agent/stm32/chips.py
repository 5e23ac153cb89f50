"""One table of STM32 parts, from AN2606: the single source of truth for chip facts.

CONTRACT: `Chip` fields below; `lookup(pid) -> Chip` (KeyError-free: raises ChipMismatch for an
unknown PID), `find(name_or_pid: str) -> Chip` for the command line (`L432`, `0x435`),
`CHIPS: dict[int, Chip]`. Page numbering is over the whole flash from flash_start, in the
order of `pages` (the erase commands take these numbers).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chip:
    """Facts about one product ID that flashing depends on."""

    pid: int
    name: str  # e.g. "STM32L43xxx/44xxx"
    family: str  # "F0", "F1", ..., "L4", "WB"
    flash_start: int
    flash_size: int  # largest flash of the PID, bytes (the flash-size register may say less)
    pages: tuple[tuple[int, int], ...]  # runs of (count, size in bytes), from flash_start
    write_align: int  # bytes a WRITE_MEMORY start and length must be a multiple of (4, 8, 32)
    ram_start: int  # first RAM byte free for us (after the bootloader's own RAM)
    ram_end: int  # one past the last RAM byte
    sysmem_start: int
    sysmem_end: int
    option_start: int
    option_end: int  # one past the last option byte
    mass_erase: bool = True  # False where AN2606/stm32flash say global erase does not work
    flash_size_reg: int | None = None  # address of the flash-size register (KiB, 16 bit LE)
    bootloader_id_addr: int | None = None  # where AN2606 says the bootloader ID byte lives
    dual_bank: bool = False
    uart_version: int = 0x31  # USART bootloader protocol version (AN2606 per product), 0 = none
    i2c_version: int = 0  # I2C bootloader protocol version, 0 = no I2C bootloader
    i2c_address: int | None = None  # 7-bit I2C address of the bootloader (AN2606)
    erase_ms_per_page: float = 25.0  # typical page/sector erase time (datasheet), for the simulator
    program_us_per_word: float = 90.0  # typical programming time per write_align unit


# Seed entry so other modules can start; the full AN2606 table replaces this.
# AN2606 Tables 3/164/165: L43x/44x, bootloader V9.1, USART V3.1, I2C V1.2 at 0x48,
# 12 KiB bootloader RAM from 0x20000000; flash programmed in 64-bit double words.
CHIPS: dict[int, Chip] = {
    0x435: Chip(
        pid=0x435, name="STM32L43xxx/44xxx", family="L4",
        flash_start=0x08000000, flash_size=256 * 1024, pages=((128, 2048),), write_align=8,
        ram_start=0x20003100, ram_end=0x2000C000,
        sysmem_start=0x1FFF0000, sysmem_end=0x1FFF7000,
        option_start=0x1FFF7800, option_end=0x1FFF7810,
        flash_size_reg=0x1FFF75E0, bootloader_id_addr=0x1FFF6FFE,
        uart_version=0x31, i2c_version=0x12, i2c_address=0x48,
        erase_ms_per_page=22.0, program_us_per_word=82.0,
    ),
}
