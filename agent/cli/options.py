"""The subcommand registry, the link and pin options the flasher commands share, and the
Target they describe. The MQTT tools' broker options are in broker.py; a target taken from
--config is made by configured.py, which main() imports only when --config is given, so a
flash with --port never loads the config package (its schema, YAML, the OTA key checks)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Optional

from agent.errors import UsageError
from agent.flasher.target import I2cSettings, LinkSettings, PinsSettings, Target, UartSettings
from agent.pins import PinSpec

log = logging.getLogger(__name__)

# Subcommand -> the agent.cli module that defines it, in the order `--help` lists them. main()
# imports only the module of the command it runs, so `run` loads neither the flash commands
# nor the fleet view nor the simulator.
MODULES: dict[str, str] = {
    "info": "flasher", "flash": "flasher", "read": "flasher", "erase": "flasher",
    "doctor": "doctor", "option-bytes": "optionbytes", "protect": "protection",
    "unprotect": "protection", "chips": "chips", "sim": "sim", "run": "agent",
    "check-config": "agent", "keygen": "release", "sign": "release", "publish": "release",
    "demo": "demo", "fleet": "fleet", "retire": "retire",
}

PARSERS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}

# the handler module of --config/--target (see the module docstring) and what it registers
CONFIG_MODULE = "configured"
CONFIGURED: dict[str, Callable[[argparse.Namespace], Target]] = {}


def command(name: str) -> Callable:
    """Register a subcommand handler."""

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return register


class Address(int):
    """An address from the command line that remembers it was written in decimal."""

    decimal = False


def address_arg(text: str) -> int:
    """An address like int_auto's, warned about when it is not word aligned."""
    value = Address(int_auto(text))
    value.decimal = text.strip().isdigit() and value > 9
    return value


def int_auto(text: str) -> int:
    """An integer in decimal or with a 0x / 0o / 0b prefix (addresses, PIDs)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use 0x08000000 or 134217728)")


def baud_arg(text: str) -> int | str:
    """--baud: a positive rate or "auto"."""
    if text == "auto":
        return text
    try:
        rate = int(text)
    except ValueError:
        rate = 0
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a baud rate (e.g. 115200, or auto)")
    return rate


PORT_ENV = "STM32OTA_PORT"  # like esptool's ESPTOOL_PORT: the port when --port is not given


def add_link_options(p: argparse.ArgumentParser) -> None:
    """--port/--baud/--parity, --i2c-bus/--i2c-address, pins, or --config/--target."""
    g = p.add_argument_group("link (one of --port, --i2c-bus, or --config with --target)")
    g.add_argument("-p", "--port", help="serial port or pyserial URL, e.g. /dev/ttyAMA0 "
                   f"(default: the environment variable {PORT_ENV}, if set)")
    g.add_argument("-b", "--baud", type=baud_arg, default="auto",
                   help="UART baud rate, or auto: 115200 stepping down to 19200 until the "
                        "bootloader answers (default auto)")
    g.add_argument("--parity", choices=["even", "none"], default="even",
                   help="UART parity (default even, as AN3155 requires; none for ptys/odd adapters)")
    g.add_argument("--inter-byte-delay", type=float, default=0.0, metavar="SECONDS",
                   help="pause after every byte sent (a quirk some hosts needed; default 0)")
    g.add_argument("--i2c-bus", type=int, metavar="N", help="I2C bus number (/dev/i2c-N)")
    g.add_argument("--i2c-address", type=int_auto, default=0x48, metavar="A",
                   help="7-bit I2C address of the bootloader (default 0x48, STM32L43x)")
    g.add_argument("--i2c-read-chunk", type=int, default=256, metavar="N",
                   help="largest read per command (default 256)")
    g.add_argument("--i2c-write-chunk", type=int, default=256, metavar="N",
                   help="largest write per command (default 256)")
    g.add_argument("--config", help="config.yaml to take a target's link and pins from")
    g.add_argument("--target", help="target name in --config")
    pg = p.add_argument_group("reset pins")
    pg.add_argument("--pins", dest="pins_backend", default="none",
                    choices=["auto", "libgpiod", "rpigpio", "modem", "none"],
                    help="how NRST/BOOT0 are driven (default none: chip already in bootloader)")
    pg.add_argument("--gpiochip", default="/dev/gpiochip0", help="libgpiod chip (default /dev/gpiochip0)")
    pg.add_argument("--nrst", metavar="LINE", help="GPIO line (or rts/dtr) wired to NRST")
    pg.add_argument("--boot0", metavar="LINE", help="GPIO line (or rts/dtr) wired to BOOT0")
    pg.add_argument("--nrst-active-high", action="store_true",
                    help="a high GPIO level asserts reset (an inverting driver)")
    pg.add_argument("--boot0-active-low", action="store_true",
                    help="a low GPIO level selects the bootloader (an inverting driver)")
    pg.add_argument("--expect-chip", type=int_auto, metavar="PID",
                    help="refuse to touch any chip but this product ID, e.g. 0x435")


def target_from_args(args: argparse.Namespace) -> Target:
    """The Target the link options (or --config/--target) describe; UsageError if unclear."""
    if args.port is None and args.i2c_bus is None and not args.config:
        args.port = os.environ.get(PORT_ENV) or None
    if args.config:
        return CONFIGURED["target"](args)  # filled by agent.cli.configured (main loads it)
    if args.target:
        raise UsageError("--target needs --config PATH")
    link = _link(args)
    backend = args.pins_backend
    if backend != "none" and not (args.nrst or args.boot0):
        raise UsageError(f"--pins {backend} needs --nrst LINE and --boot0 LINE")
    if backend == "none" and (args.nrst or args.boot0):
        raise UsageError("--nrst/--boot0 need --pins BACKEND (auto, libgpiod, rpigpio or modem)")
    pins = PinsSettings(backend=backend, gpiochip=args.gpiochip,
                        nrst=_pin(args.nrst, not args.nrst_active_high),
                        boot0=_pin(args.boot0, args.boot0_active_low))
    return Target(link, pins, expect_chip=args.expect_chip)


def _link(args: argparse.Namespace) -> LinkSettings:
    if args.port and args.i2c_bus is not None:
        raise UsageError("give either --port or --i2c-bus, not both")
    if args.port:
        return UartSettings(port=args.port, baud=args.baud, parity=args.parity,
                            inter_byte_delay=args.inter_byte_delay)
    if args.i2c_bus is None:
        raise UsageError("say how the STM32 is connected: --port DEV, --i2c-bus N, "
                         "or --config PATH --target NAME")
    if not 0x03 <= args.i2c_address <= 0x77:
        raise UsageError(f"I2C address 0x{args.i2c_address:x} is not a 7-bit device address "
                         "(0x03-0x77); the L43x bootloader answers at 0x48")
    return I2cSettings(bus=args.i2c_bus, address=args.i2c_address,
                       read_chunk=args.i2c_read_chunk, write_chunk=args.i2c_write_chunk)


def _pin(line: Optional[str], active_low: bool) -> Optional[PinSpec]:
    if line is None:
        return None
    return PinSpec(line=int(line) if line.isdigit() else line, active_low=active_low)


def parser(name: str, helptext: str) -> Callable:
    """Register the argument set-up of a subcommand."""

    def register(fn: Callable[[argparse.ArgumentParser], None]) -> Callable:
        PARSERS[name] = (helptext, fn)
        return fn

    return register
