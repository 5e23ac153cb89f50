"""UART link to the AN3155 bootloader through pyserial (device paths, ptys and pyserial URLs)."""

from __future__ import annotations

import errno
import logging
import termios
import time
from typing import Callable

import serial

from agent.errors import LinkError, LinkTimeout, UsageError
from agent.link.base import Capabilities

log = logging.getLogger(__name__)

# pyserial's per-read timeout stays fixed: changing it reconfigures the port (tcsetattr), which
# is slow and fails on some ptys; read() loops against its own deadline instead
_POLL = 0.02
_PARITIES = {"even": serial.PARITY_EVEN, "none": serial.PARITY_NONE}


def _open_hint(port: str, exc: BaseException) -> str:
    """A person-facing reason why `port` could not be opened."""
    err = getattr(exc, "errno", None)
    text = str(exc).lower()
    if err in (errno.EACCES, errno.EPERM) or "permission" in text:
        return ("permission denied: add the user to the dialout group "
                "(sudo usermod -aG dialout $USER, then log in again)")
    if err == errno.ENOENT or "no such file" in text:
        return "no such device: check the port name and that the adapter is plugged in"
    if err in (errno.EBUSY, errno.EAGAIN) or "busy" in text or "temporarily unavailable" in text:
        return "port is busy: another program (a serial console, getty, ModemManager) holds it"
    if isinstance(exc, termios.error):  # tcsetattr refused the settings, e.g. parity on a pty
        return ("the port refuses these line settings; a pseudo-terminal (the simulator) has no "
                "parity: use --parity none (parity: none in the config)")
    return "check the port name, that the adapter is present and that no other program uses it"


class UartLink:
    """A serial port speaking 8 data bits, even parity (AN3155 2: 8E1) unless told otherwise."""

    def __init__(
        self,
        port: str,
        baud: int = 115200,
        parity: str = "even",
        inter_byte_delay: float = 0.0,
        *,
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
        self.baud = baud
        self.parity = parity
        self.inter_byte_delay = inter_byte_delay
        self._sleep = sleep
        self._clock = clock
        bits_per_byte = 11 if parity == "even" else 10  # start + 8 + parity + stop
        self.caps = Capabilities(
            byte_stream=True, needs_sync=True, version_extra_bytes=2,
            erase_count_checksum=False, no_stretch=False, polls_busy=False,
            max_read=256, max_write=256, line_bytes_per_s=baud / bits_per_byte,
        )
        try:
            self.serial = serial.serial_for_url(
                port, baudrate=baud, bytesize=serial.EIGHTBITS, parity=_PARITIES[parity],
                stopbits=serial.STOPBITS_ONE, timeout=_POLL, write_timeout=5.0,
            )
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            raise LinkError(f"cannot open serial port {port}: {_open_hint(port, exc)} ({exc})",
                            code="port_unavailable") from exc
        log.debug("opened %s at %d baud, parity %s", port, baud, parity)
        self._low_latency()

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
