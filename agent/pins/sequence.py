"""Reset sequences as data: parsed and checked when the config loads, not mid-flash.

A sequence is a list of steps in MCU-pin terms, so it reads like the datasheet and stays right
whatever the wiring between the host and the MCU:

- ``"nrst low"`` / ``"nrst high"``: hold the MCU in reset / let it run. NRST low is *asserted*.
- ``"boot0 high"`` / ``"boot0 low"``: select the system bootloader / the main flash. BOOT0 high
  is *asserted*.
- ``"nrst assert"``, ``"nrst release"``, ``"boot0 assert"``, ``"boot0 release"``: synonyms.
- a delay with a unit: ``"10ms"``, ``"0.5s"``, ``"100us"`` (a bare number is an error).

A YAML string ``"boot0 high, nrst low, 10ms"`` is accepted as well as a list. What GPIO (or
RTS/DTR) level each step becomes is decided by the pin's ``active_low`` setting in exactly one
place, ``PinSpec.level_for`` in ``agent.pins.base``.

Default timings (AN2606 "bootloader startup time", measured from NRST release):

- the NRST pulse is 10 ms: the datasheets ask for a few hundred ns, but boards put ~100 nF on
  NRST, and with the ~40 kOhm internal pull-up it takes ~5 ms to rise again after release;
- after release we wait 100 ms before the first 0x7F: L43x needs 0.86 ms, but F40x needs
  74-85 ms (AN2606, F4 bootloader V3.1/V9.1 tables), and a late sync costs nothing while an
  early one locks the autobaud onto garbage;
- BOOT0 is asserted only while NRST holds the MCU in reset: on L4 BOOT0 shares its pin with
  PH3, which a running application may drive, and in reset every GPIO is an input;
- on exit BOOT0 is released first, then a 10 ms pulse and 20 ms for the application to start.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from agent.errors import ConfigError

log = logging.getLogger(__name__)

SIGNALS: tuple[str, ...] = ("nrst", "boot0")
# The MCU-pin level that asserts each signal: NRST is active low, BOOT0 active high (AN2606).
ASSERTED_HIGH: dict[str, bool] = {"nrst": False, "boot0": True}

DEFAULT_ENTER: tuple[str, ...] = ("nrst low", "boot0 high", "10ms", "nrst high", "100ms")
DEFAULT_EXIT: tuple[str, ...] = ("boot0 low", "nrst low", "10ms", "nrst high", "20ms")

MAX_DELAY_S = 60.0  # a longer pause inside a reset sequence is a typo, not a board need

_LEVEL_WORDS: dict[str, str] = {  # word -> "high" | "low" | "assert" | "release"
    "high": "high", "low": "low",
    "assert": "assert", "asserted": "assert", "release": "release", "released": "release",
}
_SIGNAL_ALIASES: dict[str, str] = {"reset": "nrst", "rst": "nrst", "nreset": "nrst", "boot": "boot0"}
_UNITS: dict[str, float] = {"us": 1e6, "µs": 1e6, "ms": 1e3, "s": 1.0}  # divisors
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([a-zµ]*)$")


@dataclass(frozen=True)
class PinStep:
    """Drive one signal: asserted (NRST low / BOOT0 high) or released."""

    signal: str
    asserted: bool

    @property
    def mcu_high(self) -> bool:
        """The level this step puts on the MCU pin."""
        return self.asserted == ASSERTED_HIGH[self.signal]

    def __str__(self) -> str:
        return f"{self.signal} {'high' if self.mcu_high else 'low'}"


@dataclass(frozen=True)
class Delay:
    """Wait this many seconds."""

    seconds: float

    def __str__(self) -> str:
        if self.seconds >= 1:
            return f"{self.seconds:g}s"
        if self.seconds >= 1e-3:
            return f"{self.seconds * 1e3:g}ms"
        return f"{self.seconds * 1e6:g}us"


Step = Union[PinStep, Delay]
SequenceLike = Union[str, Sequence[str], Sequence[Step]]


def _at(where: str, index: int | None) -> str:
    loc = where if index is None else f"{where}[{index}]"
    return f"{loc}: " if loc else ""


def _parse_delay(text: str) -> Delay | str:
    """A Delay, or a hint string if `text` looks like a duration but is not a valid one."""
    m = _DURATION.match(text)
    if m is None:
        return ""
    number, unit = float(m.group(1)), m.group(2)
    if not unit:
        return f"durations need a unit: {m.group(1)}ms"
    if unit not in _UNITS:
        return f"unknown unit {unit!r}; use us, ms or s (e.g. {m.group(1)}ms)"
    seconds = number / _UNITS[unit]  # dividing keeps "100us" == 0.0001 exactly
    if seconds > MAX_DELAY_S:
        return f"{text!r} is longer than {MAX_DELAY_S:g}s; reset steps take milliseconds"
    return Delay(seconds)


def _pin_step(signal: str, word: str) -> PinStep:
    level = _LEVEL_WORDS[word]
    if level in ("assert", "release"):
        return PinStep(signal, level == "assert")
    return PinStep(signal, (level == "high") == ASSERTED_HIGH[signal])


def _closest(word: str, choices: Iterable[str]) -> str | None:
    import difflib  # noqa: PLC0415 - lazy: only a mistyped sequence needs it (2 ms at start)
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def _suggest(words: list[str]) -> str:
    """A 'did you mean' for a two-word item that is almost a pin step."""
    signal = _SIGNAL_ALIASES.get(words[0]) or _closest(words[0], SIGNALS)
    level = _closest(words[1], _LEVEL_WORDS) if len(words) > 1 else None
    if signal and level:
        return f"did you mean '{signal} {level}'?"
    if signal:
        return f"did you mean '{signal} {'low' if signal == 'nrst' else 'high'}'?"
    return "expected '<nrst|boot0> <low|high>' or a duration like '10ms'"


def parse_step(item: object, where: str = "", index: int | None = None) -> Step:
    """Parse one item of a sequence; ConfigError names the location and a hint."""
    if isinstance(item, bool) or not isinstance(item, (str, int, float)):
        raise ConfigError(f"{_at(where, index)}{item!r} is not a step; "
                          "expected a string like 'nrst low' or '10ms'")
    if isinstance(item, (int, float)):
        raise ConfigError(f"{_at(where, index)}{item!r}: durations need a unit: {item:g}ms")
    text = " ".join(item.strip().lower().split())
    delay = _parse_delay(text)
    if isinstance(delay, Delay):
        return delay
    if delay:
        raise ConfigError(f"{_at(where, index)}{item!r}: {delay}")
    words = text.split(" ")
    if len(words) == 2 and words[0] in SIGNALS and words[1] in _LEVEL_WORDS:
        return _pin_step(words[0], words[1])
    spaced = re.sub(r"[=:_\-]+", " ", text).split()
    hint = _suggest(spaced) if spaced else "an empty step does nothing; remove it"
    raise ConfigError(f"{_at(where, index)}{item!r} is not a step; {hint}")


def parse_sequence(items: SequenceLike, where: str = "") -> tuple[Step, ...]:
    """Parse a list of steps (or one comma-separated string) into Steps; ConfigError if bad."""
    if isinstance(items, str):
        parts = [p for p in (s.strip() for s in items.split(",")) if p]
        return tuple(parse_step(p, where, i) for i, p in enumerate(parts))
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{_at(where, None)}expected a list of steps like "
                          f"[boot0 high, nrst low, 10ms], got {type(items).__name__}")
    return tuple(s if isinstance(s, (PinStep, Delay)) else parse_step(s, where, i)
                 for i, s in enumerate(items))


def validate_sequence(steps: Sequence[Step], available: Iterable[str], where: str = "", *,
                      may_end_in_reset: bool = False) -> None:
    """Check that every step names a configured pin and (unless allowed) NRST ends released."""
    have = set(available)
    for i, step in enumerate(steps):
        if isinstance(step, PinStep) and step.signal not in have:
            configured = ", ".join(sorted(have)) or "none"
            raise ConfigError(f"{_at(where, i)}'{step}' drives {step.signal}, but no "
                              f"{step.signal} pin is configured (configured: {configured}); "
                              f"add pins.{step.signal}.line or remove the step")
    last_nrst = [s for s in steps if isinstance(s, PinStep) and s.signal == "nrst"]
    if last_nrst and last_nrst[-1].asserted and not may_end_in_reset:
        raise ConfigError(f"{_at(where, None)}the sequence ends with NRST low, so the MCU would "
                          "stay in reset; end with 'nrst high' and a delay")
    if steps and isinstance(steps[-1], PinStep) and steps[-1].signal == "nrst":
        # AN2606: the bootloader needs its startup time after NRST rises (0.86 ms on L43x).
        log.warning("%sno delay after '%s': the MCU needs time to start (AN2606: 0.86 ms on "
                    "L43x, ~85 ms on F40x); add e.g. '100ms'", _at(where, None), steps[-1])


def format_sequence(steps: Iterable[Step]) -> str:
    """Render steps back to their canonical text, for logs and check-config."""
    return ", ".join(str(s) for s in steps)
