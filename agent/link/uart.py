"""UART link to the AN3155 bootloader through pyserial (device paths, ptys and pyserial URLs)."""

from __future__ import annotations

import errno
import logging
import os
import termios
import time
from typing import Callable, Mapping, Optional, Union

import serial

from agent.errors import LinkError, LinkTimeout, UsageError
from agent.link.base import Capabilities, trace

log = logging.getLogger(__name__)

# pyserial's per-read timeout stays fixed: changing it reconfigures the port (tcsetattr), which
# is slow and fails on some ptys; read() loops against its own deadline instead
_POLL = 0.02
_PARITIES = {"even": serial.PARITY_EVEN, "none": serial.PARITY_NONE}

# `baud: auto`: the rates tried, fastest first. AN2606 4.5 / Table 6: bootloaders that measure
# the 0x7F in software may be off by up to 5 % at 115200 (L4; F2/F4/F7 up to 6 %), beyond the
# 2.5 % AN3155 2 allows, and the error shrinks with the rate; a field report on an L431 (9 %
# off) worked only at 19200. The list stops there: a part needing less is broken, not slow.
AUTO_BAUDS = (115200, 57600, 38400, 19200)
Baud = Union[int, str]  # a rate in bit/s, or "auto"

# Linux devices.txt: char majors 136-143 are Unix98 pty slaves, 3 the legacy BSD ones. The pty
# driver keeps no parity (pty.c clears PARENB on every tcsetattr), like a mini UART, but nothing
# is on a wire there to lose it: the simulator is the one place 8N1 reaching an 8E1 chip is fine.
_PTY_MAJORS = frozenset({3, *range(136, 144)})

PARITY_HINT = ("the bootloader needs 8 data bits with even parity (AN3155 2); a Raspberry Pi's "
               "mini UART (ttyS0) has no parity at all: use the PL011 (ttyAMA0, e.g. "
               "dtoverlay=disable-bt or miniuart-bt in config.txt) or an adapter that does 8E1")


def baud_rates(baud: Baud) -> tuple[int, ...]:
    """The rates to try for a configured baud: the one given, or AUTO_BAUDS for "auto"."""
    if baud == "auto":
        return AUTO_BAUDS
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise UsageError(f"UART baud rate must be a positive number or auto, got {baud!r}",
                         code="bad_baud")
    return (baud,)


def _open_hint(port: str, exc: BaseException) -> str:
    """A person-facing reason why `port` could not be opened."""
    err = getattr(exc, "errno", None)
    text = str(exc).lower()
    if err in (errno.EACCES, errno.EPERM) or "permission" in text:
        return ("permission denied: add the user to the dialout group "
                "(sudo usermod -aG dialout $USER, then log in again)")
    if err == errno.ENOENT or "no such file" in text:
        return "no such device: check the port name and that the adapter is plugged in"
    if "exclusively lock" in text:  # pyserial's flock(LOCK_EX | LOCK_NB) of exclusive=True
        return "busy: another stm32ota holds this port (a running agent or a second command)"
    if err in (errno.EBUSY, errno.EAGAIN) or "busy" in text or "temporarily unavailable" in text:
        return "port is busy: another program (a serial console, getty, ModemManager) holds it"
    if isinstance(exc, termios.error):  # tcsetattr refused the settings, e.g. parity on a pty
        return ("the port refuses these line settings; a pseudo-terminal (the simulator) has no "
                "parity: use --parity none (parity: none in the config)")
    return "check the port name, that the adapter is present and that no other program uses it"


def _is_pty(fd: int) -> bool:
    """Whether fd is a pseudo-terminal slave (by device major, so symlinks do not matter)."""
    try:
        return os.major(os.fstat(fd).st_rdev) in _PTY_MAJORS
    except OSError:
        return False


def check_parity(attrs: list, port: str, is_pty: bool) -> bool:
    """Fail with `no_parity` unless tcgetattr's `attrs` show even parity, checked (INPCK).

    Returns True when even parity is in effect, False for a pty (which carries none).

    Linux's 8250 driver strips PARENB on a mini UART (UART_CAP_MINI, the Pi's ttyS0) without
    an error, and pyserial never reads back: 0x7F and ACK still pass (odd popcount: the
    parity bit looks like a stop bit), then data fails with a generic hint. A pty drops PARENB
    too and is let through (see _PTY_MAJORS).
    """
    iflag, cflag = attrs[0], attrs[2]
    even = bool(cflag & termios.PARENB) and not cflag & termios.PARODD \
        and not cflag & getattr(termios, "CMSPAR", 0)
    if not even and is_pty:
        log.debug("%s is a pty: it carries no parity, running 8N1 to the simulator", port)
        return False
    if not even:
        raise LinkError(f"{port} does not keep even parity (the driver dropped PARENB): "
                        f"{PARITY_HINT}", code="no_parity")
    if not iflag & termios.INPCK:
        raise LinkError(f"{port} does not check parity (INPCK is off after setting it): "
                        f"{PARITY_HINT}", code="no_parity")
    return True


class UartLink:
    """A serial port speaking 8 data bits, even parity (AN3155 2: 8E1) unless told otherwise."""

    def __init__(
        self,
        port: str,
        baud: int = 115200,
        parity: str = "even",
        inter_byte_delay: float = 0.0,
        *,
        modem_lines: Optional[Mapping[str, bool]] = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if parity not in _PARITIES:
            raise UsageError(f"UART parity {parity!r} is not one of: even, none", code="bad_parity")
        if baud <= 0:
            raise UsageError(f"UART baud rate must be positive, got {baud}", code="bad_baud")
        if inter_byte_delay < 0:
            raise UsageError(f"inter-byte delay must be >= 0 s, got {inter_byte_delay}",
                             code="bad_delay")
        self.port = port
        self.parity = parity
        self.inter_byte_delay = inter_byte_delay
        self._sleep = sleep
        self._clock = clock
        self._set_caps(baud)
        self.serial = self._open(port, baud, modem_lines or {})
        log.debug("opened %s at %d baud, parity %s", port, baud, parity)
        self._low_latency()

    def _set_caps(self, baud: int) -> None:
        self.baud = baud
        bits_per_byte = 11 if self.parity == "even" else 10  # start + 8 + parity + stop
        self.caps = Capabilities(
            byte_stream=True, needs_sync=True, version_extra_bytes=2,
            erase_count_checksum=False, no_stretch=False, polls_busy=False,
            max_read=256, max_write=256, line_bytes_per_s=baud / bits_per_byte,
        )

    def _open(self, port: str, baud: int, modem_lines: Mapping[str, bool]) -> serial.SerialBase:
        """Open exclusively, with RTS/DTR at their preset states from the first ioctl on."""
        try:
            # do_not_open: pyserial applies rts/dtr right after open(2) and before anything
            # else, so pins on the modem lines see their released level at once (the kernel
            # itself raises both lines on open; only an RC on NRST hides that microsecond)
            port_obj = serial.serial_for_url(
                port, do_not_open=True, baudrate=baud, bytesize=serial.EIGHTBITS,
                parity=_PARITIES[self.parity], stopbits=serial.STOPBITS_ONE, timeout=_POLL,
                write_timeout=5.0, exclusive=True)
            for line, asserted in modem_lines.items():
                setattr(port_obj, line, asserted)
            port_obj.open()
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            code = "port_busy" if "exclusively lock" in str(exc) else "port_unavailable"
            raise LinkError(f"cannot open serial port {port}: {_open_hint(port, exc)} ({exc})",
                            code=code) from exc
        try:
            self._check_line(port_obj)
        except LinkError:
            port_obj.close()
            raise
        return port_obj

    def _check_line(self, port_obj: serial.SerialBase) -> None:
        """Turn on parity checking and read the settings back: drivers drop what they cannot do."""
        fd = getattr(port_obj, "fd", None)
        self.parity_kept = False  # even parity read back in effect (`doctor` reports it)
        if self.parity != "even" or not isinstance(fd, int):
            return  # 8N1 asked for, or a pyserial URL (loop://, socket://) without termios
        try:
            attrs = termios.tcgetattr(fd)
            # pyserial clears INPCK: without it the driver hands over bytes with a parity error
            # as good data (stm32flash sets it). IGNPAR drops them instead of passing 0x00, so
            # a damaged reply comes up short and times out rather than reading as wrong data.
            attrs[0] |= termios.INPCK | termios.IGNPAR
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            self.parity_kept = check_parity(termios.tcgetattr(fd), self.port, _is_pty(fd))
        except termios.error as exc:
            raise LinkError(f"cannot configure serial port {self.port}: "
                            f"{_open_hint(self.port, exc)} ({exc})",
                            code="port_unavailable") from exc

    def set_baud(self, baud: int) -> None:
        """Switch the line rate (for `baud: auto`); the parity checks are applied again."""
        if baud <= 0:
            raise UsageError(f"UART baud rate must be positive, got {baud}", code="bad_baud")
        try:
            self.serial.baudrate = baud  # pyserial re-runs tcsetattr, clearing INPCK again
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            raise LinkError(f"{self.port} cannot run at {baud} baud ({exc})",
                            code="port_unavailable") from exc
        self._check_line(self.serial)
        self._set_caps(baud)
        log.debug("%s now at %d baud", self.port, baud)

    def _low_latency(self) -> None:
        """Ask the driver to pass short answers on at once (ASYNC_LOW_LATENCY, TIOCSSERIAL).

        Every command waits for a one-byte ACK; a USB adapter holds that back for its latency
        timer (FTDI: 16 ms by default; ftdi_sio drops it to 1 ms in low-latency mode). A pty,
        a PL011 or a pyserial URL has no such setting: that is fine, nothing to gain there.
        """
        setter = getattr(self.serial, "set_low_latency_mode", None)
        try:
            if setter is not None:
                setter(True)
        except (OSError, ValueError) as exc:
            log.debug("%s: no low-latency mode (%s)", self.port, exc)

    def write(self, data: bytes) -> None:
        """Send bytes; with inter_byte_delay, one byte at a time (the seed's ESP32 quirk)."""
        trace(self.port, ">", data)
        try:
            if self.inter_byte_delay <= 0:
                self.serial.write(data)
                return
            for i in range(len(data)):
                self.serial.write(data[i:i + 1])
                self.serial.flush()
                self._sleep(self.inter_byte_delay)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"write to {self.port} failed: {exc}") from exc

    def read(self, n: int, timeout: float) -> bytes:
        """Return exactly n bytes or raise LinkTimeout after `timeout` seconds."""
        buf = bytearray()
        deadline = self._clock() + timeout
        try:
            while len(buf) < n:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise LinkTimeout(
                        f"{self.port}: got {len(buf)} of {n} bytes within {timeout:.3g} s"
                        + (f" ({bytes(buf).hex(' ')})" if buf else ""))
                buf += self.serial.read(n - len(buf))
        except (serial.SerialException, OSError) as exc:
            if isinstance(exc, LinkTimeout):
                raise
            raise LinkError(f"read from {self.port} failed: {exc}") from exc
        trace(self.port, "<", bytes(buf))
        return bytes(buf)

    def flush_input(self) -> None:
        """Drop anything received but not read (e.g. a stray 0x00 after reset)."""
        try:
            self.serial.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"flushing {self.port} failed: {exc}") from exc

    def close(self) -> None:
        """Close the port (idempotent)."""
        try:
            self.serial.close()
        except (serial.SerialException, OSError):
            log.debug("closing %s failed", self.port, exc_info=True)

    def __repr__(self) -> str:
        return f"UartLink({self.port!r}, baud={self.baud}, parity={self.parity!r})"

    def __str__(self) -> str:
        return f"{self.port} ({self.baud} baud, parity {self.parity})"
