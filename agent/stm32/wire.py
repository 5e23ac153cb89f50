"""The wire of the AN3155/AN4221 client: the command choke point, BUSY polling, sync.

Everything here is about getting bytes to and answers from the bootloader: `Timeouts`, and
`Wire`, the base of `Bootloader` that owns the one choke point (`_command`: opcode +
complement, then ACK, NACK -> `Nack`, silence -> `LinkTimeout`), the BUSY polling of
no-stretch commands (AN4221) and the 0x7F sync / resync of the USART bootloader (AN3155 2).
The protocol facts (answer bytes, opcodes, XOR) are in protocol.py; the operations (GET, READ,
WRITE, ERASE, ...) in bootloader.py.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from agent.errors import LinkTimeout, Nack, NoBootloader, ProtocolError, Unsupported, UsageError
from agent.link.base import Capabilities, Link
from agent.stm32.protocol import ACK, BUSY, NACK, SYNC, with_xor

log = logging.getLogger(__name__)


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
    reset_settle: float = 0.1  # after WP/WUP/RP/RUP the chip resets (AN3155 3.9-3.12)


@dataclass(frozen=True)
class BootloaderInfo:
    """What the bootloader told us about itself on connect()."""

    version: int  # e.g. 0x31 for V3.1
    option_bytes: bytes  # UART GET_VERSION's two legacy bytes; b"" on I2C
    commands: tuple[int, ...] = field(default_factory=tuple)  # opcodes from GET, in order
    pid: int = 0  # product ID from GET_ID


class Wire:
    """The link plus the choke point every bootloader command goes through."""

    def __init__(
        self,
        link: Link,
        timeouts: Timeouts = Timeouts(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.link = link
        self.timeouts = timeouts
        self._clock = clock
        self._sleep = sleep
        self.info: BootloaderInfo | None = None
        self._ops: dict[str, int] = {}
        self._listen_s = 0.0  # after a long command timed out: how long resync listens first
        # the last sync's answer: True ACK (a fresh bootloader), False NACK (one that was
        # already synced, so no reset happened in between: how `doctor` tests NRST)
        self.fresh_sync: bool | None = None

    @property
    def caps(self) -> Capabilities:
        """The link's capabilities now (a UART's line rate changes under `baud: auto`)."""
        return self.link.caps

    def _read(self, n: int, timeout: float, what: str) -> bytes:
        try:
            return self.link.read(n, timeout)
        except LinkTimeout as exc:
            raise LinkTimeout(f"{what}: no answer within {timeout:.3g} s ({exc})") from exc

    def _line_time(self, n: int) -> float:
        rate = self.caps.line_bytes_per_s
        return 2.0 * n / rate if rate else 0.0

    def _wait_ack(self, what: str, timeout: float) -> None:
        """Read the answer byte; on a BUSY-polling link poll while 0x76 (AN4221 2: no-stretch)."""
        deadline = self._clock() + timeout
        while True:
            remaining = max(deadline - self._clock(), 0.0)
            try:
                answer = self._read(1, remaining, what)[0]
            except LinkTimeout:
                self._listen_s = timeout  # the operation may still be running: see resync
                raise
            if answer == ACK:
                return
            if answer == NACK:
                raise Nack(f"{what}: bootloader answered NACK")
            if answer == BUSY and self.caps.polls_busy:
                if self._clock() >= deadline:
                    raise LinkTimeout(f"{what}: still BUSY after {timeout:.3g} s")
                self._sleep(self.timeouts.busy_poll_interval)
                continue
            raise ProtocolError(f"{what}: expected ACK, got 0x{answer:02X}")

    def _send(self, data: bytes, what: str, timeout: float | None = None) -> None:
        """Send one frame and wait for its ACK (default: the short `byte` deadline)."""
        self.link.write(data)
        self._wait_ack(what, self.timeouts.byte if timeout is None else timeout)

    def _op(self, name: str) -> int:
        if name not in self._ops:
            raise Unsupported(f"the bootloader does not offer {name.replace('_', ' ')} "
                              f"(GET listed {self._offered()})")
        return self._ops[name]

    def _offered(self) -> str:
        cmds = self.info.commands if self.info else ()
        return " ".join(f"{c:02X}" for c in cmds) or "nothing yet: call connect() first"

    def _command(self, opcode: int, what: str) -> None:
        """The choke point: send opcode + complement, wait for ACK, raise Nack/LinkTimeout."""
        log.debug("command 0x%02X %s", opcode, what.replace(f" (0x{opcode:02X})", ""))
        self._send(bytes([opcode, opcode ^ 0xFF]), what)

    def _address(self, addr: int, what: str) -> None:
        if not 0 <= addr <= 0xFFFFFFFF:
            raise UsageError(f"{what}: address 0x{addr:X} is not a 32-bit address",
                             code="bad_address")
        self._send(with_xor(struct.pack(">I", addr)), f"{what}: address 0x{addr:08X}")

    # ---- connection -----------------------------------------------------------------------

    def sync(self) -> None:
        """AN3155 2 / stm32flash init: 0x7F -> ACK; NACK means it was already synced."""
        # nothing may go out before the 0x7F: OpenBL's hardware autobaud measures the first
        # frame and is not re-armed after a wrong one (OpenBL usart_interface.c)
        self.link.flush_input()
        self.link.write(bytes([SYNC]))
        try:
            answer = self._sync_answer()
        except LinkTimeout:
            # the first 0x7F may have been taken as the first byte of a command: a second one
            # completes that command (wrong complement) and earns a NACK
            self.link.write(bytes([SYNC]))
            try:
                answer = self._sync_answer()
            except LinkTimeout as exc:
                raise NoBootloader(
                    f"no answer to 0x7F sync on {self.link}: check BOOT0/NRST wiring, TX/RX "
                    f"crossing, baud rate and that the chip is in its bootloader") from exc
        self.fresh_sync = answer == ACK
        if answer == NACK:
            log.info("sync answered NACK: the bootloader was already synced")
        elif answer != ACK:
            raise NoBootloader(f"sync answered 0x{answer:02X} instead of ACK: wrong baud rate or "
                               f"parity (the bootloader needs 8E1), or not the bootloader")

    def _sync_answer(self) -> int:
        """The answer to 0x7F, past one stray 0x00 in front of it.

        Until the bootloader configures its TX pin it floats (AN2606 4.3 asks for pull-ups on
        RX/TX); a line low then rising reads as one 0x00 (or a break) at the host just before
        the ACK. One is tolerated, not more: a stream of zeros is a wrong baud rate.
        """
        answer = self.link.read(1, self.timeouts.sync)[0]
        if answer == 0x00:
            log.debug("stray 0x00 before the sync answer (TX line floating before the ROM "
                      "drives it)")
            answer = self.link.read(1, self.timeouts.sync)[0]
        return answer

    def resync(self) -> None:
        """After a timeout mid-command: feed 0xFF until the bootloader awaits a new command."""
        self._listen_first()
        deadline = self._clock() + self.timeouts.sync * 20
        short = self.timeouts.byte / 5
        while not self._answered(b"\xff" * 16 if self.caps.byte_stream else b"\xff\x00", short):
            if self._clock() >= deadline:
                raise NoBootloader(f"bootloader on {self.link} did not come back after a "
                                   f"timeout: reset the chip into its bootloader")
        if not self.caps.byte_stream:
            return  # a frame that is not a command earns a NACK and leaves nothing pending
        # AN3155 2: a command is a byte and its complement; 0xFF 0xFF pairs are NACKed. After
        # the first answer one 0xFF may be pending: one more 0xFF either pairs it (NACK) or
        # becomes pending itself (silence), and then a second one surely pairs it.
        self._sleep(short)
        self.link.flush_input()
        if not self._answered(b"\xff", short) and not self._answered(b"\xff", self.timeouts.byte):
            raise NoBootloader(f"bootloader on {self.link} stopped answering during resync")
        self.link.flush_input()

    def _listen_first(self) -> None:
        """After a command timed out, wait as long again for its late answer, sending nothing.

        A chip still erasing does not read RX: a resync burst then overruns its USART, and the
        erase's late ACK would be taken for the answer to the burst.
        """
        listen, self._listen_s = self._listen_s, 0.0
        if not listen or not self.caps.byte_stream:
            return
        try:
            late = self.link.read(1, listen)[0]
            log.info("late answer 0x%02X to the command that timed out", late)
        except LinkTimeout:
            log.warning("no late answer within %.3g s; resyncing", listen)

    def _answered(self, filler: bytes, timeout: float) -> bool:
        """Send filler bytes; True once the bootloader answers anything (an ACK or NACK)."""
        try:
            # an I2C target that still stretches SCL (a part-read answer, a reset under way)
            # refuses the write itself
            self.link.write(filler)
            self.link.read(1, timeout)
        except LinkTimeout:
            return False
        return True

    def _get_frame(self, opcode: int, guess: int, what: str) -> bytes:
        """The N, data... read of an I2C GET-like answer whose length N the host must guess.

        AN4221 2.1: the answer is one read transaction; OpenBL serves exactly N+2 bytes, then
        waits for the host's NACK and STOP. A wrong guess either runs past the answer (the
        read fails) or leaves part of it unread (the bootloader keeps SCL stretched), so, as
        stm32flash's i2c_cmd_get_reply does: resync, ask again, read the length it gave.
        """
        try:
            frame = self._read(guess + 2, self.timeouts.byte, what)
        except LinkTimeout:
            log.debug("%s: reading %d bytes failed; asking for the length", what, guess + 2)
            self._ask_again(opcode, what)
            count = self._read(1, self.timeouts.byte, what)[0]
        else:
            count = frame[0]
            if count == guess:
                return frame
        log.debug("%s: N=%d, guessed %d: asking again", what, count, guess)
        self._ask_again(opcode, what)
        return self._read(count + 2, self.timeouts.byte, what)

    def _ask_again(self, opcode: int, what: str) -> None:
        self.resync()
        self._command(opcode, what)

    def _await_reset(self, what: str, wait: float, deadline: float) -> None:
        """After a command that resets the chip: listen `wait` s (bytes sent while it erases
        are lost, and on I2C a stretched bus helps nobody), then try to reach the bootloader
        again until `deadline` s from now: 0x7F sync on UART, a 0xFF 0x00 frame that earns a
        NACK on I2C (stm32flash's I2C resync)."""
        self._sleep(wait)
        end = self._clock() + deadline
        while True:
            try:
                if self.caps.needs_sync:
                    self.sync()
                    return
                if self._answered(b"\xff\x00", self.timeouts.byte):
                    return
                error: Exception = LinkTimeout("no answer to a 0xFF 0x00 frame")
            except (LinkTimeout, NoBootloader) as exc:
                error = exc
            if self._clock() >= end:
                raise NoBootloader(f"{what}: the chip did not come back within "
                                   f"{wait + deadline:.3g} s of its reset ({error})")
            self._sleep(self.timeouts.sync / 5)
