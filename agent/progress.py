"""Progress reporting: the callback type the flash layers call, and a terminal/log writer for it.

Producers call `progress(phase, done, total)`; phases are "erase" (done/total in pages),
"write" and "verify" (in bytes), plus whatever earlier stages (download) choose to report.
Callbacks must be cheap and must not raise; producers may call them once per block.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, TextIO

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
"""progress(phase, done, total): called when a phase starts, advances and ends."""

_UNITS = {"erase": "pages"}


def no_progress(phase: str, done: int, total: int) -> None:
    """A callback that ignores everything."""


class Throttled:
    """Forward to `callback` on a phase change, at completion, or at most every `interval` s."""

    def __init__(self, callback: ProgressCallback, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._callback = callback
        self._interval = interval
        self._clock = clock
        self._phase: Optional[str] = None
        self._last = float("-inf")

    def __call__(self, phase: str, done: int, total: int) -> None:
        """Pass the event on if it is worth showing."""
        now = self._clock()
        if phase != self._phase or done >= total or now - self._last >= self._interval:
            self._phase, self._last = phase, now
            self._callback(phase, done, total)


class ProgressPrinter:
    """A progress callback for the CLI: a one-line bar on a terminal, sparse plain lines elsewhere.

    On a TTY the line is redrawn (at most every `redraw` seconds) with phase, bar, percent and
    rate. On anything else (a pipe, journald) it writes a line when a phase starts and ends and
    in between only when both `every` seconds have passed and another `step_percent` is done.
    """

    def __init__(self, stream: TextIO, *, tty: Optional[bool] = None, width: int = 30,
                 redraw: float = 0.1, every: float = 5.0, step_percent: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._out = stream
        self._tty = stream.isatty() if tty is None else tty
        self._width = width
        self._redraw = redraw
        self._every = every
        self._step = step_percent
        self._clock = clock
        self._phase: Optional[str] = None
        self._started = 0.0
        self._last_time = float("-inf")
        self._last_pct = -1
        self._open_line = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        """Show one progress event."""
        now = self._clock()
        new_phase = phase != self._phase
        if new_phase:
            self._end_line()
            self._phase, self._started = phase, now
            self._last_time, self._last_pct = float("-inf"), -1
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        finished = done >= total
        if self._tty:
            if new_phase or finished or now - self._last_time >= self._redraw:
                self._draw(phase, done, total, pct, now)
                self._last_time = now
            if finished:
                self._end_line()
        elif new_phase or (finished and pct != self._last_pct) or (
                now - self._last_time >= self._every and pct >= self._last_pct + self._step):
            self._out.write(self._text(phase, done, total, pct, now) + "\n")
            self._out.flush()
            self._last_time, self._last_pct = now, pct

    def close(self) -> None:
        """End an open bar line (call once when the operation is over, also on failure)."""
        self._end_line()

    def _draw(self, phase: str, done: int, total: int, pct: int, now: float) -> None:
        filled = self._width * pct // 100
        bar = "#" * filled + "-" * (self._width - filled)
        self._out.write(f"\r{phase:<7}[{bar}] {self._text(phase, done, total, pct, now, False)}"
                        "\x1b[K")
        self._out.flush()
        self._open_line = True

    def _text(self, phase: str, done: int, total: int, pct: int, now: float,
              with_phase: bool = True) -> str:
        unit = _UNITS.get(phase, "bytes")
        text = f"{pct:3d}% {done}/{total} {unit}"
        elapsed = now - self._started
        if unit == "bytes" and elapsed > 0 and done:
            text += f" {_rate(done / elapsed)}"
        return f"{phase}: {text}" if with_phase else text

    def _end_line(self) -> None:
        if self._open_line:
            self._out.write("\n")
            self._out.flush()
            self._open_line = False


def _rate(bytes_per_s: float) -> str:
    if bytes_per_s >= 1024 * 1024:
        return f"{bytes_per_s / 1024 / 1024:.1f} MiB/s"
    if bytes_per_s >= 1024:
        return f"{bytes_per_s / 1024:.1f} KiB/s"
    return f"{bytes_per_s:.0f} B/s"
