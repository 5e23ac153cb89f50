"""Handlers of the local-flasher subcommands: info, flash, read, erase."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Callable, Optional

from agent.cli.options import add_link_options, command, int_auto, parser
from agent.cli.connection import Connection, connection
from agent.errors import LinkTimeout, Nack, ProtocolError, ReadProtected, Unsupported, UsageError
from agent.flasher.session import Session
from agent.stm32.chips import Chip
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


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def describe_session(s: Session) -> dict:
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
    }


def info_text(d: dict) -> str:
    """The `info` report for people, from describe_session()."""
    layout = " + ".join(f"{n} x {_size(size)}" for n, size in d["page_layout"])
    return "\n".join([
        f"Bootloader : version {d['bootloader_version']}"
        + (f", ID {d['bootloader_id']}" if d["bootloader_id"] else ""),
        f"Commands   : {' '.join(d['commands'])}",
        f"Chip       : {d['pid']} {d['chip']} ({d['family']})",
        f"Flash      : {_size(d['flash_size'])} at {d['flash_start']}, {d['pages']} pages "
        f"({layout}), writes aligned to {d['write_align']} bytes",
        f"Protection : read-out protection {'ACTIVE' if d['read_protected'] else 'off'}"])


@parser("info", "show bootloader version, command set, PID, chip name, flash size and page layout")
def _info_args(p: argparse.ArgumentParser) -> None:
    add_link_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")
    p.add_argument("--go", action="store_true", help="start the application afterwards")


def run_info(conn: Connection, *, go: bool = False) -> dict:
    """Connect, describe the chip and optionally start its application."""
    with conn.open() as s:
        d = describe_session(s)
        if go:
            s.start_application()
    return d


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    """Connect and describe the chip."""
    d = run_info(connection(args), go=args.go)
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
    p.add_argument("--go", nargs="?", const=-1, type=_go_address, metavar="ADDR",
                   help="start the application afterwards: reset through the pins, or GO to ADDR")
    p.add_argument("--retries", type=int, help="attempts per block (default 3 or the target's)")


def _go_address(text: str) -> int:
    """--go's optional address; a file name here means FILE came after a bare --go."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address: put FILE before a bare --go, or write --go=0x08000000")


def run_flash(conn: Connection, image, *, verify: Optional[str] = None,
              retries: Optional[int] = None, go: Optional[int] = None,
              progress=None) -> tuple:
    """Erase the pages `image` covers, write, verify ("none" skips) and start it if `go` is set.

    `go` is None (stay in the bootloader), -1 (reset through the pins, or GO to the flash
    start) or an address for GO. Returns (flash.Result, how the application was started).
    """
    from agent.flasher.plan import execute, plan

    with conn.open() as s:
        if s.read_protected:
            raise ReadProtected(
                f"{s.chip.name} has read-out protection active: nothing was written. Removing it "
                "mass-erases the chip; if that is what you want, do it explicitly.")
        p = plan(image, s.chip, flash_size=s.flash_size, max_write=s.link.caps.max_write)
        result = execute(p, s.bl, progress, verify=verify or conn.verify,
                         retries=conn.write_retries if retries is None else retries)
        how = None
        if go is not None:
            how = s.start_application(None if go == -1 else go)
    return result, how


@command("flash")
def cmd_flash(args: argparse.Namespace) -> int:
    """Erase the pages the image covers, write, verify, optionally start it."""
    from agent.flasher import image as firmware
    from agent.progress import ProgressPrinter

    conn = connection(args)
    image = firmware.load(args.file, fmt=args.format, address=args.address,  # bad files: before
                          bin_default=firmware.DEFAULT_BIN_ADDRESS)       # touching the chip
    out = _out(args)
    printer = None if args.quiet else ProgressPrinter(sys.stderr)
    try:
        result, how = run_flash(conn, image, verify="none" if args.no_verify else args.verify,
                                retries=args.retries, go=args.go, progress=printer)
    finally:
        if printer is not None:
            printer.close()
    out(f"{args.file}: {result.summary()}")
    if how is not None:
        out(f"application started ({how})")
    return 0


@parser("read", "read flash (or any readable memory) to a file, e.g. a backup")
def _read_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output file (raw binary)")
    add_link_options(p)
    p.add_argument("--address", type=int_auto, required=True, help="start address, e.g. 0x08000000")
    p.add_argument("--length", type=int_auto, required=True, help="number of bytes")


def run_read(conn: Connection, address: int, length: int, progress=None) -> bytes:
    """Read `length` bytes from `address`, in the largest chunks the link allows."""
    with conn.open() as s:
        if s.read_protected:
            raise ReadProtected(f"{s.chip.name} has read-out protection active; memory cannot "
                                "be read (removing it mass-erases the chip)")
        data = bytearray()
        step = min(256, s.link.caps.max_read)
        while len(data) < length:
            n = min(step, length - len(data))
            try:
                data += _read_retrying(s, address + len(data), n, conn.write_retries)
            except Nack as err:
                start, end = s.chip.flash_start, s.chip.flash_start + s.flash_size - 1
                raise Nack(f"{err}; the bootloader reads only mapped memory (flash of "
                           f"{s.chip.name}: 0x{start:08X}-0x{end:08X}): check --address and "
                           f"--length") from err
            if progress:
                progress("read", len(data), length)
    return bytes(data)


def _read_retrying(s: Session, address: int, n: int, retries: int) -> bytes:
    """READ_MEMORY with the flasher's bounded retries: a lost or garbled byte costs a resync."""
    for attempt in range(retries + 1):
        try:
            return s.bl.read_memory(address, n)
        except (LinkTimeout, ProtocolError) as err:
            if isinstance(err, (Nack, Unsupported)) or attempt == retries:
                raise
            log.warning("read at 0x%08X failed (%s); retry %d of %d", address, err,
                        attempt + 1, retries)
            s.bl.resync()
    raise AssertionError("unreachable: the last attempt raises")


@command("read")
def cmd_read(args: argparse.Namespace) -> int:
    """Read memory in chunks into a file written atomically."""
    from agent.progress import ProgressPrinter

    if args.length <= 0:
        raise UsageError("--length must be positive")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):  # know before reading for minutes
        raise UsageError(f"cannot write {args.out}: folder {folder} does not exist")
    conn = connection(args)
    printer = None if args.quiet else ProgressPrinter(sys.stderr)
    try:
        data = run_read(conn, args.address, args.length, printer)
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


def pages_of_range(chip: Chip, flash_size: int, start: int, length: int) -> list[int]:
    """Page numbers exactly covering [start, start+length); UsageError if not page aligned."""
    pages = chip.page_table(flash_size)
    end = start + length
    flash_start, flash_end = pages[0][0], pages[-1][0] + pages[-1][1]
    if length <= 0 or start < flash_start or end > flash_end:
        raise UsageError(f"0x{start:08X}+0x{max(length, 0):X} is not inside the flash "
                         f"(0x{flash_start:08X}-0x{flash_end - 1:08X})")
    chosen = chip.pages_covering(start, length, flash_size)
    first, last = pages[chosen[0]], pages[chosen[-1]]
    if first[0] != start or last[0] + last[1] != end:
        raise UsageError(
            f"erase works on whole pages: the range 0x{start:08X}-0x{end - 1:08X} cuts pages; use "
            f"--address 0x{first[0]:08X} --length 0x{last[0] + last[1] - first[0]:X}")
    return chosen


def run_erase(conn: Connection, address: Optional[int] = None,
              length: Optional[int] = None) -> str:
    """Erase all flash (no address) or the whole pages of a range; says what was erased."""
    with conn.open() as s:
        if s.read_protected:
            raise ReadProtected(f"{s.chip.name} has read-out protection active: nothing erased")
        pages = s.chip.page_table(s.flash_size)
        if address is None:
            if s.chip.mass_erase and s.flash_size == s.chip.flash_size:
                s.bl.mass_erase()
            else:  # AN2606 / stm32flash: L0/L1 cannot mass erase; erase page by page
                s.bl.erase_pages(list(range(len(pages))))
            return f"erased all {_size(s.flash_size)} of {s.chip.name}"
        chosen = pages_of_range(s.chip, s.flash_size, address, length or 0)
        s.bl.erase_pages(chosen)
        return f"erased pages {chosen[0]}-{chosen[-1]} ({length} bytes)"


@command("erase")
def cmd_erase(args: argparse.Namespace) -> int:
    """Erase everything or whole pages."""
    if args.all == (args.address is not None):
        raise UsageError("give --all, or --address A --length N")
    if args.address is not None and args.length is None:
        raise UsageError("--address needs --length")
    message = run_erase(connection(args), None if args.all else args.address, args.length)
    _out(args)(message)
    return 0
