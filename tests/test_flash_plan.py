"""plan(): which pages are erased and which blocks are written, for every layout edge."""

from __future__ import annotations

import dataclasses

import pytest

from agent.errors import ChipMismatch, UsageError
from agent.flasher.image import Image, Segment
from agent.flasher.plan import Plan, page_table, plan
from agent.stm32.chips import CHIPS

L432 = CHIPS[0x435]  # 128 x 2 KiB, 8-byte double words
BASE = 0x08000000
K = 1024
F4 = dataclasses.replace(  # F40x/41x: 4x16K, 64K, 7x128K sectors, word writes (AN2606)
    L432, pid=0x413, name="STM32F40xxx/41xxx", family="F4", flash_size=1024 * K,
    pages=((4, 16 * K), (1, 64 * K), (7, 128 * K)), write_align=4)
H7 = dataclasses.replace(  # H74x/75x: 128 KiB sectors, 256-bit flash words
    L432, pid=0x450, name="STM32H74xxx/75xxx", family="H7", flash_size=2048 * K,
    pages=((16, 128 * K),), write_align=32)
F1 = dataclasses.replace(L432, pid=0x410, name="STM32F10xxx", family="F1", flash_size=128 * K,
                         pages=((128, 1 * K),), write_align=2)


def image(*parts: tuple[int, int]) -> Image:
    """Image from (address, length) pairs with recognisable bytes."""
    return Image([Segment(a, bytes((a + i) & 0xFF for i in range(n))) for a, n in parts])


def check_invariants(p: Plan, img: Image, align: int, max_write: int) -> None:
    """Properties every plan must have, whatever the layout."""
    written = set()
    for b in p.blocks:
        page_addr, page_size = p.page_table[b.page]
        assert b.address % align == 0 and len(b.data) % align == 0
        assert 0 < len(b.data) <= max_write
        assert page_addr <= b.address and b.end <= page_addr + page_size  # within one page
        for i, byte in enumerate(b.data):
            assert b.address + i not in written
            written.add(b.address + i)
    assert list(p.blocks) == sorted(p.blocks, key=lambda b: b.address)
    for s in img.segments:  # every image byte is written with its value
        for i, byte in enumerate(s.data):
            assert s.address + i in written
    for b in p.blocks:  # padding is 0xFF and only padding differs from the image
        assert b.data == img.read(b.address, len(b.data), 0xFF)
    assert p.pages == tuple(sorted({b.page for b in p.blocks}))


# --- page tables ------------------------------------------------------------------------------

def test_page_table_from_runs_and_truncated_by_flash_size() -> None:
    table = page_table(F4)
    assert len(table) == 12
    assert table[3] == (BASE + 48 * K, 16 * K)
    assert table[4] == (BASE + 64 * K, 64 * K)
    assert table[5] == (BASE + 128 * K, 128 * K)
    assert table[-1] == (BASE + 896 * K, 128 * K)
    assert len(page_table(F4, 512 * K)) == 8  # F401xE-like: the register says 512 KiB
    assert len(page_table(L432, 128 * K)) == 64


# --- L4: 2 KiB pages, 8-byte units --------------------------------------------------------------

def test_small_image_at_flash_start() -> None:
    img = image((BASE, 1000))
    p = plan(img, L432)
    assert p.pages == (0,)
    assert [(b.address, len(b.data)) for b in p.blocks] == [
        (BASE, 256), (BASE + 256, 256), (BASE + 512, 256), (BASE + 768, 232)]
    assert p.blocks[-1].data[-1] == (BASE + 999) & 0xFF  # 1000 is a multiple of 8: no pad
    assert p.image_size == 1000 and sum(len(b.data) for b in p.blocks) == 1000
    check_invariants(p, img, 8, 256)


def test_unaligned_start_and_end_are_padded_to_double_words() -> None:
    img = image((BASE + 0x803, 10))  # 0x803..0x80C -> units 0x800..0x810
    p = plan(img, L432)
    assert p.pages == (1,)
    assert [(b.address, len(b.data)) for b in p.blocks] == [(BASE + 0x800, 16)]
    assert p.blocks[0].data[:3] == b"\xff\xff\xff" and p.blocks[0].data[13:] == b"\xff" * 3
    check_invariants(p, img, 8, 256)


def test_two_segments_in_one_double_word_merge_into_one_unit() -> None:
    img = image((BASE + 0x100, 3), (BASE + 0x105, 2))
    p = plan(img, L432)
    assert [(b.address, len(b.data)) for b in p.blocks] == [(BASE + 0x100, 8)]
    assert p.blocks[0].data[3:5] == b"\xff\xff"
    check_invariants(p, img, 8, 256)


def test_blocks_split_at_page_edges() -> None:
    img = image((BASE + 2048 - 100, 300))  # straddles pages 0 and 1
    p = plan(img, L432)
    assert p.pages == (0, 1)
    assert [(b.address - BASE, len(b.data), b.page) for b in p.blocks] == [
        (2048 - 104, 104, 0), (2048, 200, 1)]
    check_invariants(p, img, 8, 256)


def test_image_ending_exactly_on_a_page_edge_touches_no_next_page() -> None:
    p = plan(image((BASE + 2048, 2048)), L432)
    assert p.pages == (1,)


def test_gap_spanning_pages_erases_only_touched_pages() -> None:
    img = image((BASE + 10, 20), (BASE + 5 * 2048 + 7, 9), (BASE + 100 * 2048, 1))
    p = plan(img, L432)
    assert p.pages == (0, 5, 100)
    assert [b.address - BASE for b in p.blocks] == [8, 5 * 2048, 100 * 2048]
    check_invariants(p, img, 8, 256)


def test_image_exactly_filling_flash() -> None:
    img = image((BASE, 256 * K))
    p = plan(img, L432)
    assert p.pages == tuple(range(128))
    assert len(p.blocks) == 1024 and sum(len(b.data) for b in p.blocks) == 256 * K
    assert p.flash_range == (BASE, BASE + 256 * K)


@pytest.mark.parametrize("parts,bad", [
    (((BASE, 256 * K + 1),), BASE + 256 * K),  # one byte too many
    (((BASE - 4, 8),), BASE - 4),  # starts below flash
    (((0x20000000, 16),), 0x20000000),  # RAM: out of scope
    (((BASE, 16), (BASE + 300 * K, 4)), BASE + 300 * K),  # a far segment after a gap
])
def test_bytes_outside_flash_are_refused_naming_address_and_range(
        parts: tuple[tuple[int, int], ...], bad: int) -> None:
    with pytest.raises(ChipMismatch) as e:
        plan(image(*parts), L432)
    assert e.value.code == "image_outside_flash"
    assert f"0x{bad:08X}" in str(e.value)
    assert "0x08000000..0x0803FFFF" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_flash_size_from_the_register_shrinks_the_usable_flash() -> None:
    img = image((BASE + 128 * K, 8))
    assert plan(img, L432).pages == (64,)
    with pytest.raises(ChipMismatch, match="0x08000000..0x0801FFFF"):
        plan(img, L432, flash_size=128 * K)


# --- F4: uneven sectors -----------------------------------------------------------------------

def test_f4_sectors_16k_64k_128k() -> None:
    img = image((BASE + 60 * K, 8 * K), (BASE + 200 * K, 4), (BASE + 1024 * K - 4, 4))
    p = plan(img, F4)
    assert p.pages == (3, 4, 5, 11)
    assert {b.page for b in p.blocks if b.address < BASE + 64 * K} == {3}
    assert p.blocks[-1].address == BASE + 1024 * K - 4
    check_invariants(p, img, 4, 256)


def test_f4_image_too_big_for_a_512k_part() -> None:
    with pytest.raises(ChipMismatch, match="0x08080000"):
        plan(image((BASE, 512 * K + 4)), F4, flash_size=512 * K)


# --- alignment per family ---------------------------------------------------------------------

def test_h7_writes_whole_32_byte_flash_words() -> None:
    img = image((BASE + 0x21, 1), (BASE + 0x60, 33))
    p = plan(img, H7, max_write=256)
    assert [(b.address - BASE, len(b.data)) for b in p.blocks] == [(0x20, 32), (0x60, 64)]
    check_invariants(p, img, 32, 256)


def test_f1_half_word_chip_still_writes_whole_words() -> None:
    p = plan(image((BASE + 2, 2)), F1)  # AN3155 3.6: WRITE_MEMORY needs 4-byte multiples
    assert [(b.address - BASE, len(b.data)) for b in p.blocks] == [(0, 4)]


def test_small_max_write_for_i2c_links() -> None:
    img = image((BASE, 200))
    p = plan(img, L432, max_write=64)
    assert [len(b.data) for b in p.blocks] == [64, 64, 64, 8]
    check_invariants(p, img, 8, 64)


@pytest.mark.parametrize("max_write", [0, 4, 7])
def test_max_write_below_the_write_unit_is_refused(max_write: int) -> None:
    with pytest.raises(UsageError, match="write unit"):
        plan(image((BASE, 8)), L432, max_write=max_write)


@pytest.mark.parametrize("max_write,used", [(60, 56), (257, 256), (255, 248)])
def test_max_write_is_rounded_down_to_the_write_unit(max_write: int, used: int) -> None:
    img = image((BASE, 1024))
    p = plan(img, L432, max_write=max_write)
    assert len(p.blocks[0].data) == used
    check_invariants(p, img, 8, used)


def test_erase_mode_is_checked_and_kept() -> None:
    assert plan(image((BASE, 8)), L432, erase="mass").erase == "mass"
    assert plan(image((BASE, 8)), L432, erase="none").erase == "none"
    with pytest.raises(UsageError):
        plan(image((BASE, 8)), L432, erase="all")


def test_plan_is_a_pure_value() -> None:
    img = image((BASE + 3, 5000), (BASE + 9000, 77))
    assert plan(img, L432) == plan(img, L432)
    assert plan(img, L432).page_blocks(0) == tuple(b for b in plan(img, L432).blocks
                                                   if b.page == 0)
