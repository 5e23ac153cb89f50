"""Handlers of `protect` and `unprotect`: read-out and write protection, only on explicit request."""

from __future__ import annotations

import argparse
import logging

from agent.cli.options import add_link_options, command, parser, target_from_args
from agent.errors import EXIT_OK, UsageError
from agent.flasher import ops

log = logging.getLogger(__name__)

CONFIRM = "--yes-erase-everything"


def _which(p: argparse.ArgumentParser) -> None:
    add_link_options(p)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--read", action="store_true", help="read-out protection (RDP level 1)")
    kind.add_argument("--write", action="store_true", help="write protection of flash sectors")


@parser("protect", "set read-out protection (--read) or write-protect sectors (--write --sectors)")
def _protect_args(p: argparse.ArgumentParser) -> None:
    _which(p)
    p.add_argument("--sectors", metavar="N,N,...",
                   help="with --write: the sector (page group) numbers to protect, e.g. 0,1")


@command("protect")
def cmd_protect(args: argparse.Namespace) -> int:
    """Set RDP level 1, or write-protect sectors; the chip resets afterwards."""
    if args.read and args.sectors:
        raise UsageError("--sectors goes with --write")
    sectors: tuple[int, ...] = ()
    if args.write:
        try:
            sectors = tuple(int(n, 0) for n in (args.sectors or "").split(",") if n.strip())
        except ValueError:
            sectors = ()
        if not sectors:
            raise UsageError("--write needs --sectors N,N,... (e.g. --sectors 0,1)")
    change = "read_protect" if args.read else "write_protect"
    _say(args, ops.protection(target_from_args(args), change, sectors))
    return EXIT_OK


@parser("unprotect", f"remove read-out protection (--read {CONFIRM}: mass-erases the chip) "
                     "or the write protection of every sector (--write)")
def _unprotect_args(p: argparse.ArgumentParser) -> None:
    _which(p)
    p.add_argument(CONFIRM, action="store_true", dest="confirmed",
                   help="with --read: yes, erase all of the flash (the chip does it itself "
                        "when its read-out protection is removed)")


@command("unprotect")
def cmd_unprotect(args: argparse.Namespace) -> int:
    """Remove read-out protection (mass erase) or write protection; the chip resets afterwards."""
    if args.read and not args.confirmed:
        raise UsageError(f"removing read-out protection erases ALL of the flash: add {CONFIRM} "
                         "if that is what you want", code="confirm_needed")
    change = "read_unprotect" if args.read else "write_unprotect"
    _say(args, ops.protection(target_from_args(args), change))
    return EXIT_OK


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message)
