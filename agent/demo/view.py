"""What the demo shows: live job progress of several targets, as a subscriber sees it on MQTT.

`Board` is fed the JSON of `<base>/<agent>/<target>/job` and `.../state` messages (from any
thread) and renders them: on a terminal one redrawn bar per target with phase and bytes/s, on
anything else a plain line per phase change and every 25 %. Bytes/s is inferred from the job's
single percent figure inside the write/verify phases (agent.ota.jobs.PHASES) and the image size,
so the view needs nothing the MQTT contract does not carry.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TextIO

from agent.ota.jobs import PHASES, TERMINAL

log = logging.getLogger(__name__)

_RANGE = {name: (lo, hi) for name, lo, hi in PHASES}
_BYTE_PHASES = ("write", "verify")
BAR = 24


def rate_text(bytes_per_s: float) -> str:
    """Bytes per second for people: B/s, KiB/s or MiB/s."""
    for unit, scale in (("MiB/s", 1 << 20), ("KiB/s", 1 << 10)):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.1f} {unit}"
    return f"{bytes_per_s:.0f} B/s"


@dataclass
class Row:
    """What is known about one target's current job."""

    name: str
    label: str  # e.g. "UART /dev/pts/3" or "I2C 0x48"
    image_size: int
    job_id: Optional[str] = None
    status: str = "waiting"
    phase: str = ""
    percent: int = 0
    error: Optional[dict] = None
    installed: Optional[str] = None
    latest: Optional[str] = None
    started: Optional[float] = None
    finished: Optional[float] = None
    phase_start: tuple[float, int] = (0.0, 0)  # (time, percent) when the phase was first seen
    rate: Optional[float] = None  # bytes/s in a write/verify phase
    printed: tuple[str, str, int] = ("", "", -1)  # (status, phase, quarter) last printed

    @property
    def done(self) -> bool:
        """True once the job reached its one terminal status."""
        return self.status in TERMINAL


@dataclass
class Board:
    """Thread-safe view of every target's job, rendered to a terminal or as plain lines."""

    rows: dict[str, Row]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    tty: Optional[bool] = None
    clock: Callable[[], float] = time.monotonic
    ignore_jobs: set = field(default_factory=set)  # job ids from before this run (stale retained)

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = self.out.isatty()
        self._lock = threading.RLock()
        self._drawn = 0
        self.live = False  # bars are drawn (terminal) only between start() and stop()
        self.changed = threading.Event()

    # ----- input (MQTT network thread) ---------------------------------------------------------

    def on_state(self, name: str, doc: dict) -> None:
        """A retained update-entity state of a target."""
        with self._lock:
            row = self.rows[name]
            row.installed = doc.get("installed_version")
            row.latest = doc.get("latest_version")
        self.changed.set()

    def on_job(self, name: str, doc: dict) -> None:
        """A job message of a target."""
        now = self.clock()
        with self._lock:
            row = self.rows[name]
            if doc.get("job_id") in self.ignore_jobs:
                return
            if doc.get("job_id") != row.job_id:
                row.job_id, row.started, row.finished, row.rate = doc.get("job_id"), now, None, None
            phase, percent = doc.get("phase") or "", int(doc.get("percent") or 0)
            if phase != row.phase:
                row.phase_start = (now, percent)
                row.rate = None
            elif phase in _BYTE_PHASES and now > row.phase_start[0]:
                lo, hi = _RANGE[phase]
                done = (percent - row.phase_start[1]) * row.image_size / (hi - lo)
                row.rate = done / (now - row.phase_start[0]) if done > 0 else row.rate
            row.status, row.phase, row.percent = doc.get("status") or "", phase, percent
            row.error = doc.get("error")
            if row.done and row.finished is None:
                row.finished = now
        self.changed.set()

    def forget(self) -> None:
        """Drop everything seen so far (an earlier run's retained messages); ignore its jobs."""
        with self._lock:
            for name, row in self.rows.items():
                if row.job_id:
                    self.ignore_jobs.add(row.job_id)
                self.rows[name] = Row(row.name, row.label, row.image_size)

    # ----- output (main thread) ------------------------------------------------------------

    def all_done(self) -> bool:
        """True when every target's job is terminal."""
        with self._lock:
            return all(r.done for r in self.rows.values())

    def line(self, row: Row) -> str:
        """One target's progress line."""
        status = row.status if row.done else (row.phase or row.status)
        text = f"{row.name:<8} {row.label:<18}"
        if self.tty:
            filled = BAR * row.percent // 100
            text += f" [{'#' * filled}{'-' * (BAR - filled)}]"
        text += f" {row.percent:3d}% {status:<16}"
        if row.rate and not row.done and row.phase in _BYTE_PHASES:
            text += f" {rate_text(row.rate)}"
        if row.done and row.error:
            text += f" [{row.error.get('code')}] {row.error.get('message')}"
        return text

    def start(self) -> None:
        """Show the bars from now on (below everything said so far)."""
        with self._lock:
            self.live = True
        self.render()

    def stop(self) -> None:
        """Draw the bars a last time and leave them where they are; say() writes below them."""
        self.render()
        with self._lock:
            self.live, self._drawn = False, 0

    def render(self) -> None:
        """Redraw the bars (terminal) or print what is new (plain lines)."""
        with self._lock:
            self.changed.clear()
            if self.tty:
                if self.live:
                    self._redraw()
                return
            for row in self.rows.values():
                key = (row.status, row.phase, row.percent // 25)
                if key != row.printed and row.job_id is not None:
                    row.printed = key
                    self.out.write(self.line(row) + "\n")
            self.out.flush()

    def _redraw(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
        for row in self.rows.values():
            self.out.write("\x1b[2K" + self.line(row) + "\n")
        self._drawn = len(self.rows)
        self.out.flush()

    def say(self, text: str) -> None:
        """A message between the bars (above them on a terminal)."""
        with self._lock:
            if self.tty and self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
                self._drawn = 0
            self.out.write(text + "\n")
            if self.tty and self.live:
                self._redraw()
            self.out.flush()
