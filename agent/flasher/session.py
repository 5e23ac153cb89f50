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

from agent.errors import (BootConfigError, ChipMismatch, LinkError, NoBootloader, ProtocolError,
                          ReadProtected, StillInBootloader, UsageError)
from agent.flasher.execute import write_memory
from agent.flasher.facts import ChipFacts
from agent.flasher.target import Target, UartSettings
from agent.link import I2CBus, Link, baud_rates, open_link
from agent.link.uart import UartLink
from agent.pins import Backend, Pins, Step, open_pins
from agent.pins.modem import released_states
from agent.stm32.bootloader import Bootloader, BootloaderInfo
from agent.stm32.chips import Chip, lookup
from agent.stm32.options import UserOptions
from agent.stm32.ramcode import clear_empty_latch

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]


def _open_link(target: Target, i2c_bus: Optional[I2CBus]) -> Link:
    """Open the serial port or I2C bus the target names, or the bus object handed in."""
    link = target.link
    if isinstance(link, UartSettings):
        if i2c_bus is not None:
            raise UsageError(f"an I2C bus was handed in for the UART target {link.describe()}",
                             code="link_choice")
        p = target.pins
        lines = released_states(p.nrst, p.boot0) if p.backend == "modem" else {}
        return open_link(port=link.port, baud=baud_rates(link.baud)[0], parity=link.parity,
                         inter_byte_delay=link.inter_byte_delay, modem_lines=lines)
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
    baud: Optional[int] = None  # the UART rate the bootloader answered at (`baud: auto`)
    options: Optional[UserOptions] = None  # the user option word that decides BOOT0


@dataclass
class Session:
    """An identified bootloader on an open link, with the pins that control the chip."""

    link: Link
    pins: Pins
    bl: Bootloader
    info: BootloaderInfo
    chip: Chip
    facts: ChipFacts  # read-out protection, flash size, options...: read when first asked
    exit_sequence: tuple[Step, ...] = ()
    target: Optional[Target] = None
    sleep: Sleep = time.sleep

    @property
    def read_protected(self) -> bool:
        """Read-out protection is active (the session's first READ was refused)."""
        return self.facts.read_protected

    @property
    def flash_size(self) -> int:
        """Bytes of flash (the flash-size register where the chip has one)."""
        return self.facts.flash_size

    @property
    def blank_at_entry(self) -> bool:
        """The first flash word read 0xFFFFFFFF at entry (parts with an empty check)."""
        return self.facts.blank_at_entry

    @property
    def dual_bank(self) -> Optional[bool]:
        """Bank mode from the option bytes (Chip.dual_bank_from)."""
        return self.facts.dual_bank

    @property
    def options(self) -> Optional[UserOptions]:
        """The user option word that decides BOOT0."""
        return self.facts.options

    def identity(self) -> Identity:
        """The chip's identity, to keep after the session is closed."""
        return Identity(self.info, self.chip, self.flash_size, self.read_protected,
                        self.facts.bootloader_id(), getattr(self.link, "baud", None),
                        self.options)

    def reenter(self) -> None:
        """Reset into the bootloader again with the target's entry sequence, and connect:
        the same chip, and reads known to be allowed stay allowed (RDP did not change)."""
        assert self.target is not None
        granted = self.bl.read_granted
        info = _enter(self.link, self.pins, self.bl, self.target, self.sleep)
        if info.pid != self.info.pid:
            raise ChipMismatch(f"after a reset {self.target.describe()} answered as chip "
                               f"0x{info.pid:03x}, not 0x{self.info.pid:03x}: check the wiring")
        self.info = info
        self.bl.read_granted = granted or not self.read_protected

    def start_application(self, address: Optional[int] = None) -> str:
        """Leave the bootloader, then check that the chip no longer answers as the bootloader.

        Returns how: "reset", "go", or "latch+reset" (empty-check flag cleared by a RAM
        routine, which then resets). StillInBootloader when the chip stays in the ROM.
        """
        how = self._leave(address)
        if self._bootloader_answers():
            if how == "reset" and self.chip.empty_check and not self._latch_routine():
                # the flag cannot be cleared in software (Chip.empty_flag ""): it may be the
                # empty check of the last power-on that brought us back; GO still starts it
                log.warning("%s came back to its bootloader after the reset: its empty-check "
                            "flag stays set until a power cycle; starting it with GO",
                            self.chip.name)
                how = self._go(self.chip.flash_start)
                if not self._bootloader_answers():
                    return how
            raise StillInBootloader(self._still_message(how))
        return how

    def _leave(self, address: Optional[int]) -> str:
        """Reset into the application where we can; GO where we cannot or are asked to."""
        nrst, boot0 = self.pins.can_reset, "boot0" in self.pins.available
        routine = self._latch_routine(reset=not nrst) if address is None else None
        if routine is not None and (nrst or boot0):
            # stm32flash stm32_reset_device: fix the latch from RAM (ramcode.py); it then spins
            # until our reset, or resets itself (with BOOT0 released) when NRST is not wired
            if not nrst:
                self._release_boot0()
            retries = self.target.write_retries if self.target else 3
            write_memory(self.bl, self.chip.ram_start, routine, retries=retries)
            self.bl.go(self.chip.ram_start)
            log.info("empty-check flag of %s set from the flash contents", self.chip.name)
            if not nrst:
                return "reset"
        empty_trap = self.blank_at_entry and self.chip.empty_check and routine is None
        if address is None and nrst and not empty_trap:
            self.pins.exit_bootloader(self.exit_sequence or None)
            return "reset"
        return self._go(self.chip.flash_start if address is None else address)

    def _go(self, address: int) -> str:
        self._release_boot0()
        # AN3155 3.5: GO jumps to the vector table at the address (stack pointer, reset vector)
        self.bl.go(address)
        return "go"

    def _release_boot0(self) -> None:
        if "boot0" in self.pins.available:
            self.pins.run(["boot0 low"], "release BOOT0")

    def _latch_routine(self, reset: bool = False) -> Optional[bytes]:
        """The RAM routine that clears this chip's empty-check flag, if it has one and room."""
        if not self.chip.empty_flag:
            return None
        image = clear_empty_latch(self.chip.empty_flag, self.chip.flash_start,
                                  self.chip.ram_start, self.chip.ram_end, reset=reset)
        return image if self.chip.ram_end - self.chip.ram_start >= len(image) else None

    def _bootloader_answers(self) -> bool:
        """True when the ROM bootloader answers a fresh connect (sync, GET, GET_ID) again."""
        timeouts = self.bl.timeouts
        self.sleep(timeouts.reset_settle)  # the reset and the ROM's start take a moment
        try:
            info = self.bl.connect()
        except (LinkError, ProtocolError) as err:
            log.debug("no bootloader answer after leaving (%s): the application runs", err)
            return False
        return info.pid == self.info.pid

    def _still_message(self, how: str) -> str:
        where = "the reset" if how != "go" else "GO"
        text = (f"{self.chip.name} still answers as the ROM bootloader after {where}: the "
                f"application is not running. ")
        opts = self.options
        if opts is not None and not opts.pin_used:
            return text + (f"The option bytes make it ignore the BOOT0 pin ({opts.select_bit}"
                           f", {opts.boot0_source}); run `stm32ota option-bytes "
                           f"--boot-from-pin` with the same link and pin options")
        if "boot0" not in self.pins.available:
            return text + ("BOOT0 is not driven by stm32ota: make sure it is low (pull-down) "
                           "when the chip resets, or configure the boot0 pin")
        return text + ("Check that the BOOT0 pin really goes low (wiring, pin polarity "
                       "`active_low`) and, on parts with an empty check, power-cycle the board")


def refuse_if_boot0_ignored(s: Session) -> None:
    """BootConfigError when entering with the BOOT0 pin will not work once flash is written.

    G0/C0 leave the factory with nBOOT_SEL=1 (AN2606 pattern 11): only an empty flash
    reaches the ROM, so the first flash works and every later one finds no bootloader.
    """
    if "boot0" not in s.pins.available:
        return  # not asked before: without a BOOT0 pin the option bytes are not read
    opts = s.options
    if opts is None or opts.pin_used:
        return
    after = ("the bootloader could not be entered again" if opts.nboot0 else
             "the chip would always start its bootloader, never the application")
    raise BootConfigError(
        f"{s.chip.name} ignores the BOOT0 pin: {opts.register} 0x{opts.value:08X} at "
        f"0x{opts.address:08X} selects {opts.boot0_source} ({opts.select_bit}); after this "
        f"flash {after}. Nothing was written. Fix: `stm32ota option-bytes --boot-from-pin` "
        f"with the same link and pin options lets the pin decide, then flash again")


def reload_options(s: Session, area: bytes) -> Optional[UserOptions]:
    """Write the option area (one WRITE_MEMORY from its start), reconnect, read them back.

    AN3155 3.6 / AN4221 2.6: the bootloader ACKs, then reloads the options, which resets the
    chip (OpenBL: ACK first, then OPENBL_OB_Launch); we enter the bootloader again.
    """
    if len(area) > s.link.caps.max_write:
        raise UsageError(f"the option area of {s.chip.name} ({len(area)} bytes) does not fit "
                         f"one write on this link ({s.link.caps.max_write})", code="bad_length")
    s.bl.write_memory(s.chip.option_start, area)
    assert s.target is not None
    s.sleep(s.bl.timeouts.reset_settle)
    s.info = _enter(s.link, s.pins, s.bl, s.target, s.sleep)
    return s.facts.reload_options()


def _rates(target: Target, pins: Pins) -> tuple[Optional[int], ...]:
    """The UART rates to try in turn (`baud: auto` steps down); (None,) for I2C."""
    if not isinstance(target.link, UartSettings):
        return (None,)
    rates = baud_rates(target.link.baud)
    if len(rates) > 1 and not pins.can_reset:
        # the ROM keeps the rate it measured on the first 0x7F until the next reset
        log.info("baud auto: without NRST/BOOT0 pins the bootloader cannot be restarted at a "
                    "lower rate; trying %d baud only", rates[0])
        return rates[:1]
    return rates


def _enter(link: Link, pins: Pins, bl: Bootloader, target: Target,
           sleep: Sleep) -> BootloaderInfo:
    """Run the entry sequence and connect, at each rate `baud: auto` allows, fastest first."""
    rates = _rates(target, pins)
    for rate in rates:
        if rate is not None and isinstance(link, UartLink) and link.baud != rate:
            link.set_baud(rate)
        info = _connect(link, pins, bl, target, sleep)
        if info is not None:
            if len(rates) > 1:
                log.info("baud auto: the bootloader on %s answers at %d baud", target.describe(),
                         rate)
            return info
        if rate is not None and rate != rates[-1]:
            log.warning("no bootloader answer at %d baud; trying a lower rate (a ROM whose "
                        "autobaud is off, AN2606 4.5)", rate)
    hint = "check the wiring (TX and RX crossed, a common GND) and that BOOT0 is high at reset"
    if isinstance(target.link, UartSettings) and target.link.parity == "even":
        hint += ("; the bootloader needs 8 data bits with even parity, which a Raspberry Pi's "
                 "mini UART (ttyS0) and some USB adapters cannot send: use the PL011 (ttyAMA0)")
    if len(rates) > 1:
        hint += f"; tried {', '.join(str(r) for r in rates)} baud"
    if not pins.can_reset:
        hint += ("; no reset pins are configured, so put the chip in bootloader mode by hand "
                 "(BOOT0 high, then reset; `stm32ota sim`: kill -USR1 its process id)")
    raise NoBootloader(f"no answer from the STM32 bootloader on {target.describe()} after "
                       f"{target.connect_attempts} attempt"
                       f"{'' if target.connect_attempts == 1 else 's'}: {hint}")


def _connect(link: Link, pins: Pins, bl: Bootloader, target: Target,
             sleep: Sleep) -> Optional[BootloaderInfo]:
    """Reset into the bootloader and connect, `connect_attempts` times; None if it never answers."""
    attempts = target.connect_attempts
    for attempt in range(1, attempts + 1):
        pins.enter_bootloader(target.pins.enter or None)
        link.flush_input()
        try:
            return bl.connect()
        except (LinkError, ProtocolError) as err:
            if isinstance(err, ReadProtected):
                raise
            log.info("no bootloader answer on %s (attempt %d/%d): %s",
                     target.describe(), attempt, attempts, err)
            sleep(0.05 * attempt)
    return None


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
        session = _identify(link, pins, bl, info, target)
        session.sleep = sleep
        yield session
    finally:
        if pins is not None:
            pins.close()
        link.close()


def _identify(link: Link, pins: Pins, bl: Bootloader, info: BootloaderInfo,
              target: Target) -> Session:
    """Check the chip against the target's expect_chip; the rest is read when asked (facts.py)."""
    chip = lookup(info.pid)
    expect = target.expect_chip
    if expect is not None and info.pid != expect:
        raise ChipMismatch(f"expected chip 0x{expect:03x} but {target.describe()} "
                           f"answered 0x{info.pid:03x} ({chip.name}); check the target's "
                           f"expect_chip or the wiring")
    bl.size_erase_deadlines(chip.erase_ms, len(chip.page_table()))  # table: the largest part
    facts = ChipFacts(bl, chip)
    if chip.empty_check:
        facts.head()  # the empty check wants the flash as found, whatever is written later
    return Session(link=link, pins=pins, bl=bl, info=info, chip=chip, facts=facts,
                   exit_sequence=tuple(target.pins.exit), target=target)
