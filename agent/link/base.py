"""The Link contract: how the bootloader client moves bytes, and what the wire can do.

The protocol asks the link what it can do, never what it is: a UART is a byte stream that
needs the 0x7F autobaud sync and returns 3 bytes to GET_VERSION (AN3155); an I2C target
exchanges whole frames, offers no-stretch commands answered with BUSY polling (AN4221) and
returns 1 byte to GET_VERSION.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

# `-vv` shows every byte on the wire (docs/troubleshooting.md): one DEBUG line per write and per read
wire_log = logging.getLogger("agent.link.bytes")


def trace(where: str, arrow: str, data: bytes) -> None:
    """Log the bytes of one write (">") or read ("<") at DEBUG; free when DEBUG is off."""
    if wire_log.isEnabledFor(logging.DEBUG):
        wire_log.debug("%s %s %s", where, arrow, data.hex(" "))


@dataclass(frozen=True)
class Capabilities:
    """What a link can do; the bootloader client picks its behaviour from this alone."""

    byte_stream: bool  # True: bytes may be read one at a time (UART); False: whole frames (I2C)
    needs_sync: bool  # send 0x7F first and expect ACK (AN3155 2.1); I2C has no sync
    version_extra_bytes: int  # GET_VERSION: UART sends version + 2 option bytes, I2C version only
    erase_count_checksum: bool  # AN4221: page count gets its own checksum + ACK before the list
    no_stretch: bool  # prefer no-stretch opcodes (0x32, 0x45, ...) when GET offers them
    polls_busy: bool  # final answer of a long command may be BUSY (0x76) until done
    max_read: int  # largest READ_MEMORY per command (AN3155: 256)
    max_write: int  # largest WRITE_MEMORY per command (AN3155: 256)
    line_bytes_per_s: float | None  # the wire's payload limit, for progress and benchmarks
    max_frame: int | None = None  # largest single write a frame link can send; None: a stream


class Link(Protocol):
    """A connection to one bootloader. Implementations: link.uart.UartLink, link.i2c.I2cLink."""

    caps: Capabilities

    def write(self, data: bytes) -> None:
        """Send bytes (UART) or one frame (I2C)."""

    def read(self, n: int, timeout: float) -> bytes:
        """Return exactly n bytes (UART) or one n-byte frame (I2C); raise LinkTimeout."""

    def flush_input(self) -> None:
        """Drop anything received but not read (stray bytes after a reset)."""

    def close(self) -> None:
        """Release the port or bus."""


class I2CBus(Protocol):
    """An I2C adapter as smbus2.SMBus offers it: combined transfers of i2c_msg messages.

    A link opens /dev/i2c-N itself; a simulated bus object is handed in instead (one explicit
    parameter, see agent.flasher.target.Devices), as pyserial's loop:// stands in for a port.
    """

    def i2c_rdwr(self, *msgs: Any) -> None:
        """Carry out the messages as one transfer (repeated starts, no stop in between)."""
