"""Carry out a Plan through a Bootloader: check, erase, write, verify, with bounded recovery.

Every command goes through the retry loop of commands.py (a NACK, a garbled answer or a
timeout costs a re-sync and another try, a bounded number of times).

With `skip` (the default) pages that already hold what flashing would leave there are neither
erased nor written (compare.py says how they are found); verification still covers the whole
image: by CRC in large spans, or by read-back of the pages written (a page found unchanged by
reading all of it back is verified by that read).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import zlib
from typing import Any, Callable, Optional

from agent.errors import GarbledWrite, Stm32OtaError, UsageError, VerifyFailed
from agent.flasher.commands import Commands, Result, read_memory, tag, write_memory
from agent.flasher.compare import Compare, regions_spans
from agent.flasher.plan import Block, Plan
from agent.progress import ProgressCallback, no_progress
from agent.stm32.protocol import stm32_crc32

log = logging.getLogger(__name__)

__all__ = ["Result", "VERIFY_MODES", "execute", "read_memory", "write_memory"]

VERIFY_MODES = ("auto", "crc", "readback", "none")
# (address, length) ranges and the phase -> their CRC-32 (zlib) computed on the chip, or None
OnChipCrc = Callable[[list[tuple[int, int]], str], Optional[list[int]]]
ERASE_CHUNK_MS = 1000.0  # typical erase time per command: a progress and cancel point a second


def execute(plan: Plan, bl: Any, progress: Optional[ProgressCallback] = None, *,
            verify: str = "auto", retries: int = 3, cancel: Optional[threading.Event] = None,
            clock: Callable[[], float] = time.monotonic, skip: bool = True,
            seen: Optional[tuple[int, bytes]] = None,
            crc_on_chip: Optional[OnChipCrc] = None) -> Result:
    """Erase, write and verify per `plan` through Bootloader `bl`; raise typed errors.

    `skip`: leave pages alone that already hold their part of the image (page erase only).
    `seen`: (address, bytes) of flash read this session before anything was written; the
    skip check takes them instead of reading them again.
    `crc_on_chip`: CRCs computed by the chip (onchip.checker), for a bootloader without Get
    Checksum: the skip check and the verify then read back only pages whose CRC differs.
    """
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}",
                         code="bad_verify_mode")
    run = _Run(plan, bl, progress or no_progress, retries, cancel, clock, crc_on_chip)
    return run.go(verify, skip and plan.erase == "pages", seen)


class _Run(Commands):
    """One execution of a plan: erase, write, verify, with bounded recovery."""

    def __init__(self, plan: Plan, bl: Any, progress: ProgressCallback, retries: int,
                 cancel: Optional[threading.Event], clock: Callable[[], float],
                 crc_on_chip: Optional[OnChipCrc] = None) -> None:
        super().__init__(bl, retries, cancel)
        self.plan, self.progress, self.clock = plan, progress, clock
        self.method = "none"
        self.todo = set(plan.pages)  # pages to erase and write
        self.read_back: set[int] = set()  # pages whose every byte was read back unchanged
        self.compare = Compare(self, plan, "none")
        self.crc_on_chip = crc_on_chip

    def go(self, verify: str, skip: bool, seen: Optional[tuple[int, bytes]] = None) -> Result:
        """Run every phase and return the Result (`seen`: see execute())."""
        self.method = self._method(verify)
        self.result.verify = self.method
        self.compare = Compare(self, self.plan, self._blank_method(), seen)
        steps = [("erase", self._erase), ("write", self._write), ("verify", self._verify)]
        if skip:
            steps.insert(0, ("check", self._check))
        for phase, step in steps:
            t0 = self.clock()
            step()
            self.result.seconds[phase] = self.clock() - t0
        return self.result

    def _method(self, verify: str) -> str:
        if verify not in ("auto", "crc"):
            return verify
        method = self._blank_method()
        if verify == "crc" and method == "readback":
            log.warning("the bootloader offers no checksum command; verifying by read-back")
        return method

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
        """The best way to compare flash with what it should hold: the bootloader's CRC, the
        chip's own from RAM, else read-back (`_holds` reads back for "ram-crc")."""
        if self.bl.supports("checksum"):
            return "crc"
        return "ram-crc" if self.crc_on_chip is not None else "readback"

    # ---- check --------------------------------------------------------------------------

    def _check(self) -> None:
        """Find the pages that already hold their part of the image (reported as erase progress)."""
        total = len(self.plan.pages)
        self.progress("erase", 0, total)
        changed, self.read_back = self.compare.changed_pages(
            lambda n: self.progress("erase", n, total))
        self.todo = set(changed)
        self.result.pages_skipped = total - len(changed)
        if self.result.pages_skipped:
            log.info("%d of %d pages already hold the image: left alone",
                     self.result.pages_skipped, total)

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
        total, done = len(plan.pages), self.result.pages_skipped
        self.progress("erase", done, total)
        chunk: list[int] = []
        for page in sorted(self.todo):
            chunk.append(page)
            if sum(plan.chip.erase_ms(p) for p in chunk) >= ERASE_CHUNK_MS:
                self._erase_pages(chunk)
                done += len(chunk)
                self.progress("erase", done, total)
                chunk = []
        if chunk:
            self._erase_pages(chunk)
            self.progress("erase", total, total)

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
        raise tag(VerifyFailed(f"page {page} is not blank after {self.retries + 1} erase "
                                "attempts", code="erase_failed"), "erase", address)

    # ---- write --------------------------------------------------------------------------

    def _write(self) -> None:
        blocks = [b for b in self.plan.blocks if b.page in self.todo]
        total, done = sum(len(b.data) for b in blocks), 0
        self.progress("write", 0, total)
        for page, group in itertools.groupby(blocks, key=lambda b: b.page):
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
            except GarbledWrite as garbled:
                self._garbled_page(page, garbled.block, last=attempt == self.retries)
        raise AssertionError("unreachable: the last attempt raises")

    def _garbled_page(self, page: int, block: Block, last: bool) -> None:
        """A failed write left other data: only erasing the page again can fix that."""
        if last:
            raise tag(VerifyFailed(f"failed writes left other data in page {page} after "
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
                    raise GarbledWrite(block.address, block)  # (with erase "none" it may be old data: write on)
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
        pages = [p for p in self.plan.pages
                 if self.method == "crc" or p not in self.read_back]
        todo = regions_spans(self.plan, pages)
        total, done = sum(len(s.data) for s in todo), 0
        self.progress("verify", 0, total)
        if self.method == "ram-crc":
            bad_pages = self._bad_by_ram_crc(pages)
            if bad_pages is not None:
                for page in bad_pages:  # read back: that, not the chip's CRC, has the last word
                    bad = self._first_bad(self._regions(page))
                    if bad is None:
                        log.warning("page %d reads back as written though the chip's CRC "
                                    "differed", page)
                    else:
                        self._redo_page(page, self.plan.page_blocks(page), bad)
                self.progress("verify", total, total)
                return
            log.warning("the CRC could not be computed on the chip; verifying by read-back")
            self.method = self.result.verify = "readback"
        for span in todo:
            if self.method == "crc":  # one CRC for the span; halve it only on a mismatch
                bad = self.compare.bad_pages("verify", span)
            else:
                bad = [p for p in span.pages if self._first_bad(self._regions(p)) is not None]
            for page in bad:
                regions = self._regions(page)
                self._redo_page(page, self.plan.page_blocks(page),
                                self._first_bad(regions) or regions[0])
            done += len(span.data)
            self.progress("verify", done, total)

    def _bad_by_ram_crc(self, pages: list[int]) -> Optional[list[int]]:
        """The pages whose image bytes the chip's own CRCs say differ (None: no CRCs came)."""
        assert self.crc_on_chip is not None
        chosen = set(pages)
        regions = [r for r in self.plan.regions if r.page in chosen]
        if not regions:
            return []
        self.check_cancel("verify", regions[0].address)
        crcs = self.crc_on_chip([(r.address, len(r.data)) for r in regions], "verify")
        if crcs is None:
            return None
        bad = sorted({r.page for r, crc in zip(regions, crcs) if crc != zlib.crc32(r.data)})
        if bad:
            log.warning("the chip's CRC differs in %d of %d pages: reading them back", len(bad),
                        len(chosen))
        return bad

    def _regions(self, page: int) -> tuple[Block, ...]:
        """The image bytes of `page`; for read-back in reads of their own, so that a noisy
        read costs one read again, not the whole page (AN3155 3.4: no checksum on read data)."""
        step = 1 << 32 if self.method == "crc" else self.max_read
        return tuple(Block(r.address + i, r.data[i:i + step], page)
                     for r in self.plan.regions if r.page == page
                     for i in range(0, len(r.data), step))

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
            again = self._first_bad(self._regions(page))
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
            return tag(VerifyFailed(f"flash differs from the image in the block "
                                     f"0x{block.address:08X}..0x{block.end - 1:08X}"),
                        "verify", block.address)
        for i, (g, want) in enumerate(zip(got, block.data)):
            if g != want:
                return tag(VerifyFailed(f"flash reads 0x{g:02X}, the image has 0x{want:02X}"),
                            "verify", block.address + i)
        return tag(VerifyFailed(f"the {self.method} check of 0x{block.address:08X}.."
                                 f"0x{block.end - 1:08X} kept failing, yet a last read-back "
                                 "matches: the link corrupts data"), "verify", block.address)
