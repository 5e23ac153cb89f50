"""Does the flash already hold what the plan wants? By on-chip CRC in large spans, or read-back.

Two questions, both answered with as few commands as the bootloader allows:

- `changed_pages`: before erasing, which pages must be flashed? A page is unchanged when all of
  it reads what flashing would leave there (the image's bytes, 0xFF elsewhere), so skipping it
  ends in the same flash as rewriting it. With Get Checksum (0xA1) one CRC covers each run of
  adjacent pages and a mismatch is narrowed down by halving; by read-back each page is read
  until its first difference, and after a run of changed pages the next ones are assumed
  changed without a look (exponential back-off), so a chip that holds something else entirely
  costs a handful of short reads, not one per page. When the image's first page reads erased
  where the image has data, the flash is taken as blank (a new or erased chip: flashing
  programs from the start, so a blank start with the image further on is rare, and taking a
  page as changed only costs time): nothing is skipped and nothing more is read. Bytes the
  session already read (its first READ, `seen`) serve as the first look.
  Without 0xA1, where the chip surely comes back to its bootloader after code in RAM
  (onchip.way_back), it computes one CRC per page itself (`ram-crc`, onchip.crc_on_chip);
  only a failure to get them falls back to reading back.
- `bad_pages`: after writing, the same halving over spans of image bytes.

AN3155 3.13 / AN4221 2.20: the checksum start address and length are multiples of 4 bytes
(stm32flash checks the same before sending 0xA1); spans start and end on the chip's write unit
(8 bytes on L4), a multiple of 4, and lie in flash. Neither note gives a largest length, so a
span may cover the whole image.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Callable, Iterable, Optional

from agent.flasher.plan import Plan, Span, spans
from agent.stm32.protocol import stm32_crc32

log = logging.getLogger(__name__)

PROBE = 16  # bytes of a page read first when the previous page changed: a cheap first look


class Compare:
    """Flash-content questions over a command runner (commands.Commands: retry, read)."""

    def __init__(self, commands: Any, plan: Plan, method: str,
                 seen: Optional[tuple[int, bytes]] = None) -> None:
        self.commands, self.plan, self.method = commands, plan, method
        self.seen = seen or (0, b"")  # (address, bytes) read before anything was written

    def crc_matches(self, phase: str, span: Span) -> bool:
        """One 0xA1 over the span, compared with the CRC of what it should hold."""
        got = self.commands.retry(phase, span.address,
                                  lambda: self.commands.bl.checksum(span.address, len(span.data)))
        return bool(got == stm32_crc32(span.data))

    def bad_pages(self, phase: str, span: Span) -> list[int]:
        """Pages of `span` whose bytes differ, by CRC: one command if all is well."""
        self.commands.check_cancel(phase, span.address)
        if self.crc_matches(phase, span):
            return []
        if len(span.pages) == 1:
            return list(span.pages)
        low, high = span.split(self.plan.page_table)
        return self.bad_pages(phase, low) + self.bad_pages(phase, high)

    def changed_pages(self, found: Callable[[int], None]) -> tuple[list[int], set[int]]:
        """(pages to flash, pages proven unchanged by reading all of them back).

        `found(n)` is told the number of unchanged pages found so far.
        """
        plan = self.plan
        if self.method == "crc":
            whole = spans([plan.page_span(p) for p in plan.pages])
            changed = [p for span in whole for p in self.bad_pages("check", span)]
            found(len(plan.pages) - len(changed))
            return changed, set()
        if self.method == "ram-crc":
            done = self._changed_by_ram_crc()
            if done is not None:
                found(len(plan.pages) - len(done))
                return done, set()
        changed, same = [], set()
        streak = blind = 0
        for page in plan.pages:
            if blind:  # the pages before differed: assume this one does too
                blind -= 1
                changed.append(page)
                continue
            differs = self._first_difference(plan.page_span(page), PROBE if streak or not same
                                             else self.commands.max_read)
            if differs is None:
                same.add(page)
                streak = 0
                found(len(same))
            elif page == plan.pages[0] and _reads_erased(differs):
                return list(plan.pages), set()
            else:
                changed.append(page)
                streak += 1
                blind = 2 ** (streak - 1) - 1
        return changed, same

    def _changed_by_ram_crc(self) -> Optional[list[int]]:
        """The changed pages by one CRC per page computed on the chip (None: no CRCs came).

        A first look (the session's READ) that finds the image's first page erased means a
        blank chip: nothing to skip, and the routine is not worth its reset.
        """
        plan = self.plan
        first = plan.page_span(plan.pages[0])
        head = self._known(first.address, min(PROBE, len(first.data)))
        if head is not None and head != first.data[:len(head)] and _reads_erased(head):
            return list(plan.pages)
        pages = [plan.page_span(p) for p in plan.pages]
        crcs = self.commands.crc_on_chip([(p.address, len(p.data)) for p in pages], "check")
        if crcs is None:
            log.info("no CRCs from the chip; reading the pages back instead")
            return None
        return [page for page, span, crc in zip(plan.pages, pages, crcs)
                if crc != zlib.crc32(span.data)]

    def _first_difference(self, span: Span, first: int) -> Optional[bytes]:
        """The first chunk of the page that reads other than span.data (None: all match)."""
        at, n = 0, min(first, len(span.data))
        while at < len(span.data):
            got = self._known(span.address + at, n) or \
                self.commands.read("check", span.address + at, n)
            if got != span.data[at:at + n]:
                return got
            at += n
            n = min(self.commands.max_read, len(span.data) - at)
        return None

    def _known(self, address: int, n: int) -> Optional[bytes]:
        """The `seen` bytes at [address, address + n), if they cover all of it."""
        start, data = self.seen
        if start <= address and address + n <= start + len(data):
            return data[address - start:address - start + n]
        return None


def _reads_erased(got: bytes) -> bool:
    """Bytes of the image's first page that differ from it read erased: a blank flash."""
    if got != b"\xff" * len(got):
        return False
    log.info("the image's first page reads erased: a blank flash, nothing to skip")
    return True


def regions_spans(plan: Plan, pages: Iterable[int]) -> list[Span]:
    """The image bytes of `pages` as spans of adjacent regions."""
    chosen = set(pages)
    return spans([Span(r.address, r.data, (r.page,)) for r in plan.regions if r.page in chosen])
