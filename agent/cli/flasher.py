"""Handlers of the local-flasher subcommands: info, flash, read, erase; thin over flasher.ops."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from typing import Callable, Optional

from agent.cli.optionbytes import options_text
from agent.cli.options import (add_link_options, address_arg, command, int_auto, parser,
                               target_from_args)
from agent.errors import EXIT_INTERRUPTED, ChipMismatch, Nack, Stm32OtaError, UsageError
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
    if args.json:
        import json  # noqa: PLC0415 - lazy: only --json needs it (3 ms at start)
        print(json.dumps(d, indent=2))
    else:
        print(info_text(d))
    return 0


@parser("flash", "write an image (hex, srec or bin) and verify it, like stm32flash -w FILE -v")
def _flash_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="firmware: .hex, .srec/.s19/.s28/.s37, or .bin")
    add_link_options(p)
    p.add_argument("--address", type=address_arg,
                   help="load address of a .bin, word aligned (default: flash start)")
    p.add_argument("--format", choices=["hex", "srec", "bin"], help="override detection by extension")
    p.add_argument("--no-verify", action="store_true", help="skip verification (not recommended)")
    p.add_argument("--verify", choices=["auto", "crc", "readback"],
                   help="how to verify: the bootloader's checksum where offered (auto, the "
                        "default or the target's verify), or read back")
    p.add_argument("--no-skip", action="store_true",
                   help="erase and write every page the image covers, also those that already "
                        "hold it (default: leave those alone)")
    go = p.add_mutually_exclusive_group()
    go.add_argument("--go", nargs="?", const=-1, type=_go_address, metavar="ADDR",
                    help="start the application afterwards: reset through the pins, or GO to "
                         "ADDR (default when reset pins are configured)")
    go.add_argument("--no-go", action="store_true",
                    help="leave the chip in its bootloader afterwards, even with reset pins")
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
    if args.address is not None and args.address % 4:  # AN3155 3.6: writes start word aligned
        raise UsageError(f"--address 0x{args.address:08X} is not word aligned: a .bin starts a "
                         "vector table or a page; did you mean "
                         f"0x{args.address & ~3:08X}?", code="unaligned_address")
    image = firmware.load(args.file, fmt=args.format, address=args.address,  # bad files: before
                          bin_default=firmware.DEFAULT_BIN_ADDRESS)       # touching the chip
    out = _out(args)
    # esptool resets into the application by default: so do we, when pins can reset the chip
    start_app = args.go is not None or (not args.no_go and target.pins.backend != "none")
    tracker = _Phases(None if args.quiet else ProgressPrinter(sys.stderr))
    try:
        result, how = ops.flash(target, image, start_app=start_app,
                                start_address=None if args.go in (None, -1) else args.go,
                                progress=tracker)
    except KeyboardInterrupt:
        tracker.close()
        if not tracker.touched:
            raise
        print("stm32ota: interrupted while flashing: the flash may be half-written, and the "
              "chip waits in its bootloader (it may run neither the old nor the new firmware); "
              "run the same command again to repair it", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ChipMismatch, Nack) as err:
        raise _decimal_hint(err, args.address) from err
    finally:
        tracker.close()
    out(f"{args.file}: {result.summary()}")
    if how is not None:
        out(f"application started ({how})")
    return 0


class _Phases:
    """A progress callback that remembers whether the flash was touched (erase or write began)."""

    def __init__(self, printer: Optional[ProgressPrinter]) -> None:
        self.printer, self.touched = printer, False

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.touched = self.touched or phase in ("erase", "write")
        if self.printer is not None:
            self.printer(phase, done, total)

    def close(self) -> None:
        """End the progress line (once)."""
        if self.printer is not None:
            self.printer.close()
            self.printer = None


def _decimal_hint(err: Stm32OtaError, address: Optional[int]) -> Stm32OtaError:
    """`--address 8000000` is decimal: outside the chip, the hex reading is likely meant."""
    if not getattr(address, "decimal", False):
        return err
    return type(err)(f"{err}; --address {address} is decimal: did you mean 0x{address}?",
                     code=err.code)


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
    p.add_argument("--address", type=address_arg,
                   help="start address, e.g. 0x08000000 (default: the flash start)")
    p.add_argument("--length", type=int_auto,
                   help="number of bytes (default: the whole flash, or to its end from --address)")


@command("read")
def cmd_read(args: argparse.Namespace) -> int:
    """Read memory in chunks into a file written atomically."""
    if args.length is not None and args.length <= 0:
        raise UsageError("--length must be positive")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):  # know before reading for minutes
        raise UsageError(f"cannot write {args.out}: folder {folder} does not exist")
    target = target_from_args(args)
    printer = None if args.quiet else ProgressPrinter(sys.stderr)
    try:
        address, data = ops.read(target, args.address, args.length, progress=printer)
    except Nack as err:
        raise _decimal_hint(err, args.address) from err
    finally:
        if printer is not None:
            printer.close()
    _write_atomically(args.out, data)
    _out(args)(f"read {len(data)} bytes from 0x{address:08X} into {args.out}")
    return 0


def _write_atomically(path: str, data: bytes) -> None:
    import tempfile  # noqa: PLC0415 - lazy: only `read` writes a file; it and shutil cost 7 ms
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".stm32ota-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@parser("erase", "erase the whole flash (--all), one bank (--bank) or whole pages of a range")
def _erase_args(p: argparse.ArgumentParser) -> None:
    add_link_options(p)
    p.add_argument("--all", action="store_true", help="erase all of the flash")
    p.add_argument("--bank", type=int, choices=[1, 2],
                   help="erase one bank of a dual-bank chip (the bootloader's bank erase)")
    p.add_argument("--address", type=int_auto, help="first byte of the range (page aligned)")
    p.add_argument("--length", type=int_auto, help="bytes in the range (ends on a page boundary)")


@command("erase")
def cmd_erase(args: argparse.Namespace) -> int:
    """Erase everything or whole pages."""
    if [args.all, args.bank is not None, args.address is not None].count(True) != 1:
        raise UsageError("give one of --all, --bank 1|2, or --address A --length N")
    if args.address is not None and args.length is None:
        raise UsageError("--address needs --length")
    try:
        message = ops.erase(target_from_args(args), args.address, args.length, bank=args.bank)
    except UsageError as err:
        raise _decimal_hint(err, args.address) from err
    _out(args)(message)
    return 0
