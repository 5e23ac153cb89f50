"""The one retry loop of flashing and reading, and the Result it counts into.

Every bootloader command of a flash goes through `Commands.retry`: a NACK, a garbled answer
or a timeout costs a re-sync and another try, `retries` times at most; cancel is checked before
each try. `read_memory` and `write_memory` (a RAM routine) go through the same loop.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

from agent.errors import Aborted, LinkTimeout, Nack, ProtocolError, Stm32OtaError, Unsupported
from agent.progress import ProgressCallback, no_progress

log = logging.getLogger(__name__)

READ_CHUNK = 256  # AN3155 3.4: READ_MEMORY returns at most 256 bytes


@dataclass
class Result:
    """What execute() did."""

    bytes_written: int = 0  # including re-writes and padding
    pages_erased: int = 0  # page erase operations, re-erases included (all pages on mass erase)
    pages_skipped: int = 0  # pages that already held their part of the image: left alone
    retries: int = 0  # block/page/command repetitions after a failure
    verify: str = "none"  # "crc", "readback" or "none"
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    def summary(self) -> str:
        """One line for people: what was done and how long each phase took."""
        total = sum(self.seconds.values())
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        verified = "not verified" if self.verify == "none" else f"verified by {self.verify}"
        retries = f", {self.retries} retries" if self.retries else ""
        skipped = f", {self.pages_skipped} unchanged pages left alone" if self.pages_skipped else ""
        return (f"erased {self.pages_erased} pages, wrote {self.bytes_written} bytes{skipped}, "
                f"{verified}{retries} in {total:.1f} s ({phases})")


def read_memory(bl: Any, address: int, length: int,
                progress: Optional[ProgressCallback] = None, *, retries: int = 3,
                cancel: Optional[threading.Event] = None) -> bytes:
    """Read `length` bytes from `address` in the largest chunks the link allows, with retries.

    A NACK is final here: the bootloader refuses reads of unmapped memory (AN3155 3.4), and
    asking again cannot change that.
    """
    commands = Commands(bl, retries, cancel, give_up=(Nack, Unsupported))
    report = progress or no_progress
    out = bytearray()
    while len(out) < length:
        at, n = address + len(out), min(commands.max_read, length - len(out))
        out += commands.retry("read", at, lambda: bl.read_memory(at, n))
        report("read", len(out), length)
    return bytes(out)


def write_memory(bl: Any, address: int, data: bytes, *, retries: int = 3) -> None:
    """Write `data` (e.g. a routine to RAM) in the largest chunks the link allows, with retries."""
    commands = Commands(bl, retries, None)
    step = min(256, getattr(getattr(bl, "caps", None), "max_write", 256) or 256)
    for off in range(0, len(data), step):
        chunk = data[off:off + step]
        commands.retry("write", address + off,
                       lambda a=address + off, c=chunk: bl.write_memory(a, c))


_E = TypeVar("_E", bound=BaseException)


def tag(err: _E, phase: str, address: int) -> _E:
    """Name the phase and the failing address in an error (once; innermost wins)."""
    if getattr(err, "phase", None) is None:
        err.phase = phase  # type: ignore[attr-defined]
        err.address = address  # type: ignore[attr-defined]
        err.args = (f"{phase} at 0x{address:08X}: {err}",) + tuple(err.args[1:])
    return err


class Commands:
    """Bootloader commands with bounded recovery: the one retry loop of flashing and reading."""

    def __init__(self, bl: Any, retries: int, cancel: Optional[threading.Event],
                 give_up: tuple[type[Exception], ...] = (Unsupported,)) -> None:
        self.bl, self.retries, self.cancel = bl, max(0, retries), cancel
        self.give_up = give_up  # errors that another try cannot cure
        self.result = Result()
        caps = getattr(bl, "caps", None)
        self.max_read = min(READ_CHUNK, getattr(caps, "max_read", READ_CHUNK) or READ_CHUNK)

    def check_cancel(self, phase: str, address: int) -> None:
        """Raise Aborted (tagged) once cancel is set."""
        if self.cancel is not None and self.cancel.is_set():
            err = Aborted(f"aborted on request; flash from 0x{address:08X} on is in an unknown "
                          "state, flash again before starting the application")
            raise tag(err, phase, address)

    def retry(self, phase: str, address: int, fn: Callable[[], Any]) -> Any:
        """Call fn; on NACK, garbled answer or timeout re-sync and retry, `retries` times at most."""
        for attempt in range(self.retries + 1):
            self.check_cancel(phase, address)
            try:
                return fn()
            except self.give_up:
                raise
            except (ProtocolError, LinkTimeout) as err:  # NACK, noise, lost bytes: transient
                if attempt == self.retries:
                    raise tag(err, phase, address)
                self.result.retries += 1
                log.warning("%s at 0x%08X failed (%s); retry %d of %d", phase, address, err,
                            attempt + 1, self.retries)
                resync = getattr(self.bl, "resync", None)
                if callable(resync):
                    try:
                        resync()
                    except Stm32OtaError as lost:
                        raise tag(lost, phase, address) from err

    def read(self, phase: str, address: int, length: int) -> bytes:
        """READ_MEMORY a range in chunks, each through the retry loop."""
        out = bytearray()
        for a in range(address, address + length, self.max_read):
            n = min(self.max_read, address + length - a)
            out += self.retry(phase, a, lambda a=a, n=n: self.bl.read_memory(a, n))
        return bytes(out)
