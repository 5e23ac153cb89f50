"""Firmware images: address-tagged segments read from raw binary, Intel HEX or Motorola S-record.

An `Image` is what the planner needs and nothing more: sorted, non-overlapping segments with
adjacent ones merged, so gaps between sections survive (they are not filled) and two images
with the same bytes at the same addresses compare equal whatever file they came from.

A raw binary carries no address. `parse`/`load` therefore *require* one for `.bin`
(`ImageRejected` otherwise); the caller decides the default. The CLI and the release manifest
use the chip's flash start (0x08000000 on every STM32 this tool knows, see
`DEFAULT_BIN_ADDRESS`). HEX and S-record files carry their own addresses; an `address` given
with them must equal the image's first address, anything else is rejected as a misunderstanding.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterable, Sequence

from agent.errors import ImageRejected

log = logging.getLogger(__name__)

DEFAULT_BIN_ADDRESS = 0x08000000  # main flash start of every STM32 (AN2606 memory maps)
ADDRESS_LIMIT = 1 << 32  # the bootloader takes 32-bit addresses (AN3155 3.4)
FORMATS = ("bin", "hex", "srec")
_EXTENSIONS = {
    ".bin": "bin",
    ".hex": "hex", ".ihex": "hex", ".ihx": "hex",
    ".srec": "srec", ".s19": "srec", ".s28": "srec", ".s37": "srec", ".mot": "srec",
}
_CODE = "bad_image"


@dataclass(frozen=True)
class Segment:
    """A run of bytes to be placed at `address`."""

    address: int
    data: bytes

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.address + len(self.data)


@dataclass(frozen=True, init=False)
class Image:
    """Sorted, non-overlapping, merged segments; never empty."""

    segments: tuple[Segment, ...]

    def __init__(self, segments: Iterable[Segment]) -> None:
        """Normalise `segments`; raise ImageRejected if they overlap or hold no bytes."""
        object.__setattr__(self, "segments", _normalise(segments))

    @property
    def start(self) -> int:
        """Address of the first byte."""
        return self.segments[0].address

    @property
    def end(self) -> int:
        """One past the address of the last byte."""
        return self.segments[-1].end

    @property
    def size(self) -> int:
        """Bytes of data (gaps not counted)."""
        return sum(len(s.data) for s in self.segments)

    @property
    def sha256(self) -> str:
        """Hex digest over (address, length, data) of every segment: equal for equal images."""
        h = hashlib.sha256()
        for s in self.segments:
            h.update(s.address.to_bytes(4, "big") + len(s.data).to_bytes(4, "big"))
            h.update(s.data)
        return h.hexdigest()

    def read(self, address: int, length: int, fill: int = 0xFF) -> bytes:
        """The bytes of [address, address+length), gaps filled with `fill`."""
        out = bytearray([fill]) * length
        end = address + length
        for s in self.segments:
            lo, hi = max(s.address, address), min(s.end, end)
            if lo < hi:
                out[lo - address:hi - address] = s.data[lo - s.address:hi - s.address]
        return bytes(out)

    def spans(self, align: int = 1) -> list[tuple[int, int]]:
        """[start, end) ranges covering the data, widened to `align` and merged when they touch."""
        out: list[tuple[int, int]] = []
        for s in self.segments:
            lo = s.address - s.address % align
            hi = -(-s.end // align) * align
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        return out


def _normalise(segments: Iterable[Segment]) -> tuple[Segment, ...]:
    items = sorted((s for s in segments if s.data), key=lambda s: s.address)
    if not items:
        raise ImageRejected("the image holds no data", code=_CODE)
    merged: list[Segment] = []
    for s in items:
        if s.address < 0 or s.end > ADDRESS_LIMIT:
            raise ImageRejected(f"data at 0x{s.address:X}..0x{s.end:X} is outside the 32-bit "
                                "address space", code=_CODE)
        if merged and s.address < merged[-1].end:
            raise ImageRejected(f"data at 0x{s.address:08X} overlaps data already placed at "
                                f"0x{merged[-1].address:08X}..0x{merged[-1].end - 1:08X}",
                                code=_CODE)
        if merged and s.address == merged[-1].end:
            merged[-1] = Segment(merged[-1].address, merged[-1].data + s.data)
        else:
            merged.append(Segment(s.address, bytes(s.data)))
    return tuple(merged)


def detect_format(data: bytes, name: str | None = None) -> str:
    """'bin', 'hex' or 'srec' from the file name's extension, else from the content."""
    if name:
        ext = os.path.splitext(name)[1].lower()
        if ext in _EXTENSIONS:
            return _EXTENSIONS[ext]
    _refuse_elf(data, name or "image")
    head = data.lstrip()[:2]
    if head[:1] == b":":
        return "hex"
    if head[:1] == b"S" and head[1:2].isdigit():
        return "srec"
    return "bin"


def _refuse_elf(data: bytes, name: str) -> None:
    """ELF files (magic 0x7F 'ELF', whatever the name says) are not flashed directly."""
    if data.startswith(b"\x7fELF"):
        raise ImageRejected(f"{name} is an ELF file (it starts with 0x7F 'ELF'), not firmware "
                            "to flash as it is; convert it with `arm-none-eabi-objcopy -O ihex "
                            "FILE OUT.hex`", code=_CODE)


def load(path: str | os.PathLike, fmt: str | None = None, address: int | None = None, *,
         bin_default: int | None = None) -> Image:
    """Read a firmware file; `fmt` None picks it from the extension or the content.

    `bin_default` is the address a raw binary gets when `address` is None (the command line
    passes DEFAULT_BIN_ADDRESS; the agent does not, because a manifest must say it).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageRejected(f"cannot read firmware file {os.fspath(path)!r}: {e.strerror}",
                            code="image_unreadable") from e
    if fmt is None:
        fmt = detect_format(data, os.fspath(path))
    if address is None and _canonical(fmt) == "bin":
        address = bin_default
    return parse(data, fmt, address, name=os.fspath(path))


def parse(data: bytes, fmt: str | None, address: int | None = None, *,
          name: str = "image") -> Image:
    """Build an Image from file content in format 'bin', 'hex' or 'srec' (None: sniff)."""
    fmt = detect_format(data) if fmt is None else _canonical(fmt)
    if fmt == "bin":
        _refuse_elf(data, name)  # an ELF renamed to .bin would flash its header as code
        if address is None:
            raise ImageRejected(f"{name}: a raw binary has no address; give one (the flash "
                                f"start is usually 0x{DEFAULT_BIN_ADDRESS:08X})", code=_CODE)
        if not data:
            raise ImageRejected(f"{name}: the file is empty", code=_CODE)
        return Image([Segment(address, data)])
    image = Image(_parse_text(_decode(data, name), fmt, name))
    if address is not None and address != image.start:
        raise ImageRejected(f"{name}: address 0x{address:08X} was given but the {fmt} file "
                            f"places its data from 0x{image.start:08X}; drop the address (it "
                            "only applies to raw binaries)", code=_CODE)
    return image


def _canonical(fmt: str) -> str:
    f = fmt.lower().lstrip(".")
    f = {"ihex": "hex", "ihx": "hex", "s19": "srec", "s28": "srec", "s37": "srec",
         "mot": "srec", "srecord": "srec"}.get(f, f)
    if f not in FORMATS:
        raise ImageRejected(f"unknown image format {fmt!r}; use one of {', '.join(FORMATS)}",
                            code=_CODE)
    return f


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as e:
        raise ImageRejected(f"{name}: byte {e.start} is not ASCII; is this really a HEX/S-record "
                            "file and not a binary?", code=_CODE) from e


def _parse_text(text: str, fmt: str, name: str) -> list[Segment]:
    """bincopy checks record checksums, lengths and types and tracks extended addresses."""
    lines = text.splitlines(keepends=True)
    try:
        segments = _records(lines, fmt)
    except ImageRejected as first:  # from _records, before its line number is known
        n = _first_failing_prefix(lines, fmt)
        where = f"line {n}: " if n else ""
        raise ImageRejected(f"{name}: {where}{first}", code=_CODE) from first.__cause__
    if fmt == "hex" and not any(_ihex_type(l) == 1 for l in lines):
        raise ImageRejected(f"{name}: no Intel HEX end-of-file record (:00000001FF); the file "
                            "is probably truncated", code=_CODE)
    return segments


def _bincopy() -> ModuleType:
    """bincopy, imported on the first HEX/S-record: it pulls in pyelftools and more, a third
    of `stm32ota flash`'s start-up, which a raw binary never needs."""
    import bincopy  # noqa: PLC0415 - lazy: only for HEX and S-record files

    return bincopy


def _records(lines: Sequence[str], fmt: str) -> list[Segment]:
    bincopy = _bincopy()
    bf = bincopy.BinFile()
    add: Callable[[str], None] = bf.add_ihex if fmt == "hex" else bf.add_srec
    try:
        add("".join(lines))  # overwrite=False: bincopy refuses most overlaps itself
    except (bincopy.Error, ValueError, IndexError) as e:
        raise ImageRejected(_describe(e), code=_CODE) from e
    segments = [Segment(s.minimum_address, bytes(s.data)) for s in bf.segments]
    declared = sum(_record_size(l, fmt) for l in lines)
    if declared != sum(len(s.data) for s in segments):
        # bincopy merges some out-of-order overlaps silently; counting bytes catches them
        raise ImageRejected("data records overlap (the same address is given twice)", code=_CODE)
    return segments


def _describe(e: Exception) -> str:
    if isinstance(e, _bincopy().AddDataError):
        return "data records overlap (the same address is given twice)"
    if isinstance(e, ValueError):
        return f"not a valid record ({e})"
    return str(e) or type(e).__name__


def _first_failing_prefix(lines: Sequence[str], fmt: str) -> int:
    """Smallest n such that lines[:n] fails to parse (failures only grow with n); 0 if none."""
    lo, hi = 1, len(lines)
    if not _fails(lines[:hi], fmt):
        return 0
    while lo < hi:
        mid = (lo + hi) // 2
        if _fails(lines[:mid], fmt):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _fails(lines: Sequence[str], fmt: str) -> bool:
    try:
        _records(lines, fmt)
    except ImageRejected:
        return True
    return False


def _ihex_type(line: str) -> int | None:
    s = line.strip()
    return int(s[7:9], 16) if len(s) >= 11 and s[0] == ":" else None


def _record_size(line: str, fmt: str) -> int:
    """Data bytes a record declares (only called on records bincopy accepted)."""
    s = line.strip()
    if not s:
        return 0
    if fmt == "hex":
        return int(s[1:3], 16) if _ihex_type(s) == 0 else 0
    width = {"1": 2, "2": 3, "3": 4}.get(s[1])
    return int(s[2:4], 16) - width - 1 if width else 0
