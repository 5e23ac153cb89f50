"""Handler of `stm32ota sim`: the bootloader simulator on a pty (the only cli/ module using sim/)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from agent.cli.options import command, parser
from agent.sim import parse_faults, serve_pty
from agent.stm32.chips import find

log = logging.getLogger(__name__)


@parser("sim", "run the bootloader simulator on a pseudo-terminal until killed")
def _sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pty", required=True, metavar="PATH",
                   help="symlink to create for the simulated serial port")
    p.add_argument("--chip", default="0x435", help="chip name or PID (default 0x435, STM32L43x)")
    p.add_argument("--baud", type=int, default=115200, help="emulated line speed (default 115200)")
    p.add_argument("--fast", action="store_true", help="no emulated line or flash time")
    p.add_argument("--latency", type=_duration, default=0.0, metavar="TIME",
                   help="turnaround latency per direction change, e.g. 16ms as an FTDI "
                        "adapter's default latency timer (default 0)")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault, e.g. nack-write=5, drop=200, corrupt=300, silent-resets=2, "
                        "slow-erase=4, rdp, clock-error=9%% (the ROM's autobaud error at 115200), "
                        "stray-zero (repeatable)")


@command("sim")
def cmd_sim(args: argparse.Namespace) -> int:
    """Serve the simulator on a pty until SIGTERM/SIGINT."""
    chip = find(args.chip)
    faults = parse_faults(args.fault)
    pid = os.getpid()
    print(f"simulating {chip.name} (PID 0x{chip.pid:03X}) on {args.pty}; Ctrl-C stops.\n"
          f"  talk to it: stm32ota info --port {args.pty} --parity none\n"
          f"  flash:      stm32ota flash FIRMWARE --port {args.pty} --parity none\n"
          f"  firmware:   any .bin or .hex, e.g. head -c 4096 /dev/urandom > fw.bin, or the "
          f"images `stm32ota demo --workdir DIR` leaves in DIR/firmware\n"
          f"  after --go: the application runs and the bootloader is silent; "
          f"kill -USR1 {pid} resets it into the bootloader", file=sys.stderr)
    stats = serve_pty(args.pty, chip, baud=args.baud, realtime=not args.fast, faults=faults,
                      latency=args.latency, on_start=lambda: print(
                          f"application started: the bootloader is silent until "
                          f"kill -USR1 {pid}", file=sys.stderr, flush=True))
    print(f"served: {stats.summary()}", file=sys.stderr)
    return 0


def _duration(text: str) -> float:
    """A short duration for argparse: "16ms", "0.5s" or "0"."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", text.strip())
    if match is None or (match.group(2) is None and float(match.group(1)) != 0):
        raise argparse.ArgumentTypeError(f"expected a duration such as 16ms or 0.5s, not {text!r}")
    return float(match.group(1)) * (0.001 if match.group(2) == "ms" else 1.0)
