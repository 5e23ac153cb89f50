"""From the link options of a local-flasher command (or --config/--target) to a Connection."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any, ContextManager, Optional

from agent.errors import UsageError
from agent.flasher.session import LinkSpec, PinsSpec, Session, open_session
from agent.stm32.bootloader import Timeouts

log = logging.getLogger(__name__)


def _pin(line: Optional[str], active_low: bool) -> Any:
    from agent.pins import PinSpec

    if line is None:
        return None
    return PinSpec(line=int(line) if line.isdigit() else line, active_low=active_low)


@dataclass(frozen=True)
class Connection:
    """How to reach one chip: link, pins, expected PID and session settings (CLI or config)."""

    link: LinkSpec
    pins: PinsSpec = field(default_factory=PinsSpec)
    expect_pid: Optional[int] = None
    timeouts: Optional[Timeouts] = None
    attempts: int = 3
    bootloader_options: dict = field(default_factory=dict)
    verify: str = "auto"
    write_retries: int = 3

    def open(self) -> ContextManager[Session]:
        """Enter the bootloader and identify the chip (agent.flasher.session.open_session)."""
        return open_session(self.link, self.pins, expect_pid=self.expect_pid,
                            timeouts=self.timeouts, attempts=self.attempts,
                            bootloader_options=self.bootloader_options)


def connection(args: argparse.Namespace) -> Connection:
    """The Connection the link options (or --config/--target) describe; UsageError if unclear."""
    if args.config:
        return _configured(args)
    if args.target:
        raise UsageError("--target needs --config PATH")
    if args.port and args.i2c_bus is not None:
        raise UsageError("give either --port or --i2c-bus, not both")
    if args.port:
        link = LinkSpec("uart", port=args.port, baud=args.baud, parity=args.parity,
                        inter_byte_delay=args.inter_byte_delay)
    elif args.i2c_bus is not None:
        if not 0x03 <= args.i2c_address <= 0x77:
            raise UsageError(f"I2C address 0x{args.i2c_address:x} is not a 7-bit device address "
                             "(0x03-0x77); the L43x bootloader answers at 0x48")
        link = LinkSpec("i2c", bus=args.i2c_bus, address=args.i2c_address,
                        read_chunk=args.i2c_read_chunk, write_chunk=args.i2c_write_chunk)
    else:
        raise UsageError("say how the STM32 is connected: --port DEV, --i2c-bus N, "
                         "or --config PATH --target NAME")
    backend = args.pins_backend
    if backend != "none" and not (args.nrst or args.boot0):
        raise UsageError(f"--pins {backend} needs --nrst LINE and --boot0 LINE")
    if backend == "none" and (args.nrst or args.boot0):
        raise UsageError("--nrst/--boot0 need --pins BACKEND (auto, libgpiod, rpigpio or modem)")
    pins = PinsSpec(backend=backend, chip=args.gpiochip,
                    nrst=_pin(args.nrst, not args.nrst_active_high),
                    boot0=_pin(args.boot0, args.boot0_active_low))
    return Connection(link, pins, args.expect_chip)


def _configured(args: argparse.Namespace) -> Connection:
    """A configured target's link, pins, sequences, timeouts and quirks (--config/--target)."""
    from agent.config import load
    from agent.targets import flash_target

    given = [o for o, v in (("--port", args.port), ("--i2c-bus", args.i2c_bus),
                            ("--nrst", args.nrst), ("--boot0", args.boot0)) if v is not None]
    if args.pins_backend != "none":
        given.append("--pins")
    if given:
        raise UsageError(f"--config takes the link and pins from the target; drop "
                         f"{', '.join(given)} or drop --config")
    cfg = load(args.config)
    if args.target is None:
        if len(cfg.targets) != 1:
            names = ", ".join(t.name for t in cfg.targets)
            raise UsageError(f"{args.config} has several targets ({names}): say which with --target")
        t = cfg.targets[0]
    else:
        t = cfg.target(args.target)
    ft = flash_target(t)
    expect = args.expect_chip if args.expect_chip is not None else ft.expect_chip
    return Connection(ft.link, ft.pins, expect, timeouts=ft.timeouts,
                      attempts=max(1, ft.connect_attempts),
                      bootloader_options=dict(ft.bootloader_options), verify=ft.verify,
                      write_retries=ft.write_retries)
