"""`stm32ota doctor`: check a new board's wiring, port and option bytes; thin over flasher.doctor."""

from __future__ import annotations

import argparse
import json
import logging

from agent.cli.options import add_link_options, command, parser, target_from_args
from agent.flasher import doctor

log = logging.getLogger(__name__)

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skipped": "skip"}


@parser("doctor", "check a board step by step: port and parity, bootloader and baud, reset "
                  "pins, chip, protection, BOOT0 option bytes, empty-flash latch")
def _doctor_args(p: argparse.ArgumentParser) -> None:
    add_link_options(p)
    p.add_argument("--json", action="store_true",
                   help="a JSON list of {check, status, detail, fix} on stdout, for scripts")


@command("doctor")
def cmd_doctor(args: argparse.Namespace) -> int:
    """Run the checks, print a verdict and fix for each; exit with the first failure's code."""
    verdicts = doctor.diagnose(target_from_args(args))
    if args.json:
        print(json.dumps([v.as_dict() for v in verdicts], indent=2))
    else:
        for v in verdicts:
            print(f"[{_MARK[v.status]}] {v.check:<16} {v.detail}")
            if v.fix:
                print(f"{'':>24}fix: {v.fix}")
    return doctor.exit_code(verdicts)
