"""One bootloader session with one target: open link and pins, enter the bootloader, identify.

Every operation of `agent.flasher.ops` enters, identifies and leaves the bootloader this way:

    with open_session(target) as s:
        s.chip, s.info, s.flash_size, s.read_protected
        execute(plan(image, s.chip, flash_size=s.flash_size), s.bl)
        s.start_application()

A simulated chip is reached through the doors hardware uses: a pty path in the target's UART
settings, or an I2C bus object and a pin backend handed in (`i2c_bus`, `pin_backend`).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from agent.errors import (ChipMismatch, LinkError, NoBootloader, ProtocolError, ReadProtected,
                          UsageError)
from agent.flasher.target import Target, UartSettings
from agent.link import I2CBus, Link, open_link
from agent.pins import Backend, Pins, Step, open_pins
from agent.stm32.bootloader import Bootloader, BootloaderInfo
from agent.stm32.chips import Chip, lookup

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]


def _open_link(target: Target, i2c_bus: Optional[I2CBus]) -> Link:
    """Open the serial port or I2C bus the target names, or the bus object handed in."""
    link = target.link
    if isinstance(link, UartSettings):
        if i2c_bus is not None:
            raise UsageError(f"an I2C bus was handed in for the UART target {link.describe()}",
                             code="link_choice")
        return open_link(port=link.port, baud=link.baud, parity=link.parity,
                         inter_byte_delay=link.inter_byte_delay)
    return open_link(i2c_bus=link.bus if i2c_bus is None else i2c_bus, i2c_address=link.address,
                     read_chunk=link.read_chunk, write_chunk=link.write_chunk,
                     busy_poll=link.busy_poll)


@dataclass(frozen=True)
class Identity:
    """What entering the bootloader found out about the chip."""

    info: BootloaderInfo
    chip: Chip
    flash_size: int
    read_protected: bool
    bootloader_id: Optional[int] = None


@dataclass
class Session:
    """An identified bootloader on an open link, with the pins that control the chip."""

    link: Link
    pins: Pins
    bl: Bootloader
    info: BootloaderInfo
    chip: Chip
    flash_size: int
    read_protected: bool
    bootloader_id: Optional[int] = None
    exit_sequence: tuple[Step, ...] = ()
    blank_at_entry: bool = False  # the first flash word read 0xFFFFFFFF when we connected

    def identity(self) -> Identity:
        """The chip's identity, to keep after the session is closed."""
        if self.bootloader_id is None and not self.read_protected:
            # read here, not on entry: flashing does not need it (three round trips fewer)
            self.bootloader_id = _read_bootloader_id(self.bl, self.chip)
        return Identity(self.info, self.chip, self.flash_size, self.read_protected,
                        self.bootloader_id)

    def start_application(self, address: Optional[int] = None) -> str:
        """Leave the bootloader: reset with BOOT0 low where pins allow, else GO to `address`.

        A part with the empty check whose flash was blank when we came in may have booted the
        bootloader because of that (AN2606 boot patterns; the flag stays latched until the
        next power-on, RM0394 3.7.5), so a reset would land in the bootloader again: there the
        pins only release BOOT0 and GO starts the application. Returns "reset" or "go".
        """
        empty_trap = self.blank_at_entry and self.chip.empty_check
        if address is None and self.pins.can_reset and not empty_trap:
            self.pins.exit_bootloader(self.exit_sequence or None)
            return "reset"
        if "boot0" in self.pins.available:
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


def _enter(link: Link, pins: Pins, bl: Bootloader, target: Target,
           sleep: Sleep) -> BootloaderInfo:
    """Run the entry sequence and connect, retrying with a fresh reset each time."""
    last: Exception | None = None
    attempts = target.connect_attempts
    for attempt in range(1, attempts + 1):
        pins.enter_bootloader(target.pins.enter or None)
        link.flush_input()
        try:
            return bl.connect()
        except (LinkError, ProtocolError) as err:
            if isinstance(err, ReadProtected):
                raise
            last = err
            log.info("no bootloader answer on %s (attempt %d/%d): %s",
                     target.describe(), attempt, attempts, err)
            sleep(0.05 * attempt)
    hint = "check the wiring (TX and RX crossed, a common GND) and that BOOT0 is high at reset"
    if isinstance(target.link, UartSettings) and target.link.parity == "even":
        hint += ("; the bootloader needs 8 data bits with even parity, which a Raspberry Pi's "
                 "mini UART (ttyS0) and some USB adapters cannot send: use the PL011 (ttyAMA0)")
    if not pins.can_reset:
        hint += "; no reset pins are configured, so put the chip in bootloader mode by hand"
    log.debug("last connect error: %s", last)
    raise NoBootloader(f"no answer from the STM32 bootloader on {target.describe()} after "
                       f"{attempts} attempts: {hint}")


@contextmanager
def open_session(target: Target, *, i2c_bus: Optional[I2CBus] = None,
                 pin_backend: Optional[Backend] = None,
                 sleep: Sleep = time.sleep) -> Iterator[Session]:
    """Open link and pins, enter the bootloader, identify the chip; close everything after.

    `i2c_bus` replaces the target's /dev/i2c-N and `pin_backend` its configured pin backend
    (a simulator's bus and mock pins); the session closes the backend, not the bus.
    """
    link = _open_link(target, i2c_bus)
    pins = None
    try:
        p = target.pins
        pins = open_pins(p.backend if pin_backend is None else pin_backend, p.nrst, p.boot0,
                         chip=p.gpiochip, serial=getattr(link, "serial", None))
        bl = Bootloader(link, timeouts=target.timeouts, i2c_erase_nack=target.i2c_erase_nack)
        info = _enter(link, pins, bl, target, sleep)
        yield _identify(link, pins, bl, info, target)
    finally:
        if pins is not None:
            pins.close()
        link.close()


def _identify(link: Link, pins: Pins, bl: Bootloader, info: BootloaderInfo,
              target: Target) -> Session:
    """Check the chip against the target's expect_chip and read what the session reports."""
    chip = lookup(info.pid)
    expect = target.expect_chip
    if expect is not None and info.pid != expect:
        raise ChipMismatch(f"expected chip 0x{expect:03x} but {target.describe()} "
                           f"answered 0x{info.pid:03x} ({chip.name}); check the target's "
                           f"expect_chip or the wiring")
    protected = False
    try:
        flash_size = _read_flash_size(bl, chip)
    except ReadProtected:
        protected, flash_size = True, chip.flash_size
    bl.size_erase_deadlines(chip.erase_ms, len(chip.page_table()))  # table: the largest part
    blank = False if protected else _flash_blank(bl, chip)
    return Session(link=link, pins=pins, bl=bl, info=info, chip=chip, flash_size=flash_size,
                   read_protected=protected, exit_sequence=tuple(target.pins.exit),
                   blank_at_entry=blank)
