"""One bootloader session with one target: open link and pins, enter the bootloader, identify.

Shared by the command line and the agent's update pipeline so both enter, identify and leave
the bootloader the same way:

    with open_session(link_spec, pins_spec, expect_pid=0x435) as s:
        s.chip, s.info, s.flash_size, s.read_protected
        execute(plan(image, s.chip, flash_size=s.flash_size), s.bl)
        s.start_application()
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional
from contextlib import contextmanager

from agent.errors import ChipMismatch, LinkError, NoBootloader, ProtocolError, ReadProtected
from agent.link.base import Link
from agent.stm32.bootloader import Bootloader, BootloaderInfo, Timeouts
from agent.stm32.chips import Chip, lookup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSpec:
    """How to reach the bootloader: a UART (pyserial URL) or an I2C bus address."""

    type: str  # "uart" | "i2c"
    port: Optional[str] = None
    baud: int = 115200
    parity: str = "even"
    inter_byte_delay: float = 0.0
    bus: Any = None  # bus number, or an object with i2c_rdwr (the simulator's bus)
    address: int = 0x48
    read_chunk: int = 256
    write_chunk: int = 256
    busy_poll: float = 0.002

    def describe(self) -> str:
        """Human-readable name of the link for messages."""
        if self.type == "uart":
            return f"{self.port} at {self.baud} baud"
        return f"I2C bus {self.bus} address 0x{self.address:02x}"


@dataclass(frozen=True)
class PinsSpec:
    """NRST/BOOT0 wiring and the entry/exit sequences (MCU-pin terms, see agent.pins)."""

    backend: str = "none"
    chip: str = "/dev/gpiochip0"
    nrst: Any = None  # agent.pins.PinSpec
    boot0: Any = None
    enter: tuple = ()
    exit: tuple = ()
    listener: Optional[Callable[[str, bool], None]] = None  # mock backend: drives a simulator


# Mock pins named by their `chip` (config: `pins: {backend: mock, chip: NAME}`) drive the
# listener wired here, e.g. a simulator's SimChip.set_line: how a simulated chip stands in for
# hardware behind `--config PATH --target NAME`, with the target's own reset sequences.
MOCK_WIRING: dict[str, Callable[[str, bool], None]] = {}


def wire_mock_pins(chip: str, listener: Optional[Callable[[str, bool], None]]) -> None:
    """Connect mock pins on `chip` to `listener` (None disconnects them)."""
    if listener is None:
        MOCK_WIRING.pop(chip, None)
    else:
        MOCK_WIRING[chip] = listener


def open_link(spec: LinkSpec) -> Link:
    """Open the serial port or I2C bus the spec names."""
    from agent.link import open_link as open_any

    if spec.type == "uart":
        return open_any(port=spec.port, baud=spec.baud, parity=spec.parity,
                        inter_byte_delay=spec.inter_byte_delay)
    if spec.type == "i2c":
        return open_any(i2c_bus=spec.bus, i2c_address=spec.address, read_chunk=spec.read_chunk,
                        write_chunk=spec.write_chunk, busy_poll=spec.busy_poll)
    raise LinkError(f"unknown link type {spec.type!r}: use uart or i2c", code="usage")


@dataclass
class Session:
    """An identified bootloader on an open link, with the pins that control the chip."""

    link: Link
    pins: Any
    bl: Bootloader
    info: BootloaderInfo
    chip: Chip
    flash_size: int
    read_protected: bool
    bootloader_id: Optional[int] = None
    exit_sequence: tuple = field(default_factory=tuple)
    blank_at_entry: bool = False  # the first flash word read 0xFFFFFFFF when we connected

    def start_application(self, address: Optional[int] = None) -> str:
        """Leave the bootloader: reset with BOOT0 low where pins allow, else GO to `address`.

        A part with the empty check whose flash was blank when we came in may have booted the
        bootloader because of that (AN2606 boot patterns; the flag stays latched until the
        next power-on, RM0394 3.7.5), so a reset would land in the bootloader again: there the
        pins only release BOOT0 and GO starts the application. Returns "reset" or "go".
        """
        can_reset = self.pins is not None and self.pins.can_reset
        if address is None and can_reset and not (self.blank_at_entry and self.chip.empty_check):
            self.pins.exit_bootloader(self.exit_sequence or None)
            return "reset"
        if self.pins is not None and "boot0" in self.pins.available:
            self.pins.run(["boot0 low"], "release BOOT0")
        # AN3155 3.6: GO jumps to the vector table at the address (stack pointer, reset vector).
        self.bl.go(self.chip.flash_start if address is None else address)
        return "go"


def _read_flash_size(bl: Bootloader, chip: Chip) -> int:
    """The flash-size register (KiB) where the table knows it and the chip lets us read it."""
    if chip.flash_size_reg is None:
        return chip.flash_size
    try:
        raw = bl.read_memory(chip.flash_size_reg, 2)
    except ProtocolError as err:
        log.debug("flash-size register not readable (%s); using the table's %d KiB",
                  err, chip.flash_size // 1024)
        return chip.flash_size
    kib = int.from_bytes(raw[:2], "little")
    if kib == 0 or kib == 0xFFFF or kib * 1024 > chip.flash_size:
        log.warning("flash-size register says %d KiB, outside what %s can have; using %d KiB",
                    kib, chip.name, chip.flash_size // 1024)
        return chip.flash_size
    return kib * 1024


def _flash_blank(bl: Bootloader, chip: Chip) -> bool:
    """True when the first flash word is erased: what the empty check looks at (AN2606)."""
    if not chip.empty_check:
        return False
    try:
        return bl.read_memory(chip.flash_start, 4) == b"\xff" * 4
    except ProtocolError:
        return False


def _read_bootloader_id(bl: Bootloader, chip: Chip) -> Optional[int]:
    if chip.bootloader_id_addr is None:
        return None
    try:
        return bl.read_memory(chip.bootloader_id_addr, 1)[0]
    except ProtocolError:
        return None


def _enter(link: Link, pins: Any, bl: Bootloader, spec: LinkSpec, attempts: int,
           enter: tuple, sleep: Callable[[float], None]) -> BootloaderInfo:
    """Run the entry sequence and connect, retrying with a fresh reset each time."""
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        if pins is not None:
            pins.enter_bootloader(enter or None)
        link.flush_input()
        try:
            return bl.connect()
        except (LinkError, ProtocolError) as err:
            if isinstance(err, ReadProtected):
                raise
            last = err
            log.info("no bootloader answer on %s (attempt %d/%d): %s",
                     spec.describe(), attempt, attempts, err)
            sleep(0.05 * attempt)
    hint = "check the wiring (TX and RX crossed, a common GND) and that BOOT0 is high at reset"
    if spec.type == "uart" and spec.parity == "even":
        hint += ("; the bootloader needs 8 data bits with even parity, which a Raspberry Pi's "
                 "mini UART (ttyS0) and some USB adapters cannot send: use the PL011 (ttyAMA0)")
    if pins is None or not getattr(pins, "can_reset", False):
        hint += "; no reset pins are configured, so put the chip in bootloader mode by hand"
    log.debug("last connect error: %s", last)
    raise NoBootloader(f"no answer from the STM32 bootloader on {spec.describe()} after "
                       f"{attempts} attempts: {hint}")


@contextmanager
def open_session(link_spec: LinkSpec, pins_spec: PinsSpec | None = None, *,
                 expect_pid: Optional[int] = None, timeouts: Timeouts | None = None,
                 attempts: int = 3, bootloader_options: dict | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> Iterator[Session]:
    """Open link and pins, enter the bootloader, identify the chip; close everything after."""
    from agent.pins import open_pins

    pins_spec = pins_spec or PinsSpec()
    listener = pins_spec.listener
    if listener is None and pins_spec.backend == "mock":
        listener = MOCK_WIRING.get(pins_spec.chip)
    link = open_link(link_spec)
    pins = None
    try:
        pins = open_pins(pins_spec.backend, pins_spec.nrst, pins_spec.boot0,
                         chip=pins_spec.chip, serial=getattr(link, "serial", None),
                         listener=listener)
        bl = Bootloader(link, timeouts=timeouts or Timeouts(), **(bootloader_options or {}))
        info = _enter(link, pins, bl, link_spec, attempts, pins_spec.enter, sleep)
        chip = lookup(info.pid)
        if expect_pid is not None and info.pid != expect_pid:
            raise ChipMismatch(f"expected chip 0x{expect_pid:03x} but {link_spec.describe()} "
                               f"answered 0x{info.pid:03x} ({chip.name}); check the target's "
                               f"expect_chip or the wiring")
        protected = False
        try:
            flash_size = _read_flash_size(bl, chip)
        except ReadProtected:
            protected, flash_size = True, chip.flash_size
        bl.size_erase_deadlines(chip.erase_ms, len(chip.page_table()))  # table: the largest part
        bid = None if protected else _read_bootloader_id(bl, chip)
        blank = False if protected else _flash_blank(bl, chip)
        yield Session(link=link, pins=pins, bl=bl, info=info, chip=chip, flash_size=flash_size,
                      read_protected=protected, bootloader_id=bid,
                      exit_sequence=tuple(pins_spec.exit), blank_at_entry=blank)
    finally:
        if pins is not None:
            pins.close()
        link.close()
