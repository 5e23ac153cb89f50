"""The simulator behind a pseudo-terminal, so any serial tool (stm32flash included) can use it.

The pty stays usable across clients: we hold our own slave fd open, so a client closing the
port does not hang up the master. Master and slave are raw (no echo, no CR/LF mangling).

Line emulation: every byte costs its line time (11 bits at the emulated baud, 8E1), and with a
turnaround `latency` each answer that follows bytes from the host waits that long before it
leaves, as a USB-serial adapter holds short answers until its latency timer runs out (FTDI's
default is 16 ms, AN232B-04). `stats` counts those round trips. Between clients the thread
sleeps in a blocking poll: an idle simulator costs no CPU.

The pty carries no parity and no rate, but the host's rate is in the termios the client set
(master and slave share one), which is what the clock-error fault needs: a ROM that measures
the 0x7F in software is off by up to 5 % at 115200 on an L4 and less at lower rates (AN2606
4.5 and Table 6), and a link works only within 2.5 % (AN3155 2). Past that the chip's answers
arrive with their last data bit in the wrong bit cell (the timing error grows along the
frame), for a share of the bytes that grows with the error until, at twice the tolerance,
every byte is wrong.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import termios
import threading
import tty
from dataclasses import dataclass
from typing import Any, Callable

from agent.errors import UsageError
from agent.sim.core import SimChip
from agent.sim.faults import Faults
from agent.stm32.chips import Chip

log = logging.getLogger(__name__)

_BITS_PER_BYTE = 11  # 8E1: start + 8 data + parity + stop (AN3155 1)
_TOLERANCE = 0.025  # AN3155 2: host and bootloader rates must agree within 2.5 %
_JITTER_AT = 115200  # AN2606 Table 6 states the autobaud error at this rate
_RATES = {getattr(termios, f"B{r}"): r for r in (1200, 2400, 4800, 9600, 19200, 38400, 57600,
                                                  115200, 230400, 460800, 921600)}


def garbled_share(clock_error_pct: float, rate: int) -> float:
    """Share of the chip's bytes that arrive wrong at `rate` for a clock error given at 115200."""
    error = abs(clock_error_pct) / 100 * rate / _JITTER_AT  # AN2606 4.5: shrinks with the rate
    return min(1.0, max(0.0, (error - _TOLERANCE) / _TOLERANCE))


@dataclass
class LineStats:
    """What crossed the emulated line: bytes each way and host -> chip -> host round trips."""

    bytes_in: int = 0
    bytes_out: int = 0
    round_trips: int = 0

    def summary(self) -> str:
        """One line for people."""
        return (f"{self.round_trips} round trips, {self.bytes_in} bytes in, "
                f"{self.bytes_out} bytes out")


class PtySim:
    """Runs a SimChip's UART on a pty; `path` is what serial tools open."""

    def __init__(self, sim: SimChip, link_path: str | None = None, *,
                 latency: float = 0.0) -> None:
        if latency < 0:
            raise UsageError(f"turnaround latency must be >= 0 s, got {latency}",
                             code="bad_latency")
        self.sim = sim
        self.link_path = link_path
        self.latency = latency
        self.stats = LineStats()
        self.path = ""
        self.slave_path = ""
        self._master = self._slave = -1
        self._wake_r = self._wake_w = -1
        self._heard = False  # host bytes arrived since the chip last answered
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._garble_debt = 0.0  # spreads the garbled share evenly over the bytes sent
        self._stray_zero = sim.faults.stray_zero

    def start(self) -> "PtySim":
        """Open the pty, make the symlink (if asked) and start serving."""
        self._master, self._slave = os.openpty()
        for fd in (self._master, self._slave):
            tty.setraw(fd)
        os.set_blocking(self._master, False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.slave_path = os.ttyname(self._slave)
        self.path = self.slave_path
        if self.link_path:
            self._make_link(self.link_path)
            self.path = self.link_path
        self.sim.add_reset_listener(self._on_reset)
        self._thread = threading.Thread(target=self._run, name="sim-pty", daemon=True)
        self._thread.start()
        log.info("simulated %s on %s", self.sim.chip.name, self.path)
        return self

    def _make_link(self, link: str) -> None:
        if os.path.lexists(link):
            if not os.path.islink(link):
                raise UsageError(f"{link} exists and is not a symlink; pick another --pty path",
                                 code="pty_path_exists")
            os.unlink(link)
        os.symlink(self.slave_path, link)

    def stop(self) -> None:
        """Stop serving, remove the symlink and close the pty."""
        self._stop.set()
        self._wake()
        if self._thread:
            self._thread.join(timeout=2)
        if self.link_path and os.path.islink(self.link_path) \
                and os.readlink(self.link_path) == self.slave_path:
            os.unlink(self.link_path)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = self._wake_r = self._wake_w = -1

    def __enter__(self) -> "PtySim":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self) -> None:
        """Interrupt the blocking select (stop, or the chip changed outside this thread)."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closing

    def _on_reset(self) -> None:
        """On reset, bytes the chip had not taken in yet are lost (and TX floats again)."""
        self._stray_zero = self.sim.faults.stray_zero
        try:
            while os.read(self._master, 4096):
                pass
        except OSError:
            pass
        self._wake()

    def _line_time(self, n: int) -> float:
        return n * _BITS_PER_BYTE / self.sim.baud if self.sim.realtime else 0.0

    def _run(self) -> None:
        # poll(), not select(): select() cannot watch a descriptor numbered 1024 or above, and a
        # bench serving hundreds of simulated chips from one process has such descriptors
        poller = select.poll()
        for fd in (self._master, self._wake_r):
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            data, wait = self.sim.uart_pop()
            if data:
                self._send(data)
                continue
            try:  # wait is None: nothing is due, sleep until the host or a wake-up comes
                ready = dict(poller.poll(None if wait is None else wait * 1000))
            except OSError:
                return
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 64)
                except OSError:
                    return
            if self._master in ready:  # POLLIN, or POLLHUP/POLLERR that the read reports
                self._receive()

    def _receive(self) -> None:
        with self.sim.lock:
            try:
                chunk = os.read(self._master, 4096)
            except (BlockingIOError, OSError):
                return
            generation = self.sim.generation
        self.stats.bytes_in += len(chunk)
        self._heard = True
        line = self._line_time(len(chunk))
        if line:
            self.sim.sleep(line)  # the bytes are still on the wire
        with self.sim.lock:
            if self.sim.generation == generation:
                self.sim.uart_receive(chunk)

    def host_rate(self) -> int:
        """The rate the client set on the port (the simulator's own when termios cannot say)."""
        try:
            return _RATES.get(termios.tcgetattr(self._slave)[4], self.sim.baud)
        except (termios.error, OSError):
            return self.sim.baud

    def _on_the_wire(self, data: bytes) -> bytes:
        """What the host receives: the clock-error and floating-TX faults applied."""
        out = bytearray(data)
        if self._stray_zero:
            self._stray_zero = False
            out[:0] = b"\x00"
        share = garbled_share(self.sim.faults.clock_error, self.host_rate())
        for i in range(len(out) if share else 0):
            self._garble_debt += share
            if self._garble_debt >= 1.0:
                self._garble_debt -= 1.0
                self.sim.note("fault", "clock-error", out[i])
                out[i] ^= 0x80  # the last data bit (LSB first) sampled in the parity cell
        return bytes(out)

    def _send(self, data: bytes) -> None:
        if self._heard:  # the host turned the line around: one round trip
            self._heard = False
            self.stats.round_trips += 1
            if self.latency:
                self.sim.sleep(self.latency)  # the adapter holds a short answer back
        data = self._on_the_wire(data)
        self.stats.bytes_out += len(data)
        line = self._line_time(len(data))
        if line:
            self.sim.sleep(line)
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                sent = os.write(self._master, view)
                view = view[sent:]
            except BlockingIOError:
                # nobody is reading the port: a real UART would overrun the host, drop it
                writable = select.poll()
                writable.register(self._master, select.POLLOUT)
                if not writable.poll(500):
                    log.warning("sim pty: host not reading, %d bytes dropped", len(view))
                    return
            except OSError:
                return


def serve_pty(path: str, chip: Chip, *, baud: int = 115200, realtime: bool = True,
              faults: Faults | None = None, stop_event: threading.Event | None = None,
              latency: float = 0.0,
              on_start: Callable[[], None] | None = None) -> LineStats:
    """Serve a simulated chip on a pty linked at `path` until stopped; return the line stats.

    Blocks until `stop_event` is set or (in the main thread) SIGTERM/SIGINT arrives. The
    standalone chip has no NRST wire: SIGUSR1 pulses NRST with BOOT0 high (a fresh bootloader
    that wants a new 0x7F). It starts in bootloader mode. `on_start` is called each time the
    application starts (GO, or a reset with BOOT0 low): the bootloader is silent from then on.
    """
    sim = SimChip(chip, baud=baud, realtime=realtime, faults=faults, boot0=True)
    stop = stop_event or threading.Event()
    pty = PtySim(sim, link_path=path, latency=latency)
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, lambda *_: stop.set())
        old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: sim.reset(boot0=True))
    pty.start()
    running = False
    try:
        while not stop.wait(0.25):  # signal handlers run in the main thread and end the wait
            started = sim.mode == "application"
            if started and not running and on_start is not None:
                on_start()
            running = started
    finally:
        pty.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return pty.stats
