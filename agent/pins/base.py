"""The Pins contract: NRST and BOOT0 driven from the host, with polarity handled in one place.

Two signals, ``nrst`` and ``boot0``. Each configured pin is a ``PinSpec(line, active_low)``:
``line`` is a GPIO line offset (or line name for libgpiod, BCM number for RPi.GPIO, ``rts`` or
``dtr`` for the modem backend); ``active_low`` says the host-side level that *asserts* the
signal is low. "Asserted" means: nrst -> MCU held in reset; boot0 -> system bootloader
selected. Defaults suit direct wiring: nrst active_low=True (GPIO low pulls NRST low), boot0
active_low=False (GPIO high puts BOOT0 high). Wire NRST through an NPN/N-MOSFET inverter and
nrst becomes active_low=False.

Safety (DESIGN rule 8): lines are claimed already driven at their released (inactive) level,
so opening the pins never resets or re-boots a running MCU. BOOT0 stays asserted from the
enter sequence until the exit sequence; ``close()`` releases BOOT0, then NRST, then frees the
lines (a freed NRST floats high on the MCU's internal pull-up; BOOT0 needs the board's
pull-down).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Protocol, Union

from agent.errors import ConfigError, PinError
from agent.pins.sequence import (DEFAULT_ENTER, DEFAULT_EXIT, SIGNALS, Delay, PinStep,
                                 SequenceLike, Step, format_sequence, parse_sequence,
                                 validate_sequence)

log = logging.getLogger(__name__)

DEFAULT_ACTIVE_LOW: dict[str, bool] = {"nrst": True, "boot0": False}
Listener = Callable[[str, bool], None]  # (signal name, MCU pin level is high)


@dataclass(frozen=True)
class PinSpec:
    """One wired signal: which line drives it and whether a low level asserts it."""

    line: Union[int, str]
    active_low: Optional[bool] = None  # None: the signal's default (DEFAULT_ACTIVE_LOW)

    def __post_init__(self) -> None:
        ok = (isinstance(self.line, int) and not isinstance(self.line, bool) and self.line >= 0) \
            or (isinstance(self.line, str) and self.line.strip() != "")
        if not ok:
            raise ConfigError(f"pin line {self.line!r} must be a GPIO number (0, 17, ...), "
                              "a line name, or rts/dtr for the modem backend")
        if self.active_low is not None and not isinstance(self.active_low, bool):
            raise ConfigError(f"active_low must be true or false, got {self.active_low!r}")

    def level_for(self, asserted: bool) -> bool:
        """The host-side level (True = high) that asserts or releases the signal."""
        # The one place polarity is decided: asserted XOR active_low.
        if self.active_low is None:
            raise ValueError("PinSpec.active_low unresolved; use resolved(name)")
        return asserted != self.active_low

    def asserted_at(self, level: bool) -> bool:
        """Whether the host-side `level` asserts the signal (inverse of level_for)."""
        return self.level_for(True) == level

    def resolved(self, name: str) -> PinSpec:
        """This spec with active_low filled in from the signal's default."""
        if self.active_low is not None:
            return self
        return replace(self, active_low=DEFAULT_ACTIVE_LOW[name])


class Backend(Protocol):
    """What a pin backend does; Pins owns polarity, so backends only see host-side levels."""

    name: str

    def claim(self, name: str, spec: PinSpec, level: bool) -> None:
        """Take the line as an output already driven at `level`; PinError if it cannot."""

    def write(self, name: str, level: bool) -> None:
        """Drive a claimed line high (True) or low (False)."""

    def close(self) -> None:
        """Free every claimed line."""


class NoneBackend:
    """No pins: the MCU is put in bootloader mode some other way (jumper, option bytes)."""

    name = "none"

    def claim(self, name: str, spec: PinSpec, level: bool) -> None:
        """Refuse: this backend has no lines."""
        raise ConfigError(f"pins backend 'none' cannot drive {name}; remove pins.{name} "
                          "or choose a backend (auto, libgpiod, rpigpio, modem)")

    def write(self, name: str, level: bool) -> None:
        """Refuse: nothing was claimed."""
        raise PinError(f"pins backend 'none' has no {name} line")

    def close(self) -> None:
        """Nothing to free."""


class Pins:
    """NRST/BOOT0 of one target: runs reset sequences; claims lines released on creation."""

    def __init__(self, backend: Backend, specs: Mapping[str, PinSpec],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.backend = backend
        self.specs = {n: s.resolved(n) for n, s in specs.items()}
        self._sleep = sleep
        self._asserted: dict[str, bool] = {}
        self._closed = False
        try:
            for name in SIGNALS:  # fixed order, so claim logs and histories are predictable
                if name in self.specs:
                    spec = self.specs[name]
                    backend.claim(name, spec, spec.level_for(False))
                    self._asserted[name] = False
        except BaseException:
            backend.close()
            raise
        log.debug("pins claimed released via %s: %s", backend.name, self.specs)

    @property
    def available(self) -> tuple[str, ...]:
        """The configured signal names."""
        return tuple(self.specs)

    @property
    def can_reset(self) -> bool:
        """Whether NRST is wired, so the MCU can be reset (into the application) from here."""
        return "nrst" in self.specs

    def asserted(self, name: str) -> bool:
        """Whether we currently assert `name` (False for an unconfigured signal)."""
        return self._asserted.get(name, False)

    def _set(self, name: str, asserted: bool) -> None:
        spec = self.specs[name]
        self.backend.write(name, spec.level_for(asserted))
        self._asserted[name] = asserted

    def run(self, sequence: SequenceLike, where: str = "sequence", *,
            may_end_in_reset: bool = True) -> None:
        """Parse (if needed), validate against the configured pins, then carry out a sequence."""
        if self._closed:
            raise PinError("pins are closed; open them again to run a sequence")
        steps = parse_sequence(sequence, where)
        validate_sequence(steps, self.available, where, may_end_in_reset=may_end_in_reset)
        log.debug("%s: %s", where, format_sequence(steps))
        for step in steps:
            if isinstance(step, Delay):
                self._sleep(step.seconds)
            else:
                self._set(step.signal, step.asserted)

    def _choose(self, seq: Optional[SequenceLike], default: tuple[str, ...],
                where: str) -> tuple[Step, ...]:
        steps = parse_sequence(default if seq is None else seq, where)
        if steps != parse_sequence(default):
            return steps  # given by the user: strict, a missing pin is a ConfigError
        # The default (however it arrived) adapts to the pins that exist: with BOOT0 strapped
        # on the board, enter is a plain reset.
        return tuple(s for s in steps if not isinstance(s, PinStep) or s.signal in self.specs)

    def enter_bootloader(self, seq: Optional[SequenceLike] = None) -> None:
        """Reset into the ROM bootloader (DEFAULT_ENTER unless `seq` is given)."""
        if not self.specs:
            log.info("no pins configured: the MCU must already be in bootloader mode")
            return
        where = "enter_bootloader"
        self.run(self._choose(seq, DEFAULT_ENTER, where), where, may_end_in_reset=False)

    def exit_bootloader(self, seq: Optional[SequenceLike] = None) -> None:
        """Release BOOT0 and reset into the application (DEFAULT_EXIT unless `seq` is given)."""
        if not self.specs:
            return
        where = "exit_bootloader"
        self.run(self._choose(seq, DEFAULT_EXIT, where), where, may_end_in_reset=False)

    def close(self) -> None:
        """Release BOOT0, then NRST, then free the lines; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            for name in ("boot0", "nrst"):  # BOOT0 first, so a held reset ends in the application
                if name in self.specs:
                    self._set(name, False)
        finally:
            self.backend.close()

    def __enter__(self) -> Pins:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
