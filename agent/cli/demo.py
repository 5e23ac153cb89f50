"""The `demo` subcommand: a whole update on simulated STM32s with no hardware and no setup."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from agent.cli.broker import broker_options, parse_broker
from agent.cli.options import command, parser
from agent.demo import DemoOptions, run_demo
from agent.errors import EXIT_OK, UsageError

log = logging.getLogger(__name__)


@parser("demo", "a whole signed update end to end on two simulated STM32s: broker, web "
                "server, agent and live progress, nothing to set up")
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast", action="store_true",
                   help="skip UART/I2C line time and flash timing (about 2 s instead of about 7 s)")
    p.add_argument("--faults", action="store_true",
                   help="inject a NACK storm, the L432's missing I2C erase ACK, slow erases and "
                        "a broker restart mid-flash, and show the agent riding through them")
    p.add_argument("--broker", metavar="HOST:PORT",
                   help="use this MQTT broker instead of an embedded one (anonymous, or with "
                        "--username and --password-file)")
    p.add_argument("--username", metavar="USER", help="MQTT user name on --broker")
    p.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is --username's password")
    p.add_argument("--workdir", metavar="DIR", type=Path,
                   help="keep keys, images, manifests, config, state and the final flash "
                        "contents (flash-<target>.bin) here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true",
                   help="after the update, keep broker, chips and agent running until Ctrl-C")


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when both targets end verified on the new version."""
    broker = parse_broker(args.broker) if args.broker else None
    if broker is None and (args.username or args.password_file):
        raise UsageError("--username and --password-file are for --broker HOST:PORT; the "
                         "embedded broker takes anonymous clients")
    login = broker_options(argparse.Namespace(username=args.username,
                                              password_file=args.password_file,
                                              ca=None, cert=None, key=None, insecure=False))

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # like Ctrl-C: tear down broker, chips and agent, then exit

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        run_demo(DemoOptions(fast=args.fast, faults=args.faults, keep=args.keep, broker=broker,
                             workdir=args.workdir, username=login["username"],
                             password=login["password"]))
    finally:
        signal.signal(signal.SIGTERM, old)
    return EXIT_OK
