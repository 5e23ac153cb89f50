"""Helpers for the command-line tests: images in every format, written independently of the parser."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pytest

from agent.cli import build_parser, main
from agent.cli.options import target_from_args
from agent.flasher.target import Target
from agent.stm32.chips import CHIPS
from agent.sim import SimChip

log = logging.getLogger(__name__)

L432 = CHIPS[0x435]
BASE = L432.flash_start
PAGE = 2048
Segments = Sequence[tuple[int, bytes]]


def blob(n: int, seed: int = 0) -> bytes:
    """n bytes of a pattern that differs per seed and is never all 0xFF."""
    return bytes((i * 31 + seed * 7 + 1) & 0xFF for i in range(n))


def ihex_record(addr: int, typ: int, data: bytes) -> str:
    """One Intel HEX record line: count, 16-bit address, type, data, checksum."""
    body = bytes([len(data)]) + addr.to_bytes(2, "big") + bytes([typ]) + data
    return ":" + (body + bytes([-sum(body) & 0xFF])).hex().upper()


def ihex(segments: Segments, per_line: int = 16, eof: bool = True) -> str:
    """Intel HEX text with a type-04 record whenever the upper 16 address bits change."""
    lines, upper = [], None
    for address, data in segments:
        for off in range(0, len(data), per_line):
            a = address + off
            if a >> 16 != upper:
                upper = a >> 16
                lines.append(ihex_record(0, 4, upper.to_bytes(2, "big")))
            lines.append(ihex_record(a & 0xFFFF, 0, data[off:off + per_line]))
    if eof:
        lines.append(":00000001FF")
    return "\n".join(lines) + "\n"


def srec_record(typ: int, addr: int, width: int, data: bytes) -> str:
    """One S-record line: type, count, `width`-byte address, data, checksum."""
    body = bytes([width + len(data) + 1]) + addr.to_bytes(width, "big") + data
    return f"S{typ}" + (body + bytes([~sum(body) & 0xFF])).hex().upper()


def srec(segments: Segments, per_line: int = 16, kind: int = 3) -> str:
    """Motorola S-records: an S0 header, S1/S2/S3 data (`kind`) and the matching terminator."""
    width = {1: 2, 2: 3, 3: 4}[kind]
    lines = [srec_record(0, 0, 2, b"test")]
    for address, data in segments:
        for off in range(0, len(data), per_line):
            lines.append(srec_record(kind, address + off, width, data[off:off + per_line]))
    lines.append(srec_record(10 - kind, 0, width, b""))
    return "\r\n".join(lines) + "\r\n"


def write_image(folder: Path, name: str, segments: Segments) -> Path:
    """Write the segments as NAME (.hex, .srec or .bin by its extension) and return the path."""
    path = folder / name
    if name.endswith(".hex"):
        path.write_text(ihex(segments))
    elif name.endswith(".srec"):
        path.write_text(srec(segments))
    else:
        assert len(segments) == 1, "a .bin holds one segment"
        path.write_bytes(segments[0][1])
    return path


def flash_bytes(sim: SimChip, address: int, n: int) -> bytes:
    """What the simulated flash holds at an absolute address."""
    return bytes(sim.flash[address - BASE:address - BASE + n])


def erased_pages(sim: SimChip) -> list[int]:
    """Every page number the simulator was asked to erase, in order."""
    return [p for e in sim.events if e[0] == "erase" for p in e[1]]


def commands_seen(sim: SimChip) -> list[tuple]:
    """Simulator events other than resets: anything a host made the chip do."""
    return [e for e in sim.events if e[0] != "reset"]


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run `stm32ota ARGV` in-process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def target_of(*argv: str) -> Target:
    """The Target a command line names (what its handler works on), without running it."""
    return target_from_args(build_parser().parse_args(list(argv)))
