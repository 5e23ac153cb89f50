"""Faults the simulated chip can inject, and their command-line spelling (`stm32ota sim --fault`).

A forgiving fake hides bugs: these make the simulator NACK, lose and garble bytes, stay silent
after a reset, erase slowly, start read-protected, show the L432's missing I2C erase ACK, run
its autobaud off by a clock error, or let a floating TX line put a 0x00 before the sync ACK.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class Faults:
    """Faults to inject; all off by default."""

    nack_every_write: int = 0  # NACK every N-th WRITE_MEMORY data packet without programming
    nack_every_read: int = 0  # NACK every N-th READ_MEMORY command (a byte garbled on the way)
    drop_every: int = 0  # lose every N-th byte the chip receives
    corrupt_every: int = 0  # flip bit 0 of every N-th byte the chip sends
    silent_resets: int = 0  # the first N NRST-triggered boots stay silent until the next reset
    erase_factor: float = 1.0  # erase takes this many times longer (also when not realtime)
    read_protected: bool = False  # RDP level 1 from power-on
    i2c_erase_no_ack: bool = False  # seed-notes.md L432 quirk: no final ACK after an I2C erase
    rup_ack_after_erase: bool = False  # AN3155 3.12 text order: 2nd RUP ACK after the erase
    i2c_commands: tuple[int, ...] = ()  # GET lists these instead (AN4221 V2.0: per product)
    clock_error: float = 0.0  # % the ROM's autobaud is off at 115200 (pty only; see PtySim)
    stray_zero: bool = False  # TX floats low until the ROM drives it: 0x00 before the sync ACK


_FAULT_SPECS: dict[str, tuple[str, type]] = {
    "nack-write": ("nack_every_write", int), "nack-read": ("nack_every_read", int),
    "drop": ("drop_every", int),
    "corrupt": ("corrupt_every", int), "silent-resets": ("silent_resets", int),
    "slow-erase": ("erase_factor", float), "rdp": ("read_protected", bool),
    "i2c-erase-no-ack": ("i2c_erase_no_ack", bool),
    "rup-ack-after-erase": ("rup_ack_after_erase", bool), "clock-error": ("clock_error", float),
    "stray-zero": ("stray_zero", bool),
}


def parse_faults(specs: list[str]) -> Faults:
    """Faults from command-line specs such as ["nack-write=5", "slow-erase=4", "rdp"]."""
    faults = Faults()
    for spec in specs:
        name, _, value = spec.partition("=")
        if name not in _FAULT_SPECS:
            raise UsageError(f"unknown fault {name!r}; known: {', '.join(_FAULT_SPECS)}",
                             code="bad_fault")
        field, kind = _FAULT_SPECS[name]
        if kind is bool:
            if value:
                raise UsageError(f"fault {name!r} takes no value", code="bad_fault")
            setattr(faults, field, True)
            continue
        try:
            number = kind(value.removesuffix("%") if name == "clock-error" else value)
        except ValueError:
            raise UsageError(f"fault {name!r} needs a number, e.g. {name}=4", code="bad_fault") from None
        if number <= 0:
            raise UsageError(f"fault {name!r} needs a positive number, got {value}", code="bad_fault")
        setattr(faults, field, number)
    return faults
