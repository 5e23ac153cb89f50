"""A strict mock pin backend that records every level change and can drive the simulator.

It models the wire the config describes: before a line is claimed (and after it is freed)
the MCU pin sits at its released level (NRST internal pull-up, BOOT0 pull-down), and a claimed
line puts ``spec.asserted_at(level)`` on the MCU pin. Whenever the MCU-pin level changes it calls
``listener(name, mcu_level_high)``; pass ``agent.sim.SimChip.set_line`` to reset the
simulator from the same sequences that reset real hardware.

Strict like a kernel GPIO driver: a line (or signal name) cannot be claimed twice, and writing
an unclaimed or freed line, or anything but a bool, raises PinError.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from agent.errors import PinError
from agent.pins.base import Listener, PinSpec
from agent.pins.sequence import ASSERTED_HIGH

log = logging.getLogger(__name__)


@dataclass
class _Line:
    spec: PinSpec
    level: bool


class MockBackend:
    """Records `history: list[(t, name, gpio_level)]` of every claim and level change."""

    name = "mock"

    def __init__(self, listener: Optional[Listener] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listener = listener
        self.clock = clock
        self.history: list[tuple[float, str, bool]] = []
        self.lines: dict[str, _Line] = {}
        self.closed = False
        self._mcu: dict[str, bool] = {n: not a for n, a in ASSERTED_HIGH.items()}  # released

    def _in_use(self, line: Union[int, str]) -> Optional[str]:
        for name, held in self.lines.items():
            if held.spec.line == line:
                return name
        return None

    def _update_mcu(self, name: str, mcu_high: bool) -> None:
        if self._mcu.get(name) == mcu_high:
            return
        self._mcu[name] = mcu_high
        if self.listener is not None:
            self.listener(name, mcu_high)

    def _mcu_level(self, name: str, line: _Line) -> bool:
        return line.spec.asserted_at(line.level) == ASSERTED_HIGH[name]

    def claim(self, name: str, spec: PinSpec, level: bool) -> None:
        """Take a line as an output at `level`; PinError if the name or line is taken."""
        if self.closed:
            raise PinError(f"mock pins closed; cannot claim {name}")
        if not isinstance(level, bool):
            raise PinError(f"mock pin {name}: level must be a bool, got {level!r}")
        if name in ASSERTED_HIGH and spec.active_low is None:
            raise PinError(f"mock pin {name}: active_low unresolved")
        other = self._in_use(spec.line)
        if name in self.lines or other is not None:
            raise PinError(f"mock line {spec.line} is busy (claimed as {other or name})",
                           code="pin_busy")
        self.lines[name] = _Line(spec, level)
        self.history.append((self.clock(), name, level))
        if name in ASSERTED_HIGH:
            self._update_mcu(name, self._mcu_level(name, self.lines[name]))

    def write(self, name: str, level: bool) -> None:
        """Drive a claimed line; PinError for an unclaimed or freed line or a non-bool level."""
        if self.closed or name not in self.lines:
            state = "closed" if self.closed else "not claimed"
            raise PinError(f"mock pin {name} is {state}; cannot drive it", code="pin_not_claimed")
        if not isinstance(level, bool):
            raise PinError(f"mock pin {name}: level must be a bool, got {level!r}")
        line = self.lines[name]
        if line.level == level:
            return
        line.level = level
        self.history.append((self.clock(), name, level))
        if name in ASSERTED_HIGH:
            self._update_mcu(name, self._mcu_level(name, line))

    def power_cycle(self) -> None:
        """Switch the target's supply off and on: a power-on reset, not an NRST pulse.

        The listener gets ("power", False) then ("power", True); the simulator tells the two
        apart because silicon does (the empty-check flag is sampled only at power-on).
        """
        for on in (False, True):
            self.history.append((self.clock(), "power", on))
            if self.listener is not None:
                self.listener("power", on)

    def level(self, name: str) -> bool:
        """The host-side level of a claimed line."""
        return self.lines[name].level

    def mcu_level(self, name: str) -> bool:
        """The level the MCU pin sees now (released level when unclaimed)."""
        return self._mcu[name]

    def close(self) -> None:
        """Free every line; the MCU pins fall back to their pull-up/pull-down levels."""
        if self.closed:
            return
        self.closed = True
        names = list(self.lines)
        self.lines.clear()
        for name in names:
            if name in ASSERTED_HIGH:
                self._update_mcu(name, not ASSERTED_HIGH[name])
