"""Pins through RPi.GPIO (BCM numbering), for older Raspberry Pi OS images without libgpiod v2.

RPi.GPIO pokes the BCM283x registers directly and does not run on a Raspberry Pi 5 (RP1);
prefer the libgpiod backend. ``GPIO.setup(ch, GPIO.OUT, initial=...)`` writes the output
latch before switching the pin to output, so the line never shows another level (RPi.GPIO
py_gpio.c: ``output_gpio`` before ``setup_gpio``). ``cleanup`` returns the pins to inputs.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.errors import PinError
from agent.pins.base import PinSpec

log = logging.getLogger(__name__)

INSTALL_HINT = ("install RPi.GPIO (pip install RPi.GPIO) on a Raspberry Pi 4 or older, "
                "or use backend libgpiod (pip install 'gpiod>=2.0'), which also runs on a Pi 5")


def import_rpigpio() -> Any:
    """Import RPi.GPIO; PinError with a hint if it is missing or refuses this machine."""
    try:
        import RPi.GPIO as GPIO  # noqa: N814,PLC0415 - lazy: only when this backend is chosen
    except ImportError as exc:
        raise PinError(f"python module RPi.GPIO is not installed; {INSTALL_HINT}") from exc
    except RuntimeError as exc:  # "This module can only be run on a Raspberry Pi!"
        raise PinError(f"RPi.GPIO cannot run here ({exc}); {INSTALL_HINT}") from exc
    return GPIO


class RpiGpioBackend:
    """Claims BCM-numbered outputs at their initial level; cleans up only its own channels."""

    name = "rpigpio"

    def __init__(self) -> None:
        self.GPIO = import_rpigpio()
        self._channels: dict[str, int] = {}
        mode = self.GPIO.getmode()
        if mode not in (None, self.GPIO.BCM):
            raise PinError("RPi.GPIO is already in BOARD numbering in this process; "
                           "stm32ota uses BCM numbers (GPIO17 = 17)")
        if mode is None:
            self.GPIO.setmode(self.GPIO.BCM)
        self.GPIO.setwarnings(False)  # "channel already in use" would only repeat our own check

    def claim(self, name: str, spec: PinSpec, level: bool) -> None:
        """Set the channel up as an output already at `level`."""
        if not isinstance(spec.line, int):
            raise PinError(f"rpigpio needs a BCM GPIO number for {name}, got {spec.line!r}",
                           code="gpio_line")
        initial = self.GPIO.HIGH if level else self.GPIO.LOW
        try:
            self.GPIO.setup(spec.line, self.GPIO.OUT, initial=initial)
        except ValueError as exc:
            raise PinError(f"GPIO {spec.line} is not a valid BCM number ({exc})",
                           code="gpio_line") from exc
        except RuntimeError as exc:  # "No access to /dev/mem. Try running as root!"
            raise PinError(f"cannot drive GPIO {spec.line} ({exc}): add the user to the gpio "
                           "group (sudo usermod -aG gpio USER) or run as root",
                           code="gpio_permission") from exc
        self._channels[name] = spec.line

    def write(self, name: str, level: bool) -> None:
        """Drive a claimed channel."""
        if name not in self._channels:
            raise PinError(f"{name} is not claimed")
        self.GPIO.output(self._channels[name], self.GPIO.HIGH if level else self.GPIO.LOW)

    def close(self) -> None:
        """Return our channels (only ours) to inputs."""
        channels, self._channels = list(self._channels.values()), {}
        if channels:
            self.GPIO.cleanup(channels)
