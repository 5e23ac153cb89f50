"""Pins through the GPIO character device with the libgpiod v2 Python bindings (``gpiod>=2.0``).

The only route that works on every current Raspberry Pi (the Pi 5 included) and on other
Linux boards; legacy sysfs GPIO is gone from recent kernels. Each line is requested as an
output with its initial value in the same request, so the kernel never drives it at any other
level (claim-at-inactive, DESIGN rule 8). Polarity is handled by ``PinSpec`` in Pins, so lines
are requested with ``active_low=False`` and ``Value.ACTIVE`` here simply means "high".

NRST wired straight to the MCU (asserted low) is requested open-drain: the line only ever
pulls low, and released it leaves NRST to the MCU's own pull-up, so the host never fights the
reset button, a debugger or the chip's own reset pulse (NRST is bidirectional: RM0394 6.1.2
"System reset": the internal reset drives NRST low). Through an inverter (asserted high) it
must drive both levels and stays push-pull.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from agent.errors import PinError
from agent.pins.base import PinSpec

log = logging.getLogger(__name__)

CONSUMER = "stm32ota"  # what `gpioinfo` shows as the holder of our lines

INSTALL_HINT = "install the libgpiod v2 bindings: pip install 'gpiod>=2.0' (or stm32ota[gpiod])"


def import_gpiod() -> Any:
    """Import gpiod and check it is the v2 API; PinError with an install hint otherwise."""
    try:
        import gpiod  # noqa: PLC0415 - lazy: only when this backend is chosen
    except ImportError as exc:
        raise PinError(f"python module gpiod is not installed; {INSTALL_HINT}") from exc
    if not hasattr(gpiod, "request_lines"):
        raise PinError("python module gpiod is the old v1 API (Debian python3-libgpiod "
                       f"1.x); {INSTALL_HINT}")
    return gpiod


def _explain(exc: Exception, chip: str, line: object) -> PinError:
    """Turn what gpiod raises into a message a person can act on."""
    if isinstance(exc, FileNotFoundError):
        return PinError(f"GPIO chip {chip} does not exist; `gpiodetect` lists the chips "
                        "(set pins.chip)", code="gpio_chip_missing")
    if isinstance(exc, PermissionError):
        return PinError(f"no permission to use {chip}: add the user to the gpio group "
                        "(sudo usermod -aG gpio USER, then log in again) or run as root",
                        code="gpio_permission")
    if isinstance(exc, OSError) and exc.errno == errno.EBUSY:
        return PinError(f"GPIO {line} on {chip} is busy: is another process holding GPIO "
                        f"{line}? see `gpioinfo`", code="gpio_busy")
    if isinstance(exc, OSError) and exc.errno == errno.ENOTTY:
        return PinError(f"{chip} is not a GPIO chip device; `gpiodetect` lists them",
                        code="gpio_chip_missing")
    if isinstance(exc, (ValueError, OSError)):
        return PinError(f"GPIO {line} cannot be used on {chip} ({exc}); `gpioinfo` lists "
                        "the lines and their names", code="gpio_line")
    return PinError(f"GPIO {line} on {chip}: {exc}")


class GpiodBackend:
    """One gpiod line request per claimed pin, released on close."""

    name = "libgpiod"

    def __init__(self, chip: str = "/dev/gpiochip0") -> None:
        self.gpiod = import_gpiod()
        from gpiod.line import Direction, Drive, Value  # noqa: PLC0415 - same lazy import

        self._direction, self._drive, self._value = Direction, Drive, Value
        self.chip = chip
        self._requests: dict[str, tuple[Any, PinSpec]] = {}

    def _value_of(self, level: bool) -> Any:
        return self._value.ACTIVE if level else self._value.INACTIVE

    def claim(self, name: str, spec: PinSpec, level: bool) -> None:
        """Request the line as an output whose first level is `level`."""
        open_drain = name == "nrst" and spec.resolved(name).active_low
        drive = self._drive.OPEN_DRAIN if open_drain else self._drive.PUSH_PULL
        settings = self.gpiod.LineSettings(direction=self._direction.OUTPUT, drive=drive,
                                           output_value=self._value_of(level))
        try:
            request = self.gpiod.request_lines(self.chip, consumer=CONSUMER,
                                               config={spec.line: settings})
        except (OSError, ValueError) as exc:
            raise _explain(exc, self.chip, spec.line) from exc
        self._requests[name] = (request, spec)
        log.debug("claimed %s = %s line %s at %s, %s", name, self.chip, spec.line,
                  "high" if level else "low", "open-drain" if open_drain else "push-pull")

    def write(self, name: str, level: bool) -> None:
        """Set the line's level."""
        if name not in self._requests:
            raise PinError(f"{name} is not claimed on {self.chip}")
        request, spec = self._requests[name]
        try:
            request.set_value(spec.line, self._value_of(level))
        except (OSError, ValueError) as exc:
            raise _explain(exc, self.chip, spec.line) from exc

    def close(self) -> None:
        """Release every line request."""
        requests, self._requests = self._requests, {}
        for request, _spec in requests.values():
            request.release()


def chip_available(chip: str) -> bool:
    """Whether `chip` exists, for the auto backend's choice."""
    return os.path.exists(chip)
