"""AN3155 (USART) / AN4221 (I2C) ROM bootloader client.

CONTRACT (filled in by the implementation; flash.py and cli.py code against these names):

    bl = Bootloader(link, timeouts=Timeouts(), clock=time.monotonic, sleep=time.sleep)
    info = bl.connect()            # sync if link needs it, GET_VERSION, GET, GET_ID -> BootloaderInfo
    bl.info                        # the BootloaderInfo of the last connect()
    bl.supports("checksum")        # by function name, picked from the GET reply
    bl.read_memory(addr, n)        # n <= link.caps.max_read (<= 256); raises ReadProtected on NACK
                                   # at the command when RDP is set
    bl.write_memory(addr, data)    # len <= link.caps.max_write, padded by caller to chip alignment
    bl.erase_pages(pages)          # list of page/sector numbers; split at 511 (0x44) / 255 (0x43)
    bl.mass_erase()                # 0x44 FFFF / 0x43 FF; Unsupported if not allowed
    bl.checksum(addr, length)      # CRC-32 (STM32 CRC unit) via 0xA1 in the layout of the link
    bl.go(addr)
    bl.readout_protect() / readout_unprotect() / write_unprotect()   # never called implicitly
    bl.close()

Every command goes through one choke point that sends opcode + complement, waits for ACK and
raises Nack / LinkTimeout; timeouts are named fields of Timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACK = 0x79
NACK = 0x1F
BUSY = 0x76  # AN4221: answer to a poll while a no-stretch command is still running
SYNC = 0x7F


@dataclass(frozen=True)
class Timeouts:
    """Deadlines in seconds per kind of operation (a page erase is not a byte read)."""

    sync: float = 0.5
    byte: float = 0.5  # ACK of an ordinary command or a short reply
    write_block: float = 1.0  # ACK after WRITE_MEMORY data
    erase_page: float = 5.0  # per page/sector in one erase command (F4 128 KiB sectors ~2 s)
    mass_erase: float = 35.0
    checksum: float = 5.0
    unprotect: float = 35.0  # readout unprotect mass-erases first
    busy_poll_interval: float = 0.002  # AN4221: host polls one byte until ACK/NACK


@dataclass(frozen=True)
class BootloaderInfo:
    """What the bootloader told us about itself on connect()."""

    version: int  # e.g. 0x31 for V3.1
    option_bytes: bytes  # UART GET_VERSION's two legacy bytes; b"" on I2C
    commands: tuple[int, ...] = field(default_factory=tuple)  # opcodes from GET, in order
    pid: int = 0  # product ID from GET_ID
