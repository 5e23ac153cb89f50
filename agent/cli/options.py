"""The subcommand registry, the option groups several subcommands share (link and pins;
the broker options of publish and fleet), and the Target the link options describe."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from agent.config import load
from agent.config.targets import flasher_target
from agent.config.values import INVALID, Context, Duration
from agent.errors import ConfigError, UsageError
from agent.flasher.target import I2cSettings, LinkSettings, PinsSettings, Target, UartSettings
from agent.mqtt.tls import TlsOptions
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


def duration_arg(text: str) -> float:
    """A duration as config.yaml writes them (30s, 10m, 1h30m) in seconds, 0 or more."""
    ctx = Context(base=Path("."))
    seconds = Duration(lo=0)(text, "duration", ctx)
    if seconds is INVALID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 10m or 1h)")
    return float(seconds)


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
        return _configured(args)
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


def _configured(args: argparse.Namespace) -> Target:
    """A configured target's link, pins, sequences, timeouts and quirks (--config/--target)."""
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
    target = flasher_target(t)
    if args.expect_chip is not None:
        target = replace(target, expect_chip=args.expect_chip)
    return target


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """--broker, --username, --password-file and the TLS options of the one-shot MQTT tools."""
    p.add_argument("--broker", default="localhost:1883",
                   help="HOST:PORT (default localhost:1883; 8883 is usual with TLS)")
    p.add_argument("--username")
    p.add_argument("--password-file", help="file whose first line is the password")
    tls = p.add_argument_group("TLS (any of these turns it on)")
    tls.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) of the broker; "
                     "without it, but with another TLS option, the system CAs")
    tls.add_argument("--cert", metavar="FILE", help="client certificate (PEM), with --key")
    tls.add_argument("--key", metavar="FILE", help="private key of --cert (PEM); a password "
                     "for it is read from the environment variable STM32OTA_KEY_PASSWORD")
    tls.add_argument("--insecure", action="store_true",
                     help="do not check that the broker's certificate names --broker's host "
                          "(the certificate itself is still verified)")


def broker_options(args: argparse.Namespace) -> dict:
    """MqttClient keyword arguments (username, password, tls) from add_broker_args' options."""
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together: a client certificate needs its key")
    for name in ("password_file", "ca", "cert", "key"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--{name.replace('_', '-')} {path}: no such file")
    password = None
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\n")
        if args.username is None:
            raise UsageError("--password-file needs --username (MQTT sends no password without one)")
    tls = None
    if args.ca or args.cert or args.insecure:
        tls = TlsOptions(ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure,
                         key_password=os.environ.get("STM32OTA_KEY_PASSWORD") if args.key else None)
    return {"username": args.username, "password": password, "tls": tls}


def not_connected(client: Any, broker: str, timeout: float) -> ConfigError:
    """The error of a one-shot tool whose MqttClient did not connect: broker_auth for a
    refused login (at once; retrying cannot fix it), broker_unreachable after the timeout."""
    if client.refused:
        return ConfigError(f"the MQTT broker at {broker} {client.refused.replace('the broker ', '')}; "
                           "check --username and --password-file", code="broker_auth")
    why = f": {client.last_failure}" if client.last_failure else " (no answer)"
    return ConfigError(f"cannot connect to the MQTT broker at {broker} within {timeout:g} s{why}; "
                       "check --broker, --username, --password-file and the TLS options",
                       code="broker_unreachable")


def parse_broker(text: str) -> tuple[str, int]:
    """HOST:PORT (port optional, default 1883); [v6]:port allowed."""
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith("]") is False and ":" in host:
        return text.strip("[]"), 1883
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise UsageError(f"--broker {text!r}: expected HOST:PORT, e.g. localhost:1883") from None


def parser(name: str, helptext: str) -> Callable:
    """Register the argument set-up of a subcommand."""

    def register(fn: Callable[[argparse.ArgumentParser], None]) -> Callable:
        PARSERS[name] = (helptext, fn)
        return fn

    return register
