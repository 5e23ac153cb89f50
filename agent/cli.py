"""The `stm32ota` command line: argparse subcommands, and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from agent import __version__
from agent.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Stm32OtaError, UsageError

log = logging.getLogger(__name__)

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
# Modules that register subcommands, in the order `stm32ota --help` lists them.
CLI_MODULES = ("cli_commands", "cli_agent", "cli_demo", "cli_fleet")


def command(name: str) -> Callable:
    """Register a subcommand handler."""

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return register


def int_auto(text: str) -> int:
    """An integer in decimal or with a 0x / 0o / 0b prefix (addresses, PIDs)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use 0x08000000 or 134217728)")


def add_link_options(p: argparse.ArgumentParser) -> None:
    """--port/--baud/--parity, --i2c-bus/--i2c-address, pins, or --config/--target."""
    g = p.add_argument_group("link (one of --port, --i2c-bus, or --config with --target)")
    g.add_argument("--port", help="serial port or pyserial URL, e.g. /dev/ttyAMA0")
    g.add_argument("--baud", type=int, default=115200, help="UART baud rate (default 115200)")
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


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (contract: DESIGN.md)."""
    import importlib

    from agent import cli_commands

    for name in CLI_MODULES:  # each registers its subcommands
        importlib.import_module(f"agent.{name}")

    p = argparse.ArgumentParser(prog="stm32ota", description=(
        "Flash STM32 microcontrollers through ST's ROM bootloader (UART or I2C), "
        "and keep them up to date over MQTT."))
    p.add_argument("--version", action="version", version=f"stm32ota {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: protocol)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (-vv: protocol)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only errors")
    for name, (helptext, setup) in cli_commands.PARSERS.items():
        sp = sub.add_parser(name, help=helptext, description=helptext, parents=[common])
        setup(sp)
    return p


def setup_logging(verbose: int, quiet: bool) -> None:
    """Plain log lines on stderr."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `stm32ota` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a usage error argparse printed (2)
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    setup_logging(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("stm32ota: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Stm32OtaError as err:
        print(f"stm32ota: error [{err.code}]: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file that cannot be read or written
        code = "file_error"
        where = f": {err.filename}" if err.filename else ""
        print(f"stm32ota: error [{code}]: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def usage(message: str) -> UsageError:
    """A UsageError for a bad combination of options."""
    return UsageError(message)
