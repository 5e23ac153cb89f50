"""Handler of `stm32ota chips`: the chip table (AN2606 product IDs) the flasher knows."""

from __future__ import annotations

import argparse
import json
import logging

from agent.cli.options import command, parser
from agent.stm32.chips import CHIPS, KiB, Chip

log = logging.getLogger(__name__)


def _version(byte: int) -> str | None:
    """A bootloader protocol version byte as "3.1"; None where the chip lacks that interface."""
    return f"{byte >> 4}.{byte & 0xF}" if byte else None


def chip_row(chip: Chip) -> dict:
    """One chip as plain data (also the --json output)."""
    return {
        "pid": f"0x{chip.pid:03X}",
        "name": chip.name,
        "family": chip.family,
        "flash_kib": chip.flash_size // KiB,
        "uart": _version(chip.uart_version),
        "i2c": _version(chip.i2c_version),
        "i2c_address": None if chip.i2c_address is None else f"0x{chip.i2c_address:02X}",
        "parts": list(chip.parts),
    }


def chips_text(rows: list[dict]) -> str:
    """The table for people: one line per PID, the interfaces with their protocol versions."""
    width = max([len(r["name"]) for r in rows] + [4]) + 2
    lines = [f"{'PID':<6}{'chip':<{width}}{'family':<8}{'flash':>9}  bootloader"]
    for r in rows:
        links = [f"UART v{r['uart']}"] if r["uart"] else []
        if r["i2c"]:
            links.append(f"I2C v{r['i2c']}" + (f" at {r['i2c_address']}" if r["i2c_address"] else ""))
        lines.append(f"{r['pid']:<6}{r['name']:<{width}}{r['family']:<8}{r['flash_kib']:>5} KiB  "
                     f"{', '.join(links) or '-'}")
    lines.append(f"{len(rows)} product IDs. An I2C address is shown where the table has it; "
                 f"otherwise\ngive --i2c-address from the part's chapter in AN2606.")
    return "\n".join(lines)


@parser("chips", "list the supported chips: PID, name, family, flash, bootloader interfaces")
def _chips_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="a JSON list on stdout, for scripts")


@command("chips")
def cmd_chips(args: argparse.Namespace) -> int:
    """Print the chip table, ordered by PID."""
    rows = [chip_row(chip) for _, chip in sorted(CHIPS.items())]
    print(json.dumps(rows, indent=2) if args.json else chips_text(rows))
    return 0
