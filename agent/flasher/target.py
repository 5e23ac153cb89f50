"""One target as the flasher needs it: link, pins, expected chip, timeouts, retries, quirks.

The one type from config to link: `agent.config.targets` builds it from config.yaml, the command
line from its link options; `agent.flasher.ops` takes it. It names devices (a port path, an I2C
bus number, a GPIO chip); `Devices` holds objects that stand in for them (a simulator's bus, mock
pins), handed in explicitly, as pyserial's loop:// stands in for a port.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from agent.link import Baud
from agent.link.base import I2CBus
from agent.pins import Backend, PinSpec, Step
from agent.stm32.bootloader import Timeouts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UartSettings:
    """A UART link (AN3155): a serial port or pyserial URL, 8 data bits."""

    port: str
    baud: Baud = "auto"  # a rate, or "auto": 115200 stepping down (link.uart.AUTO_BAUDS)
    parity: str = "even"  # AN3155 2.1: 8E1; "none" for ptys and adapters without parity
    inter_byte_delay: float = 0.0

    def describe(self) -> str:
        """Human-readable name of the link for messages."""
        return f"{self.port} (baud auto)" if self.baud == "auto" else \
            f"{self.port} at {self.baud} baud"

    @property
    def key(self) -> str:
        """The wire, as configured: one port is one wire."""
        return f"uart:{self.port}"


@dataclass(frozen=True)
class I2cSettings:
    """An I2C link (AN4221): the bus number of /dev/i2c-N and the bootloader's 7-bit address."""

    bus: int
    address: int = 0x48
    read_chunk: int = 256
    write_chunk: int = 256
    busy_poll: float = 0.002

    def describe(self) -> str:
        """Human-readable name of the link for messages."""
        return f"I2C bus {self.bus} address 0x{self.address:02x}"

    @property
    def key(self) -> str:
        """The wire, as configured: every address on one bus shares it."""
        return f"i2c:{self.bus}"


LinkSettings = Union[UartSettings, I2cSettings]


@dataclass(frozen=True)
class PinsSettings:
    """NRST/BOOT0 wiring and the entry/exit sequences (MCU-pin terms, see agent.pins)."""

    backend: str = "none"
    gpiochip: str = "/dev/gpiochip0"
    nrst: Optional[PinSpec] = None
    boot0: Optional[PinSpec] = None
    enter: tuple[Step, ...] = ()  # empty: the default sequence for the pins that are wired
    exit: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Target:
    """Everything needed to reach, identify and flash one chip."""

    link: LinkSettings
    pins: PinsSettings = field(default_factory=PinsSettings)
    expect_chip: Optional[int] = None  # refuse any other product ID
    timeouts: Timeouts = field(default_factory=Timeouts)
    connect_attempts: int = 3  # resets + connects before giving up: 1 + retries.connect
    write_retries: int = 3  # further tries of one failed command
    verify: str = "auto"  # "auto", "crc", "readback" or "none"
    skip_unchanged: bool = True  # leave pages alone that already hold the image (execute.py)
    i2c_erase_nack: str = "verify"  # bootloader quirk, see agent.stm32.bootloader

    def describe(self) -> str:
        """Human-readable name of the target's link for messages."""
        return self.link.describe()

    @property
    def link_key(self) -> str:
        """Targets with the same key share a wire and are flashed one at a time."""
        return self.link.key


@dataclass(frozen=True)
class Devices:
    """Objects that stand in for the devices a Target names, e.g. a simulator's (the demo's)."""

    i2c_bus: Optional[I2CBus] = None  # instead of opening /dev/i2c-N
    pins: Optional[Callable[[], Backend]] = None  # a new pin backend per session (one closes)

    def pin_backend(self) -> Optional[Backend]:
        """A fresh pin backend for one session, or None to open the configured one."""
        return None if self.pins is None else self.pins()
