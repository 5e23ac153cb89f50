"""Pins on the RTS and DTR modem lines of the already-open serial port (USB-UART adapters).

``line`` is ``rts`` or ``dtr``. Levels here are the TTL levels at the adapter's RTS#/DTR#
pins, so ``active_low`` means the same as for GPIO. pyserial speaks RS-232 terms instead:
``port.rts = True`` *asserts* RTS, which a USB-UART (FTDI, CP210x, CH340) outputs as a LOW
TTL level. So this backend writes ``port.<line> = not level``. With the defaults, DTR wired
straight to NRST (active_low=True) resets the MCU when pyserial's dtr is True; RTS wired
straight to BOOT0 (active_low=False) selects the bootloader when pyserial's rts is False.

Caveat for DESIGN rule 8: Linux asserts DTR and RTS itself when a tty is opened, before any
Python code runs, so with direct wiring opening the port pulses NRST low. The link opens the
port with the lines preset to their released states (``released_states``), which pyserial
applies in the first ioctl after open(2), so the pulse lasts microseconds (the usual 100 nF
on NRST absorbs it). Boards that drive NRST through an inverting transistor (nrst
active_low=False) do not glitch. This backend drives
both lines released as soon as it is created and never closes the port (the link owns it).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from agent.errors import ConfigError, PinError
from agent.pins.base import PinSpec

log = logging.getLogger(__name__)

MODEM_LINES = ("rts", "dtr")


def released_states(nrst: Optional[PinSpec], boot0: Optional[PinSpec]) -> dict[str, bool]:
    """pyserial's rts/dtr values (True = asserted) that leave NRST and BOOT0 released."""
    states: dict[str, bool] = {}
    for name, spec in (("nrst", nrst), ("boot0", boot0)):
        line = str(spec.line).strip().lower() if spec is not None else ""
        if spec is not None and line in MODEM_LINES:
            states[line] = not spec.resolved(name).level_for(False)  # see _set: inverted
    return states


class ModemBackend:
    """Drives RTS/DTR of a pyserial port passed in by the caller."""

    name = "modem"

    def __init__(self, port: Any) -> None:
        if port is None:
            raise ConfigError("pins backend 'modem' needs the serial port of a uart link "
                              "(it drives that port's RTS/DTR lines)")
        self.port = port
        self._lines: dict[str, str] = {}
        self._closed = False

    def _set(self, attr: str, level: bool) -> None:
        try:
            setattr(self.port, attr, not level)  # pyserial True = asserted = TTL low
        except (OSError, ValueError) as exc:  # SerialException is an OSError
            where = getattr(self.port, "port", None) or "the serial port"
            raise PinError(f"cannot set {attr.upper()} on {where} ({exc}): this port has no "
                           "modem control lines (a pty, or an adapter without RTS/DTR pins); "
                           "use a GPIO backend", code="modem_lines") from exc

    def claim(self, name: str, spec: PinSpec, level: bool) -> None:
        """Take RTS or DTR for `name` and drive it to `level` at once."""
        attr = str(spec.line).strip().lower()
        if attr not in MODEM_LINES:
            raise ConfigError(f"pins.{name}.line is {spec.line!r}; the modem backend drives "
                              "'rts' or 'dtr'")
        if self._closed:
            raise PinError("modem pins are closed")
        if attr in self._lines.values():
            raise ConfigError(f"{attr} is already used by another pin; NRST and BOOT0 need "
                              "one line each (rts and dtr)")
        self._set(attr, level)
        self._lines[name] = attr

    def write(self, name: str, level: bool) -> None:
        """Drive the line of a claimed pin."""
        if self._closed or name not in self._lines:
            raise PinError(f"{name} is not claimed on the modem lines")
        self._set(self._lines[name], level)

    def close(self) -> None:
        """Forget the lines; the port itself stays open for its owner."""
        self._closed = True
        self._lines = {}
