"""Chip lookups over the AN2606 table: the one place the rest of the agent asks about parts.

CONTRACT: `Chip` (chip_model.py); `lookup(pid) -> Chip` (KeyError-free: raises ChipMismatch for
an unknown PID), `find(name_or_pid: str) -> Chip` for the command line (`L432`, `0x435`),
`CHIPS: dict[int, Chip]`. The rows themselves are in chip_table.py.
"""

from __future__ import annotations

import logging
import re

from agent.errors import ChipMismatch, UsageError
from agent.stm32.chip_model import KiB, Chip
from agent.stm32.chip_table import ROWS

__all__ = ["CHIPS", "Chip", "KiB", "find", "lookup"]

log = logging.getLogger(__name__)

CHIPS: dict[int, Chip] = {chip.pid: chip for chip in ROWS}
if len(CHIPS) != len(ROWS):  # a PID typed twice would silently hide a row
    raise RuntimeError("duplicate PID in the chip table")


def lookup(pid: int) -> Chip:
    """The chip for a PID from GET_ID; ChipMismatch (code unknown_chip) if the table lacks it."""
    try:
        return CHIPS[pid]
    except KeyError:
        raise ChipMismatch(
            f"unknown product ID 0x{pid:03X}: not in the AN2606 table of this version "
            f"({len(CHIPS)} parts); check the wiring/baud (a garbled ID looks like this) or "
            f"report the part so it can be added", code="unknown_chip") from None


_PID_TEXT = re.compile(r"(0x)?([0-9a-f]{3})", re.IGNORECASE)


def _matches(pattern: str, text: str) -> bool:
    """True when `text` starts with `pattern`; an "x" in the pattern matches any character."""
    if len(text) < len(pattern):
        return False
    return all(p in "xX" or p.upper() == t for p, t in zip(pattern, text))


def _could_become(pattern: str, text: str) -> bool:
    """True when `text` is a beginning of `pattern` (the user typed too little)."""
    return len(text) < len(pattern) and _matches(pattern[:len(text)], text)


def _describe(chips: list[Chip]) -> str:
    return ", ".join(f"0x{c.pid:03X} {c.name}" for c in sorted(chips, key=lambda c: c.pid))


def find(text: str) -> Chip:
    """The chip a person means: "0x435", "435", "L432", "STM32L432KC", or the table name."""
    raw = text.strip()
    pid_match = _PID_TEXT.fullmatch(raw)
    if pid_match and (raw.lower().startswith("0x") or int(pid_match.group(2), 16) in CHIPS):
        pid = int(pid_match.group(2), 16)
        if pid not in CHIPS:
            raise UsageError(f"no chip with PID 0x{pid:03X} in the table; known PIDs: "
                             f"{', '.join(f'0x{p:03X}' for p in sorted(CHIPS))}",
                             code="unknown_chip")
        return CHIPS[pid]
    for chip in CHIPS.values():
        if chip.name.upper() == raw.upper():
            return chip
    norm = re.sub(r"[\s_-]", "", raw.upper())
    norm = norm[5:] if norm.startswith("STM32") else norm
    if not norm:
        raise UsageError("give a chip as a PID (0x435) or a part name (L432)", code="usage")
    best: dict[int, int] = {}  # pid -> length of its longest matching pattern
    for chip in CHIPS.values():
        lengths = [len(p) for p in chip.parts if _matches(p, norm)]
        if lengths:
            best[chip.pid] = max(lengths)
    if best:
        top = max(best.values())
        winners = [CHIPS[pid] for pid, n in best.items() if n == top]
        if len(winners) == 1:
            return winners[0]
        raise UsageError(f"{text!r} fits several chips: {_describe(winners)}; give the PID",
                         code="ambiguous_chip")
    partial = [c for c in CHIPS.values() if any(_could_become(p, norm) for p in c.parts)]
    if len(partial) == 1:
        return partial[0]
    if partial:
        raise UsageError(f"{text!r} is ambiguous; candidates: {_describe(partial)}; "
                         f"give more of the part number or the PID", code="ambiguous_chip")
    raise UsageError(f"unknown chip {text!r}: give a PID such as 0x435 or a part such as L432 "
                     f"(`stm32ota info` shows the PID of a connected chip)", code="unknown_chip")
