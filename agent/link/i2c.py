"""I2C link to the AN4221 bootloader through Linux i2c-dev (smbus2), one i2c_rdwr per frame."""

from __future__ import annotations

import errno
import logging
import time
from types import ModuleType
from typing import TYPE_CHECKING, Callable

from agent.errors import LinkError, LinkTimeout, UsageError
from agent.link.base import Capabilities, I2CBus, trace

if TYPE_CHECKING:
    from smbus2 import SMBus

log = logging.getLogger(__name__)

# Linux i2c-dev (drivers/i2c/i2c-dev.c) refuses I2C_RDWR messages longer than 8192 bytes; that,
# not write_chunk, bounds a frame such as an erase page list (AN4221 allows 512 pages = 1025 B)
I2C_DEV_MAX_MESSAGE = 8192

# Errors the i2c-dev drivers report when the target does not acknowledge its address or a byte
# (a bootloader that is busy, reset, or absent): worth polling again until the deadline.
_NO_ANSWER = {errno.EREMOTEIO, errno.ENXIO, errno.EIO, errno.ETIMEDOUT, errno.EAGAIN}


def _smbus2() -> ModuleType:
    """smbus2, imported when the first I2cLink is made: it loads ctypes, which a UART flash (the
    command line's usual path, timed against stm32flash) would otherwise pay for at start."""
    import smbus2  # noqa: PLC0415 - lazy: only I2C links use it
    return smbus2


class I2cLink:
    """One 7-bit target on an I2C bus; frames are single i2c_rdwr transfers (no clock gaps)."""

    def __init__(
        self,
        bus: int | str | I2CBus,
        address: int,
        read_chunk: int = 256,
        write_chunk: int = 256,
        busy_poll: float = 0.002,
        frame_timeout: float = 0.5,
        *,
        max_frame: int = I2C_DEV_MAX_MESSAGE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0x03 <= address <= 0x77:
            raise UsageError(f"I2C address 0x{address:02X} is outside 0x03..0x77 (7-bit)",
                             code="bad_i2c_address")
        for name, value in (("read_chunk", read_chunk), ("write_chunk", write_chunk)):
            if not 1 <= value <= 256 * 4:
                raise UsageError(f"I2C {name} must be 1..1024 bytes, got {value}",
                                 code="bad_chunk")
        if not write_chunk + 2 <= max_frame <= I2C_DEV_MAX_MESSAGE:
            raise UsageError(f"I2C max_frame must be {write_chunk + 2}..{I2C_DEV_MAX_MESSAGE} "
                             f"bytes (write_chunk + 2 .. the i2c-dev limit), got {max_frame}",
                             code="bad_chunk")
        self.address = address
        self.read_chunk = read_chunk
        self.write_chunk = write_chunk
        self.max_frame = max_frame
        self.busy_poll = busy_poll
        self.frame_timeout = frame_timeout
        self._sleep = sleep
        self._clock = clock
        self._smbus2 = _smbus2()
        self.caps = Capabilities(
            byte_stream=False, needs_sync=False, version_extra_bytes=0,
            erase_count_checksum=True, no_stretch=True, polls_busy=True,
            max_read=read_chunk, max_write=write_chunk,
            line_bytes_per_s=400_000 / 9,  # 400 kHz fast mode, 8 bits + ACK per byte
            max_frame=max_frame,
        )
        self._owns_bus = not hasattr(bus, "i2c_rdwr")
        self.name = f"/dev/i2c-{bus}" if isinstance(bus, int) else str(bus) if self._owns_bus \
            else type(bus).__name__
        self.bus = self._open(bus) if self._owns_bus else bus

    def _open(self, bus: int | str) -> SMBus:
        """Open i2c-dev and refuse SMBus-only adapters (no combined I2C transfers)."""
        try:
            smbus = self._smbus2.SMBus(bus)
        except (OSError, TypeError) as exc:
            hint = ("add the user to the i2c group" if getattr(exc, "errno", None) == errno.EACCES
                    else "enable the bus (dtparam=i2c_arm=on) and check the bus number")
            raise LinkError(f"cannot open I2C bus {self.name}: {hint} ({exc})",
                            code="port_unavailable") from exc
        funcs = getattr(smbus, "funcs", None)
        if funcs is not None and not funcs & self._smbus2.I2cFunc.I2C:
            smbus.close()
            # stm32flash i2c.c refuses these too: the bootloader needs plain I2C transfers
            raise LinkError(f"I2C adapter {self.name} only does SMBus, not plain I2C transfers",
                            code="port_unavailable")
        return smbus

    def _where(self) -> str:
        return f"I2C {self.name} address 0x{self.address:02X}"

    def write(self, data: bytes) -> None:
        """Send one frame; frames longer than max_frame are refused before touching the bus.

        write_chunk bounds WRITE_MEMORY data (the client asks caps.max_write), not frames: an
        erase page list may be longer than a write (AN4221 2.7: up to 512 page numbers).
        """
        if len(data) > self.max_frame:
            raise UsageError(f"{self._where()}: frame of {len(data)} bytes exceeds max_frame "
                             f"{self.max_frame}", code="frame_too_long")
        trace(self._where(), ">", data)
        try:
            self.bus.i2c_rdwr(self._smbus2.i2c_msg.write(self.address, bytes(data)))
        except OSError as exc:
            cls = LinkTimeout if exc.errno in _NO_ANSWER else LinkError
            raise cls(f"{self._where()}: write of {len(data)} bytes not acknowledged ({exc})") \
                from exc

    def read(self, n: int, timeout: float) -> bytes:
        """Read one n-byte frame, polling while the target does not answer its address."""
        if n > self.read_chunk:
            raise UsageError(f"{self._where()}: read of {n} bytes exceeds read_chunk "
                             f"{self.read_chunk}", code="frame_too_long")
        deadline = self._clock() + timeout
        while True:
            msg = self._smbus2.i2c_msg.read(self.address, n)
            try:
                self.bus.i2c_rdwr(msg)
                trace(self._where(), "<", bytes(msg))
                return bytes(msg)
            except OSError as exc:
                if exc.errno not in _NO_ANSWER:
                    raise LinkError(f"{self._where()}: read of {n} bytes failed ({exc})") from exc
                if self._clock() >= deadline:
                    raise LinkTimeout(f"{self._where()}: no answer to a {n}-byte read within "
                                      f"{timeout:.3g} s ({exc})") from exc
            self._sleep(self.busy_poll)

    def flush_input(self) -> None:
        """Nothing to flush: I2C has no receive buffer on the host side."""

    def close(self) -> None:
        """Close the bus if this link opened it."""
        if self._owns_bus:
            try:
                self.bus.close()
            except OSError:
                log.debug("closing %s failed", self.name, exc_info=True)

    def __repr__(self) -> str:
        return f"I2cLink({self.name!r}, address=0x{self.address:02X})"

    def __str__(self) -> str:
        return self._where()
