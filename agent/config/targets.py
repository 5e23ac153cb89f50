"""A configured target -> the flasher's Target: the one conversion (the updater's FlashTarget
wraps it in service.py, so a flasher command never imports the update pipeline)."""

from __future__ import annotations

import logging

from agent.config import TargetConfig, UartLinkConfig
from agent.flasher.target import I2cSettings, LinkSettings, PinsSettings, Target, UartSettings
from agent.pins import PinSpec

log = logging.getLogger(__name__)


def _link(t: TargetConfig) -> LinkSettings:
    link = t.link
    if isinstance(link, UartLinkConfig):
        return UartSettings(port=link.port, baud=link.baud, parity=link.parity,
                            inter_byte_delay=link.inter_byte_delay)
    return I2cSettings(bus=link.bus, address=link.address, read_chunk=link.read_chunk,
                       write_chunk=link.write_chunk, busy_poll=link.busy_poll)


def _pins(t: TargetConfig) -> PinsSettings:
    p = t.pins
    nrst = PinSpec(p.nrst.line, p.nrst.active_low) if p.nrst else None
    boot0 = PinSpec(p.boot0.line, p.boot0.active_low) if p.boot0 else None
    return PinsSettings(backend=p.backend, gpiochip=p.chip or "/dev/gpiochip0", nrst=nrst,
                        boot0=boot0, enter=tuple(t.enter_bootloader),
                        exit=tuple(t.exit_bootloader))


def flasher_target(t: TargetConfig) -> Target:
    """Link, pins, expected chip, timeouts, retries and quirks of a configured target."""
    return Target(link=_link(t), pins=_pins(t), expect_chip=t.expect_chip, timeouts=t.timeouts,
                  connect_attempts=1 + t.retries.connect, write_retries=t.retries.write,
                  verify=t.verify, skip_unchanged=t.skip_unchanged,
                  i2c_erase_nack=t.quirks.i2c_erase_nack)

