"""How the simulated bootloader takes in packets and sends answers (AN3155 USART, AN4221 I2C).

One session serves one interface from one boot. It is a generator driven by what the host
sends: a command handler does `data = yield n` to receive the next n bytes. On UART the bytes
are a stream; on I2C each host write is one frame, and a frame must hold exactly the packet the
protocol expects at that point (a short frame or extra bytes are answered with NACK). Any
`NackReason` a handler raises ends the command with a NACK. The handlers themselves are in
bootrom.py; the chip around the session (`Device`) is `SimChip` in core.py.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Generator, Protocol

from agent.errors import NackReason
from agent.sim.faults import Faults
from agent.sim.memory import SimMemory
from agent.stm32.chips import Chip
from agent.stm32.protocol import BUSY_POLLED, NACK, command_set, xor

log = logging.getLogger(__name__)

Gen = Generator[int, bytes, None]
Handler = Callable[[int], Gen]  # called with the opcode it serves


class Device(Protocol):
    """What a bootloader session needs from the simulated chip around it."""

    chip: Chip
    mem: SimMemory
    faults: Faults
    strict: bool
    read_protected: bool

    def note(self, kind: str, *details: Any) -> None:
        """Record what happened."""

    def emit(self, data: bytes, *, delay: float = 0.0, no_stretch: bool = False,
             then: Callable[[], None] | None = None) -> None:
        """Queue an answer."""

    def op_time(self, seconds: float, *, erase: bool = False) -> float:
        """Simulated duration of an operation."""

    def jump(self, addr: int) -> None:
        """GO: leave the bootloader."""

    def system_reset(self, *, obl: bool = False) -> None:
        """A reset from inside the chip."""

    def fault_write_nack(self) -> bool:
        """True if fault injection refuses this WRITE_MEMORY data packet."""

    def i2c_swallow_answer(self) -> None:
        """The L432 quirk: no final ACK after an I2C erase."""


class Framing:
    """The command loop of one boot: packets in, answers out, NACK on any refusal."""

    def __init__(self, chip: Device, iface: str, handlers: dict[int, Handler]) -> None:
        self.chip = chip
        self.mem = chip.mem
        self.iface = iface
        self.version = chip.chip.uart_version if iface == "uart" else chip.chip.i2c_version
        self.commands = ((iface == "i2c" and chip.faults.i2c_commands)
                         or command_set(iface, self.version))
        self.at_top = True
        self._handlers = handlers
        self._frame = bytearray()  # I2C: unread rest of the current frame
        self._buf = bytearray()  # UART: bytes received but not yet asked for
        self._gen = self._serve()
        self._want = next(self._gen)

    # -- transport side ---------------------------------------------------------------------

    def feed_byte(self, byte: int) -> None:
        """UART: one received byte."""
        self._buf.append(byte)
        while len(self._buf) >= self._want:
            chunk = bytes(self._buf[:self._want])
            del self._buf[:self._want]
            self._want = self._gen.send(chunk)

    def feed_frame(self, frame: bytes) -> None:
        """I2C: one complete write transaction."""
        self._frame = bytearray(frame)
        while self._frame:
            if len(self._frame) < self._want:
                self._violation(f"frame of {len(frame)} bytes where {self._want} were expected")
                return
            chunk = bytes(self._frame[:self._want])
            del self._frame[:self._want]
            self._want = self._gen.send(chunk)

    def _violation(self, why: str) -> None:
        """Abandon the command in progress and answer NACK."""
        self._frame.clear()
        self._gen.close()
        self._gen = self._serve()
        self._want = next(self._gen)
        self.chip.note("nack", None, why)
        self.chip.emit(bytes([NACK]))

    def emit(self, *units: bytes, then: Callable[[], None] | None = None) -> None:
        """Send an immediate answer; on I2C the frame must have been used up exactly.

        Each unit is one I2C read transaction: AN4221 2 and OpenBL (`OPENBL_I2C_GetCommand`
        and the others wait for the host's NACK and STOP after each part and serve the
        next one only at a new address match), so an ACK, a data block and the closing ACK
        are separate reads. On UART the units are simply consecutive bytes.
        """
        self._frame_used_up()
        if self.iface != "i2c":
            units = (b"".join(units),)
        for i, unit in enumerate(units):
            self.chip.emit(unit, then=then if i == len(units) - 1 else None)

    def answer(self, data: bytes, seconds: float, op: int, *, erase: bool = False,
               rest: bytes = b"", then: Callable[[], None] | None = None) -> None:
        """Final answer of an operation that takes `seconds` of simulated chip time;
        `rest` follows it as its own I2C read transaction (e.g. a CRC after its ACK)."""
        self._frame_used_up()
        no_stretch = self.iface == "i2c" and op in BUSY_POLLED
        if rest and self.iface != "i2c":
            data, rest = data + rest, b""
        self.chip.emit(data, delay=self.chip.op_time(seconds, erase=erase),
                       no_stretch=no_stretch, then=None if rest else then)
        if rest:
            self.chip.emit(rest, then=then)

    def _frame_used_up(self) -> None:
        if self.iface == "i2c" and self._frame:
            raise NackReason(f"frame carries {len(self._frame)} byte(s) more than the packet")

    # -- command loop -----------------------------------------------------------------------

    def _serve(self) -> Gen:
        while True:
            self.at_top = True
            op, comp = yield 2
            self.at_top = False
            try:
                if op ^ comp != 0xFF:
                    raise NackReason(f"command 0x{op:02X} with complement 0x{comp:02X}")
                if op not in self.commands:
                    raise NackReason(f"command 0x{op:02X} is not offered")
                yield from self._handlers[op](op)
            except NackReason as err:  # MemoryRefused included
                self._frame.clear()
                self.chip.note("nack", op, str(err))
                self.chip.emit(bytes([NACK]))

    def _unprotected(self) -> None:
        # AN3155 Table 2 note: with RDP active only Get, Get Version, Get ID (and Readout
        # Unprotect) are served; everything else is NACKed right after the command bytes
        if self.chip.read_protected:
            raise NackReason("read-out protection is active")

    def _word(self, what: str) -> Generator[int, bytes, int]:
        """Receive a 32-bit big-endian value and its XOR (an address or a parameter)."""
        raw = yield 5
        if xor(raw[:4]) != raw[4]:
            raise NackReason(f"{what} checksum mismatch")
        return int.from_bytes(raw[:4], "big")
