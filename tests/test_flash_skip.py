"""Skipping unchanged pages and verifying by checksum in large spans, on the simulated chip."""

from __future__ import annotations

from typing import Iterator

import pytest

from agent.flasher.execute import execute
from agent.flasher.image import Image, Segment
from agent.flasher.plan import Span, plan, spans
from agent.link.uart import UartLink
from agent.sim import PtySim, SimChip
from agent.stm32.bootloader import Bootloader
from test_flash_execute import BASE, FAST, L432, PAGE, assert_flash_holds, blob, i2c

PAGES = 8
IMAGE = Image([Segment(BASE, blob(PAGES * PAGE, 7))])


def _events(sim: SimChip, kind: str) -> list:
    return [e for e in sim.events if e[0] == kind]


def _flashed(flash_fn, image: Image = IMAGE):
    """A chip that already holds `image` (flashed through the client), events cleared."""
    sim, bl = flash_fn()
    execute(plan(image, L432), bl)
    sim.events.clear()
    return sim, bl


@pytest.fixture
def uart() -> Iterator:
    started: list = []

    def start():
        sim = SimChip(L432, realtime=False)
        pty = PtySim(sim).start()
        bl = Bootloader(UartLink(pty.path), timeouts=FAST)
        bl.connect()
        started.append((pty, bl))
        return sim, bl

    yield start
    for pty, bl in started:
        bl.close()
        pty.stop()


@pytest.mark.parametrize("link", ["uart", "i2c"])
def test_an_identical_image_touches_no_page_and_is_still_verified(link, uart) -> None:
    sim, bl = _flashed(uart if link == "uart" else i2c)
    result = execute(plan(IMAGE, L432), bl)
    assert not _events(sim, "erase") and not _events(sim, "write")
    assert (result.pages_skipped, result.pages_erased, result.bytes_written) == (PAGES, 0, 0)
    assert result.verify == ("readback" if link == "uart" else "crc")
    if link == "i2c":  # one CRC checks everything before and one verifies after
        assert [e[1:] for e in _events(sim, "checksum")] == [(BASE, PAGES * PAGE)] * 2
    assert_flash_holds(sim, plan(IMAGE, L432), IMAGE)


@pytest.mark.parametrize("link", ["uart", "i2c"])
def test_one_changed_page_is_the_only_one_erased_and_written(link, uart) -> None:
    sim, bl = _flashed(uart if link == "uart" else i2c)
    data = bytearray(IMAGE.segments[0].data)
    data[5 * PAGE + 100] ^= 0xFF
    new = Image([Segment(BASE, bytes(data))])
    result = execute(plan(new, L432), bl)
    assert [e[1] for e in _events(sim, "erase")] == [[5]]
    assert {e[1] // PAGE * PAGE for e in _events(sim, "write")} == {BASE + 5 * PAGE}
    assert result.pages_skipped == PAGES - 1
    assert_flash_holds(sim, plan(new, L432), new)


def test_old_bytes_outside_the_image_make_a_page_changed(uart) -> None:
    """Skipping must end where rewriting would: the image's bytes plus 0xFF in the rest."""
    short = Image([Segment(BASE, blob(PAGE + 100, 7))])  # page 1 is only partly covered
    sim, bl = _flashed(uart, IMAGE)  # page 1 holds old bytes after the first 100
    result = execute(plan(short, L432), bl)
    assert [e[1] for e in _events(sim, "erase")] == [[1]]
    assert result.pages_skipped == 1
    assert bytes(sim.flash[PAGE + 100:2 * PAGE]) == b"\xff" * (PAGE - 100)


def test_no_skip_erases_and_writes_every_page(uart) -> None:
    sim, bl = _flashed(uart)
    result = execute(plan(IMAGE, L432), bl, skip=False)
    assert result.pages_erased == PAGES and result.pages_skipped == 0
    assert len(_events(sim, "write")) == PAGES * PAGE // 256


def test_a_chip_holding_other_data_costs_few_probes_not_a_read_per_page(uart) -> None:
    sim, bl = _flashed(uart, Image([Segment(BASE, blob(32 * PAGE, 5))]))
    big = Image([Segment(BASE, blob(32 * PAGE, 3))])
    execute(plan(big, L432), bl, verify="none")
    probes = [e for e in _events(sim, "read") if e[2] == 16]
    assert len(probes) == 6  # pages 0, 1, 3, 7, 15, 31: the gaps double after each change
    assert len(_events(sim, "erase")) == 1  # all 32 pages in one command (under a second)


def test_a_blank_first_page_ends_the_check_after_one_probe(uart) -> None:
    sim, bl = uart()
    big = Image([Segment(BASE, blob(32 * PAGE, 3))])
    result = execute(plan(big, L432), bl, verify="none")
    assert [e[1:] for e in _events(sim, "read")] == [(BASE, 16)]
    assert result.pages_skipped == 0 and result.pages_erased == 32


def test_bytes_seen_before_stand_in_for_the_first_probe(uart) -> None:
    sim, bl = _flashed(uart)
    execute(plan(IMAGE, L432), bl, seen=(BASE, bl.read_memory(BASE, 16)))
    assert (BASE, 16) not in [e[1:] for e in _events(sim, "read")][1:]


def test_erased_stretches_of_the_image_are_not_written() -> None:
    sim, bl = i2c()
    data = blob(PAGE) + b"\xff" * PAGE + b"\xff" * 8 + blob(248) + b"\xff" * 16
    img = Image([Segment(BASE, data)])
    p = plan(img, L432)
    assert all(b.data.strip(b"\xff") == b.data[8:] or b.data[:1] != b"\xff" for b in p.blocks)
    execute(p, bl)
    writes = [e[1:] for e in _events(sim, "write")]
    assert all(addr < BASE + PAGE or addr >= BASE + 2 * PAGE for addr, _ in writes)
    assert (BASE + 2 * PAGE + 8, 248) in writes  # 0xFF head and tail trimmed per 8-byte unit
    assert_flash_holds(sim, p, img)


def test_a_crc_mismatch_is_narrowed_to_its_page_and_that_page_redone() -> None:
    sim, bl = i2c()
    p = plan(IMAGE, L432)
    garbled = {"done": False}
    real_write = bl.write_memory

    def write(addr: int, data: bytes) -> None:  # one block lands with a flipped bit, ACKed
        if addr == BASE + 6 * PAGE and not garbled["done"]:
            garbled["done"] = True
            data = bytes([data[0] & 0xFE]) + data[1:]
        real_write(addr, data)

    bl.write_memory = write  # type: ignore[method-assign]
    result = execute(p, bl, skip=False)
    assert result.retries == 1 and [6] in [e[1] for e in _events(sim, "erase")]
    crcs = [e[2] for e in _events(sim, "checksum")]
    # the whole image, two halves at each of 3 levels down to the page, then the page again
    # to name the bad region and once more after the redo: 9, not one per 256-byte block
    assert crcs[0] == PAGES * PAGE and PAGE in crcs and len(crcs) == 1 + 2 * 3 + 2
    assert_flash_holds(sim, p, IMAGE)


def test_spans_join_touching_parts_and_split_at_the_middle_page_edge() -> None:
    table = tuple((BASE + i * PAGE, PAGE) for i in range(4))
    parts = [Span(BASE + i * PAGE, bytes([i]) * PAGE, (i,)) for i in (0, 1, 3)]
    joined = spans(parts)
    assert [(s.address, len(s.data), s.pages) for s in joined] == [
        (BASE, 2 * PAGE, (0, 1)), (BASE + 3 * PAGE, PAGE, (3,))]
    low, high = joined[0].split(table)
    assert (low.pages, high.pages, high.address, high.data[:1]) == ((0,), (1,), BASE + PAGE, b"\1")
    with pytest.raises(ValueError):
        joined[1].split(table)
