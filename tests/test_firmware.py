"""Firmware images: formats, gaps, round trips and every way a file can be rejected."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.errors import ImageRejected
from agent.flasher.image import DEFAULT_BIN_ADDRESS, Image, Segment, detect_format, load, parse
# Independent writers (not bincopy), so the parser is checked against a second implementation.
from cli_tools import ihex, ihex_record, srec


def blob(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


GAPPY = [(0x08000000, blob(300)), (0x08000400, blob(5, 9)), (0x08010001, blob(77, 3))]


def pairs(image: Image) -> list[tuple[int, bytes]]:
    return [(s.address, s.data) for s in image.segments]


# --- the Image value ------------------------------------------------------------------------

def test_image_sorts_and_merges_adjacent_segments() -> None:
    img = Image([Segment(0x20, b"\x03"), Segment(0x10, b"\x01\x02"), Segment(0x12, b"\xaa"),
                 Segment(0x40, b"")])
    assert pairs(img) == [(0x10, b"\x01\x02\xaa"), (0x20, b"\x03")]
    assert (img.start, img.end, img.size) == (0x10, 0x21, 4)


def test_image_rejects_overlap_and_emptiness() -> None:
    with pytest.raises(ImageRejected, match="0x00000011 overlaps") as e:
        Image([Segment(0x10, b"ab"), Segment(0x11, b"c")])
    assert e.value.code == "bad_image"
    with pytest.raises(ImageRejected, match="no data"):
        Image([])
    with pytest.raises(ImageRejected, match="32-bit"):
        Image([Segment(0xFFFFFFFF, b"ab")])


def test_read_fills_gaps_and_spans_widen_to_alignment() -> None:
    img = Image([Segment(0x103, b"\x11\x22"), Segment(0x109, b"\x33")])
    assert img.read(0x100, 12, fill=0xEE) == bytes.fromhex("EEEEEE1122EEEEEEEE33EEEE")
    assert img.spans(1) == [(0x103, 0x105), (0x109, 0x10A)]
    assert img.spans(8) == [(0x100, 0x110)]  # both land in the same 8-byte units
    assert img.spans(4) == [(0x100, 0x10C)]


def test_sha256_depends_on_addresses_and_bytes_only() -> None:
    a = Image([Segment(0, b"ab"), Segment(2, b"c")])
    b = Image([Segment(0, b"abc")])
    assert a.sha256 == b.sha256
    assert a.sha256 != Image([Segment(1, b"abc")]).sha256
    assert a == b


# --- formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [1, 2, 3])
def test_srec_with_gaps_round_trips(kind: int) -> None:
    base = {1: 0x0, 2: 0x00E00000, 3: 0x08000000}[kind]
    shift = 4 if kind == 1 else 0  # S1 addresses are 16 bits: squeeze the gaps
    segs = [(base + ((a - 0x08000000) >> shift) * (1 + shift), d) for a, d in GAPPY]
    img = parse(srec(segs, kind=kind).encode(), "srec")
    assert pairs(img) == segs


def test_hex_with_gaps_unaligned_ends_and_64k_crossing_round_trips() -> None:
    segs = GAPPY[:2] + [(0x0800FFF0, blob(40, 5)), (0x0802FFFF, b"\x42")]  # 64K crossings
    img = parse(ihex(segs, per_line=16).encode(), "hex")
    assert pairs(img) == [(a, d) for a, d in segs]
    assert img.size == sum(len(d) for _, d in segs)


def test_hex_and_srec_of_the_same_data_give_equal_images() -> None:
    assert parse(ihex(GAPPY).encode(), "hex") == parse(srec(GAPPY).encode(), "srec")


def test_bin_needs_an_address_and_keeps_every_byte() -> None:
    data = blob(1001) + b"\xff" * 7
    img = parse(data, "bin", 0x08004000)
    assert pairs(img) == [(0x08004000, data)]
    with pytest.raises(ImageRejected, match="0x08000000"):
        parse(data, "bin", None)
    with pytest.raises(ImageRejected, match="empty"):
        parse(b"", "bin", DEFAULT_BIN_ADDRESS)


def test_address_with_hex_must_match_its_start() -> None:
    text = ihex(GAPPY).encode()
    assert parse(text, "hex", 0x08000000).start == 0x08000000
    with pytest.raises(ImageRejected, match="only applies to raw binaries"):
        parse(text, "hex", 0x08004000)


@pytest.mark.parametrize("name,content,fmt", [
    ("fw.hex", b"", "hex"), ("fw.IHEX", b"", "hex"), ("a.s19", b"", "srec"),
    ("a.s37", b"", "srec"), ("a.mot", b"", "srec"), ("a.srec", b"", "srec"),
    ("a.bin", b":10000000", "bin"), ("a.dat", b"\r\n:020000", "hex"),
    ("a.dat", b"S00600", "srec"), ("noext", b"\x00\x20\x00\x20", "bin"),
])
def test_detect_format(name: str, content: bytes, fmt: str) -> None:
    assert detect_format(content, name) == fmt


def test_elf_is_refused_with_a_hint() -> None:
    with pytest.raises(ImageRejected, match="objcopy"):
        detect_format(b"\x7fELF\x01\x01", "fw.elf")


def test_load_from_files(tmp_path: Path) -> None:
    (tmp_path / "fw.hex").write_text(ihex(GAPPY))
    (tmp_path / "fw.s28").write_text(srec([(a & 0xFFFFFF, d) for a, d in GAPPY], kind=2))
    (tmp_path / "fw.bin").write_bytes(blob(64))
    (tmp_path / "fw.unknown").write_text(srec(GAPPY))
    assert pairs(load(tmp_path / "fw.hex")) == GAPPY
    assert load(tmp_path / "fw.s28").start == 0x08000000 & 0xFFFFFF
    assert load(tmp_path / "fw.bin", address=0x08000000).size == 64
    assert load(tmp_path / "fw.unknown") == load(tmp_path / "fw.hex")
    assert load(tmp_path / "fw.hex", fmt="bin", address=0).size == len(ihex(GAPPY))
    with pytest.raises(ImageRejected, match="cannot read") as e:
        load(tmp_path / "missing.hex")
    assert e.value.code == "image_unreadable"


# --- rejections, with the line a person has to look at --------------------------------------

def _lines(text: str) -> list[str]:
    return text.splitlines()


def _reject(text: str, fmt: str) -> ImageRejected:
    with pytest.raises(ImageRejected) as e:
        parse(text.encode(), fmt)
    assert e.value.code == "bad_image"
    assert isinstance(e.value, ValueError)
    return e.value


def test_bad_hex_checksum_names_the_line() -> None:
    lines = _lines(ihex(GAPPY))
    lines[5] = lines[5][:-2] + ("00" if lines[5][-2:] != "00" else "01")
    err = _reject("\n".join(lines), "hex")
    assert "line 6:" in str(err) and "crc" in str(err)


def test_bad_srec_checksum_names_the_line() -> None:
    lines = _lines(srec(GAPPY))
    lines[3] = lines[3][:-2] + ("00" if lines[3][-2:] != "00" else "01")
    assert "line 4:" in str(_reject("\n".join(lines), "srec"))


def test_non_hex_characters_and_unknown_record_types() -> None:
    lines = _lines(ihex(GAPPY))
    lines[2] = lines[2][:9] + "ZZ" + lines[2][11:]
    assert "line 3:" in str(_reject("\n".join(lines), "hex"))
    bad_type = ihex_record(0, 7, b"\x00")
    assert "line 2:" in str(_reject(ihex_record(0, 0, b"\x01") + "\n" + bad_type + "\n", "hex"))
    assert "line 2:" in str(_reject("S0030000FC\nS4030000FC\n", "srec"))


def test_overlapping_records_are_rejected_with_their_line() -> None:
    text = ihex([(0x08000000, blob(32)), (0x08000010, blob(4))])  # 4th line lands inside
    err = _reject(text, "hex")
    assert "overlap" in str(err) and "line 4:" in str(err)


def test_out_of_order_overlap_that_bincopy_would_merge_is_caught() -> None:
    # records: [0x100,0x110) then [0x120,0x130) then [0x110,0x128) reaches into the second
    text = (ihex_record(0x100, 0, blob(16)) + "\n" + ihex_record(0x120, 0, blob(16)) + "\n"
            + ihex_record(0x110, 0, blob(24)) + "\n:00000001FF\n")
    assert "line 3:" in str(_reject(text, "hex"))


def test_duplicate_record_is_an_overlap() -> None:
    rec = ihex_record(0x0, 0, blob(8))
    assert "overlap" in str(_reject(f"{rec}\n{rec}\n:00000001FF\n", "hex"))


def test_truncated_hex_and_empty_text_files() -> None:
    assert "truncated" in str(_reject(ihex(GAPPY, eof=False), "hex"))
    assert "no data" in str(_reject(":00000001FF\n", "hex"))
    assert "no data" in str(_reject("S0030000FC\n", "srec"))


def test_binary_garbage_given_as_hex() -> None:
    with pytest.raises(ImageRejected, match="not ASCII"):
        parse(b":\x00\xff\xfe", "hex")


def test_unknown_format_name() -> None:
    with pytest.raises(ImageRejected, match="unknown image format"):
        parse(b"", "elf")


def test_large_image_parses_quickly_enough_to_be_practical() -> None:
    data = hashlib.sha256(b"x").digest() * 8192  # 256 KiB
    img = parse(ihex([(0x08000000, data)], per_line=32).encode(), "hex")
    assert img.size == len(data) and img.segments[0].data == data
