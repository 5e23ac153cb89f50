"""Facts of the STM32 ROM bootloader protocol (AN3155 USART, AN4221 I2C), in one place.

The host-side driver (wire.py, bootloader.py) and the simulator (agent/sim) both import these:
the answer bytes, the opcodes and their names, which opcodes a bootloader version offers, the
XOR checksum every packet carries and the CRC that Get Checksum computes. Nothing here does IO.

CRC: AN4221 2.20 / AN3155 3.13: the ROM bootloader runs the CRC peripheral in its default
setup: polynomial 0x04C11DB7, initial value 0xFFFFFFFF, 32-bit input words, no reflection, no
final XOR. The words are the little-endian words of memory, each fed MSB first. That makes it
CRC-32/MPEG-2 over the byte-swapped words.
"""

from __future__ import annotations

import logging
from functools import lru_cache, reduce
from typing import Iterable, Sequence

from agent.errors import UsageError

log = logging.getLogger(__name__)

# ---- answers (AN3155 2 / AN4221 2) -----------------------------------------------------------

ACK = 0x79
NACK = 0x1F
BUSY = 0x76  # AN4221 2: answer to a poll while a no-stretch command is still running
SYNC = 0x7F  # AN3155 2.1: the autobaud byte that starts a USART session

# ---- opcodes (AN3155 Table 2 / AN4221 Table 2; _NS: the AN4221 no-stretch variants) ----------

GET = 0x00
GET_VERSION = 0x01
GET_ID = 0x02
READ_MEMORY = 0x11
GO = 0x21
WRITE_MEMORY = 0x31
WRITE_MEMORY_NS = 0x32
ERASE = 0x43  # AN3155 3.7: one byte per page; exclusive with EXTENDED_ERASE on one device
EXTENDED_ERASE = 0x44
EXTENDED_ERASE_NS = 0x45
SPECIAL = 0x50  # AN3155 Table 2: listed by newer parts, never sent by this driver
EXTENDED_SPECIAL = 0x51
WRITE_PROTECT = 0x63
WRITE_PROTECT_NS = 0x64
WRITE_UNPROTECT = 0x73
WRITE_UNPROTECT_NS = 0x74
READOUT_PROTECT = 0x82
READOUT_PROTECT_NS = 0x83
READOUT_UNPROTECT = 0x92
READOUT_UNPROTECT_NS = 0x93
GET_CHECKSUM = 0xA1  # AN3155 3.13 (USART V3.3) / AN4221 2.20 (I2C V1.2, answered with BUSY)

# The names people read (`info`), as the application notes spell them.
OPCODE_NAMES: dict[int, str] = {
    GET: "GET", GET_VERSION: "GET_VERSION", GET_ID: "GET_ID", READ_MEMORY: "READ_MEMORY",
    GO: "GO", WRITE_MEMORY: "WRITE_MEMORY", WRITE_MEMORY_NS: "WRITE_MEMORY_NS", ERASE: "ERASE",
    EXTENDED_ERASE: "EXTENDED_ERASE", EXTENDED_ERASE_NS: "EXTENDED_ERASE_NS",
    SPECIAL: "SPECIAL", EXTENDED_SPECIAL: "EXTENDED_SPECIAL", WRITE_PROTECT: "WRITE_PROTECT",
    WRITE_PROTECT_NS: "WRITE_PROTECT_NS", WRITE_UNPROTECT: "WRITE_UNPROTECT",
    WRITE_UNPROTECT_NS: "WRITE_UNPROTECT_NS", READOUT_PROTECT: "READOUT_PROTECT",
    READOUT_PROTECT_NS: "READOUT_PROTECT_NS", READOUT_UNPROTECT: "READOUT_UNPROTECT",
    READOUT_UNPROTECT_NS: "READOUT_UNPROTECT_NS", GET_CHECKSUM: "GET_CHECKSUM",
}

# Function -> (stretching opcodes, best first; no-stretch opcodes): the driver picks one per
# function from what GET offers (Bootloader.supports() takes these names).
OPCODES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "get": ((GET,), ()),
    "get_version": ((GET_VERSION,), ()),
    "get_id": ((GET_ID,), ()),
    "read": ((READ_MEMORY,), ()),
    "go": ((GO,), ()),
    "write": ((WRITE_MEMORY,), (WRITE_MEMORY_NS,)),
    "erase": ((EXTENDED_ERASE, ERASE), (EXTENDED_ERASE_NS,)),
    "write_protect": ((WRITE_PROTECT,), (WRITE_PROTECT_NS,)),
    "write_unprotect": ((WRITE_UNPROTECT,), (WRITE_UNPROTECT_NS,)),
    "readout_protect": ((READOUT_PROTECT,), (READOUT_PROTECT_NS,)),
    "readout_unprotect": ((READOUT_UNPROTECT,), (READOUT_UNPROTECT_NS,)),
    "checksum": ((GET_CHECKSUM,), ()),
}

_NO_STRETCH = tuple(op for _, ns in OPCODES.values() for op in ns)
# AN4221 2: on I2C these answer BUSY while they run instead of stretching SCL
BUSY_POLLED = frozenset(_NO_STRETCH + (GET_CHECKSUM,))

# AN3155 2 (Table 2): the V3.x command list; V2.x offers ERASE instead of EXTENDED_ERASE
_UART_BASE = (GET, GET_VERSION, GET_ID, READ_MEMORY, GO, WRITE_MEMORY, WRITE_PROTECT,
              WRITE_UNPROTECT, READOUT_PROTECT, READOUT_UNPROTECT)
# AN4221 2 (Table 2): the V1.0 set; V1.1 adds the no-stretch variants, V1.2 Get Checksum
_I2C_BASE = _UART_BASE + (EXTENDED_ERASE,)


def command_set(iface: str, version: int) -> tuple[int, ...]:
    """Opcodes a bootloader of this interface ("uart"/"i2c") and version lists in GET."""
    if iface == "uart":
        erase = (EXTENDED_ERASE,) if version >= 0x30 else (ERASE,)
        extra = (GET_CHECKSUM,) if version >= 0x33 else ()  # AN3155 3.13: from V3.3
        return tuple(sorted(_UART_BASE + erase + extra))
    ops = _I2C_BASE
    if version >= 0x11:
        ops += _NO_STRETCH
    if version >= 0x12:
        ops += (GET_CHECKSUM,)
    return tuple(sorted(ops))


# How many commands an I2C bootloader's GET lists per protocol version (11, 17 or 18): the
# host must know the frame length before reading it (stm32flash stm32_guess_len_cmd).
I2C_GET_N: dict[int, int] = {v: len(command_set("i2c", v)) for v in (0x10, 0x11, 0x12)}

# ---- erase (AN3155 3.7-3.8, AN4221 2.7) ------------------------------------------------------

MAX_ERASE_PAGES = 512  # AN4221 2.7: at most 512 pages in one erase command
ERASE_GLOBAL = 0xFFFF  # EXTENDED_ERASE special codes: the whole flash,
ERASE_BANK1 = 0xFFFE  # bank 1,
ERASE_BANK2 = 0xFFFD  # bank 2;
ERASE_SPECIAL = 0xFFF0  # this and above are special codes (0xFFFC..0xFFF0 reserved)
ERASE_GLOBAL_N = 0xFF  # ERASE (0x43): N = 0xFF followed by 0x00 is the global erase


def xor(data: Iterable[int]) -> int:
    """XOR of all bytes: the checksum every AN3155/AN4221 packet ends with."""
    return reduce(lambda a, b: a ^ b, data, 0)


def with_xor(data: bytes) -> bytes:
    """`data` followed by its XOR checksum byte, as sent on the wire."""
    return data + bytes([xor(data)])


def pick_opcodes(offered: Sequence[int], no_stretch: bool) -> dict[str, int]:
    """Map function names to the opcode to use, from GET's list and the link's preference."""
    chosen: dict[str, int] = {}
    for name, (std, ns) in OPCODES.items():
        for op in (ns + std if no_stretch else std + ns):
            if op in offered:
                chosen[name] = op
                break
    return chosen


# ---- CRC of Get Checksum ---------------------------------------------------------------------

CRC_POLY = 0x04C11DB7  # the STM32 CRC unit's reset configuration (see the module docstring)
CRC_INIT = 0xFFFFFFFF


@lru_cache(maxsize=8)
def _table(poly: int) -> tuple[int, ...]:
    """MSB-first (non-reflected) CRC-32 table for one polynomial."""
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


def stm32_crc32(data: bytes, *, poly: int = CRC_POLY, init: int = CRC_INIT) -> int:
    """CRC of `data` (a multiple of 4 bytes) exactly as the STM32 CRC unit computes it."""
    if len(data) % 4:
        raise UsageError(
            f"STM32 CRC works on whole 32-bit words; got {len(data)} bytes "
            "(pad the range to a multiple of 4)", code="crc_length")
    table = _table(poly & 0xFFFFFFFF)
    crc = init & 0xFFFFFFFF
    view = memoryview(bytes(data))
    for i in range(0, len(view), 4):
        # the word is stored little-endian but the unit shifts it in MSB first
        for byte in (view[i + 3], view[i + 2], view[i + 1], view[i]):
            crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ byte) & 0xFF]
    return crc
