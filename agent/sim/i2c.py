"""A simulated I2C bus that duck-types `smbus2.SMBus.i2c_rdwr` for the bootloader simulator.

Pass smbus2 `i2c_msg` objects (write: addr + bytes; read: addr + length); read buffers are
filled in place. A transaction to an address that does not acknowledge (nobody attached, chip
in reset or running its application, or the bootloader serving UART) raises
OSError(EREMOTEIO), as Linux i2c-dev does. A read the bootloader has nothing for raises
OSError(ETIMEDOUT): the target stretches SCL until the host controller gives up.
"""

from __future__ import annotations

import ctypes
import errno
import logging
from typing import Any

from agent.sim.core import SimChip

log = logging.getLogger(__name__)

I2C_M_RD = 0x0001  # linux/i2c.h
_BUS_HZ = 400_000  # AN2606: I2C bootloader runs up to 400 kHz (1 MHz on some parts)


class SimI2CBus:
    """An I2C bus with simulated bootloaders attached at 7-bit addresses."""

    def __init__(self) -> None:
        self.devices: dict[int, SimChip] = {}
        self.closed = False

    def attach(self, address: int, sim: SimChip) -> None:
        """Wire a simulated chip to the bus at a 7-bit address."""
        if not 0x03 <= address <= 0x77:
            raise ValueError(f"7-bit I2C address 0x{address:02X} is outside 0x03..0x77")
        self.devices[address] = sim

    def i2c_rdwr(self, *msgs: Any) -> None:
        """Run write/read messages in order, like the I2C_RDWR ioctl."""
        if self.closed:
            raise OSError(errno.EBADF, "I2C bus is closed")
        for msg in msgs:
            sim = self.devices.get(msg.addr)
            if sim is None or not sim.i2c_acks_address():
                raise OSError(errno.EREMOTEIO, f"no ACK from I2C address 0x{msg.addr:02X}")
            if sim.realtime:
                sim.sleep((1 + msg.len) * 9 / _BUS_HZ)
            if msg.flags & I2C_M_RD:
                data = sim.i2c_read(msg.len)
                ctypes.memmove(msg.buf, data, msg.len)
            else:
                sim.i2c_write(ctypes.string_at(msg.buf, msg.len))

    def close(self) -> None:
        """Close the bus (further transfers fail with EBADF)."""
        self.closed = True

    def __enter__(self) -> "SimI2CBus":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
