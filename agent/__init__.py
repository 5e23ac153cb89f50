"""stm32ota: keep STM32 microcontrollers up to date through ST's ROM bootloader."""

__version__ = "0.1.0"
