"""Handlers of the local-flasher subcommands: info, flash, read, erase; thin over flasher.ops."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import replace
from typing import Callable

from agent.cli.optionbytes import options_text
from agent.cli.options import add_link_options, command, int_auto, parser, target_from_args
from agent.errors import UsageError
from agent.flasher import image as firmware
from agent.flasher import ops
from agent.flasher.session import Identity
from agent.flasher.target import Target
from agent.progress import ProgressPrinter
from agent.stm32.protocol import OPCODE_NAMES

log = logging.getLogger(__name__)


def _out(args: argparse.Namespace) -> Callable[[str], None]:
    return (lambda text: None) if args.quiet else (lambda text: print(text))


def page_layout(pages: tuple) -> list[list[int]]:
    """Runs of equal pages, e.g. [[4, 16384], [1, 65536], [7, 131072]] for an F4's sectors."""
    runs: list[list[int]] = []
    for _, size in pages:
        if runs and runs[-1][1] == size:
            runs[-1][0] += 1
        else:
            runs.append([1, size])
    return runs


def describe(s: Identity) -> dict:
    """What `info` reports, as plain data (also the --json output)."""
    chip = s.chip
    pages = chip.page_table(s.flash_size)
    sizes = sorted({size for _, size in pages})
    return {
        "bootloader_version": f"{s.info.version >> 4}.{s.info.version & 0xF}",
        "option_bytes": s.info.option_bytes.hex(),
        "commands": [OPCODE_NAMES.get(op, f"0x{op:02X}") for op in s.info.commands],
        "pid": f"0x{s.info.pid:03X}",
        "chip": chip.name,
        "family": chip.family,
        "flash_start": f"0x{chip.flash_start:08X}",
        "flash_size": s.flash_size,
        "pages": len(pages),
        "page_sizes": sizes,
        "page_layout": page_layout(pages),
        "write_align": chip.write_align,
        "bootloader_id": None if s.bootloader_id is None else f"0x{s.bootloader_id:02X}",
        "read_protected": s.read_protected,
        "baud": s.baud,  # the UART rate the bootloader answered at (`--baud auto`); I2C: None
        "user_options": None if s.options is None else s.options.as_dict(),
    }


def info_text(d: dict) -> str:
    """The `info` report for people, from describe()."""
    layout = " + ".join(f"{n} x {ops.size_text(size)}" for n, size in d["page_layout"])
    return "\n".join([
        f"Bootloader : version {d['bootloader_version']}"
        + (f", ID {d['bootloader_id']}" if d["bootloader_id"] else ""),
        f"Commands   : {' '.join(d['commands'])}",
        f"Chip       : {d['pid']} {d['chip']} ({d['family']})",
        f"Flash      : {ops.size_text(d['flash_size'])} at {d['flash_start']}, {d['pages']} pages "
        f"({layout}), writes aligned to {d['write_align']} bytes",
        f"Protection : read-out protection {'ACTIVE' if d['read_protected'] else 'off'}"]
        + ([f"Link       : {d['baud']} baud"] if d["baud"] else [])
        + ([f"Options    : {options_text(d['user_options'])}"] if d["user_options"] else []))


@parser("info", "show bootloader version, command set, PID, chip name, flash size and page layout")
def _info_args(p: argparse.ArgumentParser) -> None:
    add_link_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")
    p.add_argument("--go", action="store_true", help="start the application afterwards")


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    """Connect and describe the chip."""
    target = target_from_args(args)
    identity = ops.start(target)[0] if args.go else ops.info(target)
    d = describe(identity)
    print(json.dumps(d, indent=2) if args.json else info_text(d))
    return 0


@parser("flash", "write an image (hex, srec or bin) and verify it, like stm32flash -w FILE -v")
def _flash_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="firmware: .hex, .srec/.s19/.s28/.s37, or .bin")
    add_link_options(p)
    p.add_argument("--address", type=int_auto, help="load address of a .bin (default: flash start)")
    p.add_argument("--format", choices=["hex", "srec", "bin"], help="override detection by extension")
    p.add_argument("--no-verify", action="store_true", help="skip verification (not recommended)")
    p.add_argument("--verify", choices=["auto", "crc", "readback"],
                   help="how to verify: the bootloader's checksum where offered (auto, the "
                        "default or the target's verify), or read back")
    p.add_argument("--no-skip", action="store_true",
                   help="erase and write every page the image covers, also those that already "
                        "hold it (default: leave those alone)")
    p.add_argument("--go", nargs="?", const=-1, type=_go_address, metavar="ADDR",
                   help="start the application afterwards: reset through the pins, or GO to ADDR")
    p.add_argument("--retries", type=int, metavar="N",
                   help="further tries of a failed block: 0 is one attempt (default 3, or the "
                        "target's retries.write)")


def _go_address(text: str) -> int:
    """--go's optional address; a file name here means FILE came after a bare --go."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address: put FILE before a bare --go, or write --go=0x08000000")


@command("flash")
def cmd_flash(args: argparse.Namespace) -> int:
    """Erase the pages the image covers, write, verify, optionally start it."""
    target = _flash_settings(target_from_args(args), args)
    image = firmware.load(args.file, fmt=args.format, address=args.address,  # bad files: before
                          bin_default=firmware.DEFAULT_BIN_ADDRESS)       # touching the chip
    out = _out(args)
    printer = None if args.quiet else ProgressPrinter(sys.stderr)
    try:
        result, how = ops.flash(target, image, start_app=args.go is not None,
                                start_address=None if args.go in (None, -1) else args.go,
                                progress=printer)
    finally:
        if printer is not None:
            printer.close()
    out(f"{args.file}: {result.summary()}")
    if how is not None:
        out(f"application started ({how})")
    return 0


def _flash_settings(target: Target, args: argparse.Namespace) -> Target:
    """--verify, --no-verify and --retries over the target's own settings."""
    verify = "none" if args.no_verify else args.verify
    if verify is not None:
        target = replace(target, verify=verify)
    if args.retries is not None:
        target = replace(target, write_retries=args.retries)
    if args.no_skip:
        target = replace(target, skip_unchanged=False)
    return target


@parser("read", "read flash (or any readable memory) to a file, e.g. a backup")
def _read_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output file (raw binary)")
    add_link_options(p)
    p.add_argument("--address", type=int_auto, required=True, help="start address, e.g. 0x08000000")
    p.add_argument("--length", type=int_auto, required=True, help="number of bytes")


@command("read")
def cmd_read(args: argparse.Namespace) -> int:
    """Read memory in chunks into a file written atomically."""
    if args.length <= 0:
        raise UsageError("--length must be positive")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):  # know before reading for minutes
        raise UsageError(f"cannot write {args.out}: folder {folder} does not exist")
    target = target_from_args(args)
    printer = None if args.quiet else ProgressPrinter(sys.stderr)
    try:
        data = ops.read(target, args.address, args.length, progress=printer)
    finally:
        if printer is not None:
            printer.close()
    _write_atomically(args.out, data)
    _out(args)(f"read {len(data)} bytes from 0x{args.address:08X} into {args.out}")
    return 0


def _write_atomically(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".stm32ota-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@parser("erase", "erase the whole flash (--all) or whole pages of a range")
def _erase_args(p: argparse.ArgumentParser) -> None:
    add_link_options(p)
    p.add_argument("--all", action="store_true", help="erase all of the flash")
    p.add_argument("--address", type=int_auto, help="first byte of the range (page aligned)")
    p.add_argument("--length", type=int_auto, help="bytes in the range (ends on a page boundary)")


@command("erase")
def cmd_erase(args: argparse.Namespace) -> int:
    """Erase everything or whole pages."""
    if args.all == (args.address is not None):
        raise UsageError("give --all, or --address A --length N")
    if args.address is not None and args.length is None:
        raise UsageError("--address needs --length")
    message = ops.erase(target_from_args(args), None if args.all else args.address, args.length)
    _out(args)(message)
    return 0
