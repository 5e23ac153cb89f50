"""NRST/BOOT0 pins and reset sequences: open a backend, claim the lines released, run sequences.

Backends (each imports its GPIO library only when chosen, since those are optional):
``libgpiod`` (gpiod>=2.0, any Linux board, the Pi 5 included), ``rpigpio`` (RPi.GPIO, BCM
numbers, Pi 4 and older), ``modem`` (RTS/DTR of the uart link's port), ``none`` (no pins;
enter/exit do nothing), ``mock`` (records history, drives the simulator) and ``auto``:
libgpiod if ``gpiod`` imports and the chip device exists, else RPi.GPIO, else an error that
says what to install. See ``base`` for the polarity rules and ``sequence`` for the step
language and the default timings.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from agent.errors import ConfigError, PinError
from agent.pins import libgpiod, rpigpio
from agent.pins.base import DEFAULT_ACTIVE_LOW, Backend, Listener, NoneBackend, Pins, PinSpec
from agent.pins.mock import MockBackend
from agent.pins.modem import ModemBackend
from agent.pins.sequence import (DEFAULT_ENTER, DEFAULT_EXIT, Delay, PinStep, Step,
                                 format_sequence, parse_sequence, validate_sequence)

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "libgpiod", "rpigpio", "modem", "none", "mock")

__all__ = [
    "BACKENDS", "DEFAULT_ACTIVE_LOW", "DEFAULT_ENTER", "DEFAULT_EXIT", "Backend", "Delay",
    "PinSpec", "PinStep", "Pins", "Step", "format_sequence", "open_pins", "parse_sequence",
    "validate_sequence",
]


def _auto(chip: str) -> Backend:
    """libgpiod when usable, else RPi.GPIO; log the choice and why."""
    gpiod_problem: Optional[str] = f"{chip} does not exist"  # the cause, whether gpiod imports
    if libgpiod.chip_available(chip):
        try:
            libgpiod.import_gpiod()
            gpiod_problem = None
        except PinError as exc:
            gpiod_problem = str(exc)
    if gpiod_problem is None:
        log.info("pins backend auto: using libgpiod on %s", chip)
        return libgpiod.GpiodBackend(chip)
    try:
        backend = rpigpio.RpiGpioBackend()
    except PinError as exc:
        if not libgpiod.chip_available(chip):
            raise PinError(f"no GPIO here: {chip} does not exist (ls /dev/gpiochip*: a machine "
                           "without GPIO lines, or a container they were not passed into); "
                           f"RPi.GPIO: {exc}. Check --gpiochip / pins.gpiochip, or drive the "
                           "pins through the adapter's RTS/DTR (--pins modem)") from exc
        raise PinError(f"no GPIO backend works here: libgpiod: {gpiod_problem}; RPi.GPIO: "
                       f"{exc}. Install gpiod>=2.0 into stm32ota's venv (pip install "
                       f"'gpiod>=2.0') and check that {chip} exists, or set pins.backend") from exc
    log.warning("pins backend auto: libgpiod unusable (%s); falling back to RPi.GPIO",
                gpiod_problem)
    return backend


def make_backend(backend: str, *, chip: str = "/dev/gpiochip0", serial: Any = None,
                 listener: Optional[Listener] = None,
                 clock: Optional[Callable[[], float]] = None) -> Backend:
    """Build the named backend (importing its GPIO library); ConfigError for an unknown name."""
    if backend == "auto":
        return _auto(chip)
    if backend == "libgpiod":
        return libgpiod.GpiodBackend(chip)
    if backend == "rpigpio":
        return rpigpio.RpiGpioBackend()
    if backend == "modem":
        return ModemBackend(serial)
    if backend == "none":
        return NoneBackend()
    if backend == "mock":
        return MockBackend(listener, clock or time.monotonic)
    raise ConfigError(f"unknown pins backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def open_pins(backend: str | Backend, nrst: Optional[PinSpec], boot0: Optional[PinSpec], *,
              chip: str = "/dev/gpiochip0", serial: Any = None,
              listener: Optional[Listener] = None, sleep: Callable[[float], None] = time.sleep,
              clock: Optional[Callable[[], float]] = None) -> Pins:
    """Open a backend (by name, or one handed in) and claim NRST/BOOT0 released (no reset)."""
    specs = {n: s for n, s in (("nrst", nrst), ("boot0", boot0)) if s is not None}
    if nrst is not None and boot0 is not None and nrst.line == boot0.line:
        raise ConfigError(f"nrst and boot0 both use line {nrst.line!r}; each needs its own")
    if backend == "none" and specs:
        raise ConfigError("pins backend 'none' takes no nrst/boot0 lines; remove them or "
                          "choose a backend (auto, libgpiod, rpigpio, modem)")
    if isinstance(backend, str):
        backend = make_backend(backend, chip=chip, serial=serial, listener=listener, clock=clock)
    return Pins(backend, specs, sleep)
