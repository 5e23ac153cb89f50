"""Links to the ROM bootloader: `UartLink` (pyserial) and `I2cLink` (smbus2), and `open_link`."""

from __future__ import annotations

import logging
from typing import Mapping, Optional

from agent.errors import UsageError
from agent.link.base import Capabilities, I2CBus, Link
from agent.link.i2c import I2cLink
from agent.link.uart import AUTO_BAUDS, Baud, UartLink, baud_rates

log = logging.getLogger(__name__)

__all__ = ["AUTO_BAUDS", "Baud", "Capabilities", "I2CBus", "Link", "baud_rates", "open_link"]


def open_link(
    *,
    port: str | None = None,
    baud: int = 115200,
    parity: str = "even",
    inter_byte_delay: float = 0.0,
    modem_lines: Optional[Mapping[str, bool]] = None,
    i2c_bus: int | str | I2CBus | None = None,
    i2c_address: int | None = None,
    read_chunk: int = 256,
    write_chunk: int = 256,
    busy_poll: float = 0.002,
) -> Link:
    """Open a UART link (`port`) or an I2C link (`i2c_bus` + `i2c_address`); exactly one kind.

    `modem_lines` presets pyserial's rts/dtr (True = asserted) before the port opens.
    """
    if (port is None) == (i2c_bus is None):
        raise UsageError("give either a serial port or an I2C bus (with its address), not both "
                         "or neither", code="link_choice")
    if port is not None:
        return UartLink(port, baud=baud, parity=parity, inter_byte_delay=inter_byte_delay,
                        modem_lines=modem_lines)
    if i2c_address is None:
        raise UsageError("an I2C link needs the bootloader's 7-bit address (e.g. 0x48 for L43x)",
                         code="link_choice")
    return I2cLink(i2c_bus, i2c_address, read_chunk=read_chunk, write_chunk=write_chunk,
                   busy_poll=busy_poll)
