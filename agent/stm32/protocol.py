"""The STM32 CRC unit in its reset configuration, as the bootloader's Get Checksum uses it.

AN4221 2.20 / AN3155 3.13: the ROM bootloader runs the CRC peripheral in its default setup:
polynomial 0x04C11DB7, initial value 0xFFFFFFFF, 32-bit input words, no reflection, no final
XOR. The words are the little-endian words of memory, each fed MSB first. That makes it
CRC-32/MPEG-2 over the byte-swapped words; the client and the simulator share this one definition.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from agent.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_POLY = 0x04C11DB7
DEFAULT_INIT = 0xFFFFFFFF


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


def stm32_crc32(data: bytes, *, poly: int = DEFAULT_POLY, init: int = DEFAULT_INIT) -> int:
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
