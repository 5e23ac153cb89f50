"""Carry out a Plan through a Bootloader: erase, write, verify, with bounded recovery (thin).

Every bootloader command goes through one retry loop (`_Commands.retry`): a NACK, a garbled
answer or a timeout costs a re-sync and another try, `retries` times at most; cancel is checked
before each try. `execute` runs a plan; `read_memory` reads through the same loop.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

from agent.errors import (Aborted, LinkTimeout, Nack, ProtocolError, Stm32OtaError, Unsupported,
                          UsageError, VerifyFailed)
from agent.flasher.plan import Block, Plan
from agent.progress import ProgressCallback, no_progress
from agent.stm32.protocol import stm32_crc32

log = logging.getLogger(__name__)

VERIFY_MODES = ("auto", "crc", "readback", "none")
ERASE_CHUNK = 16  # pages per erase command: progress and cancel points, few commands
READ_CHUNK = 256  # AN3155 3.4: READ_MEMORY returns at most 256 bytes


@dataclass
class Result:
    """What execute() did."""

    bytes_written: int = 0  # including re-writes and padding
    pages_erased: int = 0  # page erase operations, re-erases included (all pages on mass erase)
    retries: int = 0  # block/page/command repetitions after a failure
    verify: str = "none"  # "crc", "readback" or "none"
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    def summary(self) -> str:
        """One line for people: what was done and how long each phase took."""
        total = sum(self.seconds.values())
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        verified = "not verified" if self.verify == "none" else f"verified by {self.verify}"
        retries = f", {self.retries} retries" if self.retries else ""
        return (f"erased {self.pages_erased} pages, wrote {self.bytes_written} bytes, "
                f"{verified}{retries} in {total:.1f} s ({phases})")


def execute(plan: Plan, bl: Any, progress: Optional[ProgressCallback] = None, *,
            verify: str = "auto", retries: int = 3, cancel: Optional[threading.Event] = None,
            clock: Callable[[], float] = time.monotonic) -> Result:
    """Erase, write and verify per `plan` through Bootloader `bl`; raise typed errors."""
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}",
                         code="bad_verify_mode")
    run = _Run(plan, bl, progress or no_progress, retries, cancel, clock)
    return run.go(verify)


def read_memory(bl: Any, address: int, length: int,
                progress: Optional[ProgressCallback] = None, *, retries: int = 3,
                cancel: Optional[threading.Event] = None) -> bytes:
    """Read `length` bytes from `address` in the largest chunks the link allows, with retries.

    A NACK is final here: the bootloader refuses reads of unmapped memory (AN3155 3.4), and
    asking again cannot change that.
    """
    commands = _Commands(bl, retries, cancel, give_up=(Nack, Unsupported))
    report = progress or no_progress
    out = bytearray()
    while len(out) < length:
        at, n = address + len(out), min(commands.max_read, length - len(out))
        out += commands.retry("read", at, lambda: bl.read_memory(at, n))
        report("read", len(out), length)
    return bytes(out)


_E = TypeVar("_E", bound=BaseException)


def write_memory(bl: Any, address: int, data: bytes, *, retries: int = 3) -> None:
    """Write `data` (e.g. a routine to RAM) in the largest chunks the link allows, with retries."""
    commands = _Commands(bl, retries, None)
    step = min(256, getattr(getattr(bl, "caps", None), "max_write", 256) or 256)
    for off in range(0, len(data), step):
        chunk = data[off:off + step]
        commands.retry("write", address + off,
                       lambda a=address + off, c=chunk: bl.write_memory(a, c))


def _tag(err: _E, phase: str, address: int) -> _E:
    """Name the phase and the failing address in an error (once; innermost wins)."""
    if getattr(err, "phase", None) is None:
        err.phase = phase  # type: ignore[attr-defined]
        err.address = address  # type: ignore[attr-defined]
        err.args = (f"{phase} at 0x{address:08X}: {err}",) + tuple(err.args[1:])
    return err


class _Garbled(Exception):
    """A failed write programmed other data into `block` (noise that passed the XOR)."""

    def __init__(self, block: Block) -> None:
        super().__init__(f"0x{block.address:08X} holds other data after a failed write")
        self.block = block


class _Commands:
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
            raise _tag(err, phase, address)

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
                    raise _tag(err, phase, address)
                self.result.retries += 1
                log.warning("%s at 0x%08X failed (%s); retry %d of %d", phase, address, err,
                            attempt + 1, self.retries)
                resync = getattr(self.bl, "resync", None)
                if callable(resync):
                    try:
                        resync()
                    except Stm32OtaError as lost:
                        raise _tag(lost, phase, address) from err

    def read(self, phase: str, address: int, length: int) -> bytes:
        """READ_MEMORY a range in chunks, each through the retry loop."""
        out = bytearray()
        for a in range(address, address + length, self.max_read):
            n = min(self.max_read, address + length - a)
            out += self.retry(phase, a, lambda a=a, n=n: self.bl.read_memory(a, n))
        return bytes(out)


class _Run(_Commands):
    """One execution of a plan: erase, write, verify, with bounded recovery."""

    def __init__(self, plan: Plan, bl: Any, progress: ProgressCallback, retries: int,
                 cancel: Optional[threading.Event], clock: Callable[[], float]) -> None:
        super().__init__(bl, retries, cancel)
        self.plan, self.progress, self.clock = plan, progress, clock
        self.method = "none"

    def go(self, verify: str) -> Result:
        """Run every phase and return the Result."""
        self.method = self._method(verify)
        self.result.verify = self.method
        for phase, step in (("erase", self._erase), ("write", self._write),
                            ("verify", self._verify)):
            t0 = self.clock()
            step()
            self.result.seconds[phase] = self.clock() - t0
        return self.result

    def _method(self, verify: str) -> str:
        has_crc = bool(self.bl.supports("checksum"))
        if verify in ("auto", "crc"):
            if verify == "crc" and not has_crc:
                log.warning("the bootloader offers no checksum command; verifying by read-back")
            return "crc" if has_crc else "readback"
        return verify

    # ---- helpers ------------------------------------------------------------------------

    def _holds(self, phase: str, address: int, data: bytes, method: str) -> bool:
        """Does flash at address hold data? By on-chip CRC or by reading it back."""
        if method == "crc":
            crc = self.retry(phase, address, lambda: self.bl.checksum(address, len(data)))
            return crc == stm32_crc32(data)
        if self.read(phase, address, len(data)) == data:
            return True
        # AN3155 3.4: read data carries no checksum, so a mismatch may be noise: read again
        self.result.retries += 1
        log.warning("%s: read-back of 0x%08X differs; reading again", phase, address)
        return self.read(phase, address, len(data)) == data

    def _blank_method(self) -> str:
        return "crc" if self.bl.supports("checksum") else "readback"

    # ---- erase --------------------------------------------------------------------------

    def _erase(self) -> None:
        plan = self.plan
        if plan.erase == "none":
            return
        if plan.erase == "mass":
            total = len(plan.page_table)
            self.progress("erase", 0, total)
            self.retry("erase", plan.flash_range[0], self.bl.mass_erase)
            self.result.pages_erased += total
            if self.bl.last_erase_unconfirmed:
                for page in plan.pages:
                    self._ensure_blank(page)
            self.progress("erase", total, total)
            return
        total = len(plan.pages)
        self.progress("erase", 0, total)
        for i in range(0, total, ERASE_CHUNK):
            chunk = list(plan.pages[i:i + ERASE_CHUNK])
            self._erase_pages(chunk)
            self.progress("erase", i + len(chunk), total)

    def _erase_pages(self, pages: list[int]) -> None:
        address = self.plan.page_table[pages[0]][0]
        self.retry("erase", address, lambda: self.bl.erase_pages(pages))
        self.result.pages_erased += len(pages)
        if self.bl.last_erase_unconfirmed:
            for page in pages:
                self._ensure_blank(page)

    def _ensure_blank(self, page: int) -> None:
        """Blank-check a page whose erase was not acknowledged; erase it again if needed."""
        address, size = self.plan.page_table[page]
        method = self._blank_method()
        for attempt in range(self.retries + 1):
            if self._holds("erase", address, b"\xff" * size, method):
                return
            if attempt == self.retries:
                break
            self.result.retries += 1
            log.warning("page %d at 0x%08X is not blank after an unconfirmed erase; erasing "
                        "again", page, address)
            self.retry("erase", address, lambda: self.bl.erase_pages([page]))
            self.result.pages_erased += 1
        raise _tag(VerifyFailed(f"page {page} is not blank after {self.retries + 1} erase "
                                "attempts", code="erase_failed"), "erase", address)

    # ---- write --------------------------------------------------------------------------

    def _write(self) -> None:
        total, done = self.plan.total_bytes, 0
        self.progress("write", 0, total)
        for page, group in itertools.groupby(self.plan.blocks, key=lambda b: b.page):
            done += self._write_page(page, tuple(group), lambda n: self.progress(
                "write", done + n, total))

    def _write_page(self, page: int, blocks: tuple[Block, ...],
                    written: Callable[[int], None] = lambda n: None) -> int:
        """Write a page's blocks, erasing it again if a failed write left other data."""
        for attempt in range(self.retries + 1):
            n = 0
            try:
                for block in blocks:
                    self._write_block(block)
                    n += len(block.data)
                    written(n)
                return n
            except _Garbled as garbled:
                self._garbled_page(page, garbled.block, last=attempt == self.retries)
        raise AssertionError("unreachable: the last attempt raises")

    def _garbled_page(self, page: int, block: Block, last: bool) -> None:
        """A failed write left other data: only erasing the page again can fix that."""
        if last:
            raise _tag(VerifyFailed(f"failed writes left other data in page {page} after "
                                    f"{self.retries + 1} attempts: the link garbles data; check "
                                    "the wiring and flash again", code="write_failed"),
                       "write", block.address)
        self.result.retries += 1
        log.warning("a failed write at 0x%08X left other data; erasing page %d and writing it "
                    "again", block.address, page)
        self._erase_pages([page])

    def _write_block(self, block: Block) -> None:
        """Write one block; before a retry check whether the failed attempt landed anyway."""
        tried = False

        def attempt() -> None:
            nonlocal tried
            # a lost ACK after a good write: re-programming is refused on ECC flash (L4, H7),
            # and so is writing over a block a garbled write programmed with other data
            if tried:
                state = self._landed(block)
                if state == "data":
                    return
                if state == "other" and self.plan.erase != "none":
                    raise _Garbled(block)  # (with erase "none" it may be old data: write on)
            tried = True
            self.bl.write_memory(block.address, block.data)

        self.retry("write", block.address, attempt)
        self.result.bytes_written += len(block.data)

    def _landed(self, block: Block) -> str:
        """What a failed write left: "data" (it landed), "blank" or "other"."""
        blank = b"\xff" * len(block.data)
        if self._blank_method() == "crc":
            crc = self.retry("write", block.address,
                              lambda: self.bl.checksum(block.address, len(block.data)))
            return ("data" if crc == stm32_crc32(block.data) else
                    "blank" if crc == stm32_crc32(blank) else "other")
        for _ in range(2):  # AN3155 3.4: read data has no checksum; one more look if odd
            got = self.read("write", block.address, len(block.data))
            if got in (block.data, blank):
                return "data" if got == block.data else "blank"
        return "other"

    # ---- verify -------------------------------------------------------------------------

    def _verify(self) -> None:
        if self.method == "none":
            log.warning("flash not verified (verify=none)")
            return
        total, done = self.plan.total_bytes, 0
        self.progress("verify", 0, total)
        for page in self.plan.pages:
            blocks = self.plan.page_blocks(page)
            bad = self._first_bad(blocks)
            if bad is not None:
                self._redo_page(page, blocks, bad)
            done += sum(len(b.data) for b in blocks)
            self.progress("verify", done, total)

    def _first_bad(self, blocks: tuple[Block, ...]) -> Optional[Block]:
        for block in blocks:
            self.check_cancel("verify", block.address)
            if not self._holds("verify", block.address, block.data, self.method):
                return block
        return None

    def _redo_page(self, page: int, blocks: tuple[Block, ...], bad: Block) -> None:
        """Erase the page again and rewrite it: ECC flash cannot re-program a written word."""
        for attempt in range(self.retries):
            if self.plan.erase == "none":
                break
            self.result.retries += 1
            log.warning("verify failed in page %d at 0x%08X; erasing and rewriting the page "
                        "(%d of %d)", page, bad.address, attempt + 1, self.retries)
            self._erase_pages([page])
            self._write_page(page, blocks)
            again = self._first_bad(blocks)
            if again is None:
                return
            bad = again
        raise self._mismatch(bad)

    def _mismatch(self, block: Block) -> VerifyFailed:
        """VerifyFailed naming the first differing byte (read back if it can be)."""
        try:
            got = self.read("verify", block.address, len(block.data))
        except Stm32OtaError as err:
            log.warning("could not read back 0x%08X to locate the difference: %s",
                        block.address, err)
            return _tag(VerifyFailed(f"flash differs from the image in the block "
                                     f"0x{block.address:08X}..0x{block.end - 1:08X}"),
                        "verify", block.address)
        for i, (g, want) in enumerate(zip(got, block.data)):
            if g != want:
                return _tag(VerifyFailed(f"flash reads 0x{g:02X}, the image has 0x{want:02X}"),
                            "verify", block.address + i)
        return _tag(VerifyFailed(f"the {self.method} check of 0x{block.address:08X}.."
                                 f"0x{block.end - 1:08X} kept failing, yet a last read-back "
                                 "matches: the link corrupts data"), "verify", block.address)
