"""The simulated STM32: pins, boot mode, interface selection, timing and fault injection.

`SimChip` is the device. Transports (`pty.PtySim`, `i2c.SimI2CBus`) hand it what the host
sends and take what it answers; the command set itself lives in `bootrom.Bootrom`.

Boot rules (AN2606): NRST low holds the chip in reset (silent). On the NRST rising edge it
samples BOOT0: high -> system bootloader; low -> the application (silent on both bootloader
interfaces), except on parts with the empty check (`Chip.empty_check`: F0 0x442/0x445,
L41x-L46x, L4R/S, G0, C0, WL, ...) while the empty flag is set. The flag is sampled (first
flash word 0xFFFFFFFF) only at power-on and at an option-byte reload (after WP/WUP/RDP/RUP,
an option write, F0 OBL_LAUNCH), NOT at an NRST pulse or a system reset (stm32flash stm32.c
quoting RM0360 2.5 / RM0394 3.7.5; ST KB "Empty check": "simply resetting the device is not
enough"). So flashing a blank chip and pulsing NRST with BOOT0 low lands in the bootloader
again, until a power cycle (`power_cycle()`, or the pin "power" of `set_line`) or code run
from RAM changes the flag (cpu.py: L4 PEMPTY flip, G0/C0/WL FLASH_ACR bit 16, F0 OBL_LAUNCH).

Which level BOOT0 has is decided by the user option bytes as last loaded (memory.py): on a
factory G0/C0 nBOOT_SEL=1 makes the chip ignore the BOOT0 pin (AN2606 pattern 11), on
L4/G4/WL nSWBOOT0=0 does (patterns 6/13/14).

After a boot the first interface with activity wins until the next reset (AN2606 4.1): a UART
byte (0x7F expected: the autobaud measures it; any other first byte makes the bootloader lock
onto a wrong baud rate, so it stays deaf on UART until reset) or an I2C transaction at its
address. A parity-less (8N1) host is accepted: a pty cannot carry parity.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from agent.errors import MemoryRefused, SimFault, UsageError
from agent.sim.bootrom import Bootrom
from agent.sim.cpu import FlashRegs, run
from agent.sim.i2cside import I2cSide
from agent.sim.faults import Faults
from agent.sim.memory import RDP_LEVEL0, RDP_LEVEL1, SimMemory
from agent.stm32.chips import Chip
from agent.stm32.protocol import ACK, SYNC

log = logging.getLogger(__name__)

_MAX_EVENTS = 20000
# Code run from RAM (GO) is timed at the clock the core may be left on: AN3155 3.5 has the
# bootloader put the peripherals it used back to their reset values before the jump, and the
# slowest reset clock among the parts modelled is the L4's 4 MHz MSI (RM0394 6.2.3); the
# L432's bootloader itself runs at 60 MHz from the HSI (AN2606), which would be 15x faster.
CORE_HZ = 4e6
RAM_CODE_STEPS = 50_000_000  # a CRC routine over 2 MiB takes about 20 M instructions


@dataclass
class _Out:
    """One answer waiting to leave the chip."""

    ready: float  # chip time at which it can be sent
    data: bytearray
    no_stretch: bool = False  # I2C: polls before `ready` read BUSY instead of stretching
    busy_left: int = 0  # I2C no-stretch: BUSY answers still owed even when ready
    then: Callable[[], None] | None = None  # runs once the last byte has been sent


class SimChip(I2cSide):
    """A simulated STM32 that answers the ROM bootloader protocol on UART and I2C."""

    def __init__(self, chip: Chip, *, baud: int = 115200, realtime: bool = False,
                 faults: Faults | None = None, flash_size: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 boot0: bool = True, strict: bool = True, core_hz: float = CORE_HZ) -> None:
        self.chip = chip
        self.core_hz = core_hz  # what code run from RAM is timed at
        self.baud = baud
        self.realtime = realtime
        self.faults = faults if faults is not None else Faults()
        self.clock = clock
        self.sleep = sleep
        self.strict = strict  # False: pad short flash writes instead of NACKing them
        self.lock = threading.RLock()
        self.mem = SimMemory(chip, flash_size)
        self.flash = self.mem.flash
        if self.faults.read_protected:
            self.mem.options.data[0] = RDP_LEVEL1
        self.events: list[Any] = []
        self.mode = "reset"
        self.read_protected = False
        self._nrst, self._boot0 = True, boot0
        self._silent_left = self.faults.silent_resets
        self._reset_listeners: list[Callable[[], None]] = []
        self._ram_run: tuple[int, float, bytes] | None = None  # generation, end, RAM before
        self._rx_count = self._tx_count = self._write_count = self._read_count = 0
        self.generation = 0
        self._clear_io()
        self.empty_flag = self.mem.is_empty()
        self._boot("power-on")

    # -- events and pins --------------------------------------------------------------------

    def note(self, kind: str, *details: Any) -> None:
        """Record what happened (for tests and the log)."""
        self.events.append((kind, *details) if details else (kind,))
        if len(self.events) > _MAX_EVENTS:
            del self.events[:_MAX_EVENTS // 2]
        log.debug("sim %s %s", kind, details)

    def add_reset_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (under the chip lock) whenever the chip enters reset."""
        self._reset_listeners.append(callback)

    def set_line(self, name: str, high: bool) -> None:
        """Drive a pin ("nrst" or "boot0") to an electrical level; "power" switches the supply."""
        with self.lock:
            if name == "power":
                self._power(high)
            elif name == "boot0":
                self._boot0 = bool(high)
            elif name == "nrst":
                if not high and self._nrst:
                    self._nrst = False
                    if self.mode != "off":
                        self._enter_reset()
                elif high and not self._nrst:
                    self._nrst = True
                    if self.mode != "off":
                        self._boot("nrst")
            else:
                raise UsageError(f"unknown pin {name!r}; the chip has 'nrst', 'boot0' and "
                                 "'power'", code="bad_pin")

    def reset(self, boot0: bool = True) -> None:
        """Pulse NRST with BOOT0 at the given level."""
        with self.lock:
            self.set_line("boot0", boot0)
            self.set_line("nrst", False)
            self.set_line("nrst", True)

    def power_cycle(self) -> None:
        """Power off and on: RAM is lost and the empty-check flag is sampled again."""
        with self.lock:
            self._power(False)
            self._power(True)

    def _power(self, on: bool) -> None:
        if not on:
            self._enter_reset()
            self.mode = "off"
            self.mem.ram.data[:] = bytes(len(self.mem.ram.data))
            self.note("power", "off")
        elif self.mode == "off":
            self.mode = "reset"
            self.empty_flag = self.mem.is_empty()  # power-on reset samples the flag
            self._boot("power-on")

    def system_reset(self, *, obl: bool = False) -> None:
        """A reset from inside the chip (after RUP, an I2C timeout, ...); BOOT0 is sampled again.

        With `obl` it is the reset of an option-byte reload, which samples the empty flag.
        """
        with self.lock:
            self._enter_reset()
            if obl:
                self.note("option_reload")
                self.empty_flag = self.mem.is_empty()
            self._boot("system reset")

    def jump(self, addr: int) -> None:
        """GO: leave the bootloader and run code at `addr` (code in RAM is interpreted)."""
        with self.lock:
            self.note("go", addr)
            self._session = None
            self.mode = "application"
            if not self.mem.ram.holds(addr, 8):
                return
            if not self.realtime:
                self._run_ram(addr)
                return
            # in real time the core runs beside the bootloader's last answer (the GO ACK is
            # still on its way out) and a long routine does not hold up the line thread
            threading.Thread(target=self._run_ram_unless_reset, args=(addr, self.generation),
                             name="sim-core", daemon=True).start()

    def _reset_at(self, end: float, generation: int, obl: bool) -> None:
        self.sleep(max(0.0, end - self.clock()))
        with self.lock:
            if self.generation == generation:
                self._ram_run = None
                self.system_reset(obl=obl)

    def _run_ram_unless_reset(self, addr: int, generation: int) -> None:
        with self.lock:
            if self.generation == generation:
                self._run_ram(addr)

    def _run_ram(self, addr: int) -> None:
        regs = FlashRegs(self.chip.empty_flag)
        before, started = bytes(self.mem.ram.data), self.clock()
        try:
            out = run(self, regs, addr, max_steps=RAM_CODE_STEPS)
        except (SimFault, MemoryRefused) as err:
            self.note("hard_fault", str(err))  # the core locks up: silent until reset
            return
        self.note("ram_code", out.how)
        # the interpreter ran it at once; the chip takes cycles / core_hz. A reset before then
        # cuts it short: its RAM stores are dropped (silicon keeps those made before the
        # reset; a host must trust none of them without a done mark the routine writes last)
        end = started + self.op_time(out.cycles / self.core_hz)
        if end > started:
            self._ram_run = (self.generation, end, before)
        if out.how == "spinning":
            return
        if end - self.clock() > 0.001:  # the reset it asks for comes when it gets there
            threading.Thread(target=self._reset_at, args=(end, self.generation,
                                                          out.how == "obl_reset"),
                             name="sim-core-reset", daemon=True).start()
            return
        self._ram_run = None
        self.system_reset(obl=out.how == "obl_reset")

    def load_word(self, addr: int) -> int:
        """A 32-bit word of any readable memory, for code running on the chip."""
        for region in (self.mem.flash_region, self.mem.ram):  # the common cases, first
            off = addr - region.start
            if 0 <= off <= len(region.data) - 4:
                return int.from_bytes(region.data[off:off + 4], "little")
        return int.from_bytes(self.mem.read(addr, 4), "little")

    def store_word(self, addr: int, value: int) -> None:
        """Code running on the chip stores a RAM word."""
        if not self.mem.ram.holds(addr, 4):
            raise MemoryRefused(f"store to 0x{addr:08X} outside RAM", code="read_only")
        off = addr - self.mem.ram.start
        self.mem.ram.data[off:off + 4] = value.to_bytes(4, "little")

    def load_byte(self, addr: int) -> int:
        """A byte of any readable memory, for code running on the chip."""
        for region in (self.mem.flash_region, self.mem.ram):  # the common cases, first
            off = addr - region.start
            if 0 <= off < len(region.data):
                return region.data[off]
        return self.mem.read(addr, 1)[0]

    def store_byte(self, addr: int, value: int) -> None:
        """Code running on the chip stores a RAM byte."""
        if not self.mem.ram.holds(addr, 1):
            raise MemoryRefused(f"store to 0x{addr:08X} outside RAM", code="read_only")
        self.mem.ram.data[addr - self.mem.ram.start] = value

    def _clear_io(self) -> None:
        self._session: Bootrom | None = None
        self._iface: str | None = None
        self._uart_deaf = False
        self._silent = False
        self._quirk_nack = False
        self._out: deque[_Out] = deque()
        self._last_ready = 0.0
        self.busy_until = 0.0
        self._i2c_last = 0.0
        self._i2c_stalled = False  # an answer was read only in part (see _i2c_take)

    def _enter_reset(self) -> None:
        run, self._ram_run = self._ram_run, None
        if run is not None and run[0] == self.generation and self.clock() < run[1]:
            self.mem.ram.data[:] = run[2]
            self.note("ram_code_cut", round(run[1] - self.clock(), 6))
        self.mode = "reset"
        self.generation += 1
        self._clear_io()
        for callback in self._reset_listeners:
            callback()

    def _boot(self, cause: str) -> None:
        if not self._nrst:
            return
        self.read_protected = self.mem.rdp_byte != RDP_LEVEL0
        empty = self.chip.empty_check and self.empty_flag
        boot0 = self.mem.boot0_signal(self._boot0)
        self.mode = "bootloader" if boot0 or empty else "application"
        if cause == "nrst" and self._silent_left > 0:
            self._silent_left -= 1
            self._silent = True
        self.note("reset", cause, self.mode, "silent" if self._silent else "")

    # -- timing and output ------------------------------------------------------------------

    def op_time(self, seconds: float, *, erase: bool = False) -> float:
        """Simulated duration of an operation: real chip time only in realtime mode."""
        factor = self.faults.erase_factor if erase else 1.0
        if self.realtime:
            return seconds * factor
        return seconds * factor if factor != 1.0 else 0.0

    def emit(self, data: bytes, *, delay: float = 0.0, no_stretch: bool = False,
             then: Callable[[], None] | None = None) -> None:
        """Queue an answer; it leaves `delay` seconds after what is already queued."""
        out = bytearray(data)
        for i in range(len(out)):
            self._tx_count += 1
            if self.faults.corrupt_every and self._tx_count % self.faults.corrupt_every == 0:
                out[i] ^= 0x01
                self.note("fault", "corrupt", data[i])
        ready = max(self.clock(), self._last_ready) + delay
        self._last_ready = self.busy_until = ready
        self._out.append(_Out(ready, out, no_stretch, 1 if no_stretch else 0, then))

    def fault_write_nack(self) -> bool:
        """Count a WRITE_MEMORY data packet; True if the fault says to NACK this one."""
        self._write_count += 1
        n = self.faults.nack_every_write
        return bool(n) and self._write_count % n == 0

    def fault_read_nack(self) -> bool:
        """Count a READ_MEMORY command; True if the fault says to NACK this one."""
        self._read_count += 1
        n = self.faults.nack_every_read
        return bool(n) and self._read_count % n == 0

    def i2c_swallow_answer(self) -> None:
        """The L432 quirk: no final ACK; later reads return NACK until the next write."""
        self._quirk_nack = True
        self.note("fault", "i2c-erase-no-ack")

    def _dropped(self) -> bool:
        self._rx_count += 1
        n = self.faults.drop_every
        if n and self._rx_count % n == 0:
            self.note("fault", "drop")
            return True
        return False

    # -- UART -------------------------------------------------------------------------------

    def uart_receive(self, data: bytes) -> None:
        """Bytes arriving on the chip's USART RX pin."""
        with self.lock:
            for byte in data:
                self._uart_byte(byte)

    def _uart_byte(self, byte: int) -> None:
        if self.mode != "bootloader" or self._silent or self.chip.uart_version == 0:
            return
        if self._dropped() or self._iface == "i2c" or self._uart_deaf:
            return
        if self._iface is None:
            self._iface = "uart"
            if byte != SYNC:
                # AN2606 4.5: anything but 0x7F first makes the autobaud lock onto a wrong rate
                self._uart_deaf = True
                self.note("deaf", byte)
                return
            self._session = Bootrom(self, "uart")
            self.note("sync")
            self.emit(bytes([ACK]))  # AN3155 2.1: ACK after the 0x7F autobaud byte
            return
        if self.clock() < self.busy_until:
            self.note("overrun", byte)  # the bootloader does not read RX while it is busy
            return
        assert self._session is not None
        self._session.feed_byte(byte)

    def uart_pop(self) -> tuple[bytes, float | None]:
        """Bytes ready to leave TX now, and seconds until the next are due (None: nothing)."""
        with self.lock:
            now = self.clock()
            sent = bytearray()
            while self._out and self._out[0].ready <= now:
                item = self._out.popleft()
                sent += item.data
                if item.then:
                    item.then()
            wait = self._out[0].ready - now if self._out else None
            return bytes(sent), wait
