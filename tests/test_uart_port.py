"""Opening the serial port (issue 8, items 6 and 9): parity read back, exclusive, RTS/DTR preset.

Real ptys throughout. A pty is also what Linux gives us that behaves like the Pi's mini UART:
its driver clears PARENB on every tcsetattr (drivers/tty/pty.c), as the 8250 driver does for
UART_CAP_MINI. The one fake is the verdict "this is a pty", turned off where a test stands
a pty in for a mini UART.
"""

from __future__ import annotations

import os
import subprocess
import sys
import termios
import tty

import pytest
import serial

from agent.errors import LinkError
from agent.link import uart
from agent.link.uart import UartLink, check_parity
from agent.pins import PinSpec
from agent.pins.modem import released_states


@pytest.fixture
def pty_port():
    """A real pseudo-terminal: the slave path pyserial opens (the master end stays unread)."""
    master, slave = os.openpty()
    tty.setraw(master)
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def _attrs(port: str, cflag_on: int = 0, cflag_off: int = 0, iflag_on: int = 0) -> list:
    """The termios of a real tty, with flags changed the way a driver would leave them."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        attrs = termios.tcgetattr(fd)
    finally:
        os.close(fd)
    attrs[2] = (attrs[2] | cflag_on) & ~cflag_off
    attrs[0] |= iflag_on
    return attrs


def test_even_parity_on_a_pty_is_the_documented_exception_and_inpck_is_set(pty_port):
    link = UartLink(pty_port, parity="even")
    attrs = termios.tcgetattr(link.serial.fd)
    assert not attrs[2] & termios.PARENB  # the pty driver dropped it, as a mini UART does
    assert attrs[0] & termios.INPCK and attrs[0] & termios.IGNPAR  # checked, errors dropped
    link.set_baud(38400)  # pyserial's reconfigure clears INPCK: it must come back
    assert termios.tcgetattr(link.serial.fd)[0] & termios.INPCK
    link.close()


def test_a_port_that_drops_parity_fails_fast_with_no_parity(pty_port, monkeypatch):
    # a pty standing in for the mini UART: the kernel really strips PARENB on read-back
    monkeypatch.setattr(uart, "_is_pty", lambda fd: False)
    with pytest.raises(LinkError) as err:
        UartLink(pty_port, parity="even")
    assert err.value.code == "no_parity" and "PL011" in str(err.value)
    monkeypatch.undo()
    UartLink(pty_port, parity="even").close()  # the failed open released the port and lock


@pytest.mark.parametrize("cflag_on, cflag_off, iflag_on, ok", [
    (termios.PARENB, 0, termios.INPCK, True),  # 8E1, checked
    (0, termios.PARENB, termios.INPCK, False),  # mini UART: PARENB stripped
    (termios.PARENB | termios.PARODD, 0, termios.INPCK, False),  # odd parity
    (termios.PARENB, 0, 0, False),  # parity sent but never checked
])
def test_check_parity_reads_the_flags_a_driver_left(pty_port, cflag_on, cflag_off, iflag_on, ok):
    attrs = _attrs(pty_port, cflag_on, cflag_off | termios.PARODD * (not cflag_on & termios.PARODD),
                   iflag_on)
    if not iflag_on:
        attrs[0] &= ~termios.INPCK
    if ok:
        check_parity(attrs, "/dev/ttyS0", is_pty=False)
        return
    with pytest.raises(LinkError) as err:
        check_parity(attrs, "/dev/ttyS0", is_pty=False)
    assert err.value.code == "no_parity" and "ttyAMA0" in str(err.value)


def test_parity_none_is_not_checked(pty_port, monkeypatch):
    monkeypatch.setattr(uart, "_is_pty", lambda fd: False)
    UartLink(pty_port, parity="none").close()  # asked for 8N1: nothing to miss


def test_a_second_opener_hears_port_busy_not_no_bootloader(pty_port):
    first = UartLink(pty_port, parity="none")
    with pytest.raises(LinkError) as err:
        UartLink(pty_port, parity="none")
    assert err.value.code == "port_busy" and "another stm32ota holds this port" in str(err.value)
    # and from another process, through the command line
    run = subprocess.run([sys.executable, "-m", "agent", "info", "--port", pty_port,
                          "--parity", "none", "--baud", "115200"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "[port_busy]" in run.stderr, run.stderr
    first.close()
    UartLink(pty_port, parity="none").close()  # released with the first link


def test_modem_lines_are_preset_before_the_first_ioctl(pty_port, monkeypatch):
    # what pyserial applies right after open(2) (TIOCMBIS/BIC, which a pty refuses): record
    # the states at that moment instead
    seen: list[tuple[str, bool]] = []

    def dtr(self: serial.Serial) -> None:
        seen.append(("dtr", self._dtr_state))

    def rts(self: serial.Serial) -> None:
        seen.append(("rts", self._rts_state))

    monkeypatch.setattr(serial.Serial, "_update_dtr_state", dtr)
    monkeypatch.setattr(serial.Serial, "_update_rts_state", rts)
    # NRST straight on DTR (asserted low = pyserial True), BOOT0 straight on RTS (asserted high
    # = pyserial False): released means dtr False and rts True
    states = released_states(PinSpec("dtr"), PinSpec("rts"))
    assert states == {"dtr": False, "rts": True}
    UartLink(pty_port, parity="none", modem_lines=states).close()
    assert seen == [("dtr", False), ("rts", True)]


def test_released_states_follow_polarity_and_ignore_gpio_lines():
    assert released_states(PinSpec("DTR", active_low=False), None) == {"dtr": True}
    assert released_states(PinSpec(17), PinSpec(27)) == {}
