"""Handler of `stm32ota sim`: the bootloader simulator on a pty (the only cli/ module using sim/)."""

from __future__ import annotations

import argparse
import logging
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
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault, e.g. nack-write=5, drop=200, corrupt=300, silent-resets=2, "
                        "slow-erase=4, rdp, clock-error=9%% (the ROM's autobaud error at 115200), "
                        "stray-zero (repeatable)")


@command("sim")
def cmd_sim(args: argparse.Namespace) -> int:
    """Serve the simulator on a pty until SIGTERM/SIGINT."""
    chip = find(args.chip)
    faults = parse_faults(args.fault)
    print(f"simulating {chip.name} (PID 0x{chip.pid:03X}) on {args.pty}; "
          f"SIGUSR1 resets it into the bootloader; Ctrl-C stops", file=sys.stderr)
    serve_pty(args.pty, chip, baud=args.baud, realtime=not args.fast, faults=faults)
    return 0
