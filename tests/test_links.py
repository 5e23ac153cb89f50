"""UartLink over real ptys / pyserial URLs, I2cLink over a strict fake bus (the only mock)."""

from __future__ import annotations

import errno
import os
import termios
import time
import tty

import pytest
from smbus2 import i2c_msg

from agent.errors import LinkError, LinkTimeout, UsageError
from agent.link import open_link
from agent.link.i2c import I2cLink
from agent.link.uart import UartLink, _open_hint


@pytest.fixture
def pty_pair():
    """A real pseudo-terminal: (slave path for pyserial, master fd for the test's far end)."""
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    yield path, master
    os.close(master)
    os.close(slave)


def test_uart_caps_follow_parity_and_baud(pty_pair):
    even = UartLink(pty_pair[0], baud=115200)
    assert even.caps.line_bytes_per_s == pytest.approx(115200 / 11)
    assert even.serial.parity == "E"
    assert even.caps.byte_stream and even.caps.needs_sync and even.caps.version_extra_bytes == 2
    assert not even.caps.polls_busy and not even.caps.erase_count_checksum
    assert even.caps.max_read == even.caps.max_write == 256
    even.set_baud(19200)
    assert even.caps.line_bytes_per_s == pytest.approx(19200 / 11) and even.baud == 19200
    assert termios.tcgetattr(even.serial.fd)[4] == termios.B19200
    even.close()
    none = UartLink(pty_pair[0], baud=57600, parity="none")
    assert none.caps.line_bytes_per_s == pytest.approx(57600 / 10)
    assert none.serial.parity == "N"
    none.close()


def test_uart_round_trip_over_a_real_pty(pty_pair):
    path, master = pty_pair
    link = UartLink(path)
    link.write(b"\x7f\x01\xfe")
    assert os.read(master, 3) == b"\x7f\x01\xfe"
    os.write(master, b"\x79\x31")
    assert link.read(2, timeout=2.0) == b"\x79\x31"
    link.close()


def test_uart_read_times_out_with_partial_data_in_message(pty_pair):
    path, master = pty_pair
    link = UartLink(path)
    os.write(master, b"\x79")
    with pytest.raises(LinkTimeout, match=r"got 1 of 3 bytes.*79"):
        link.read(3, timeout=0.2)
    link.close()


def test_uart_flush_input_drops_stray_bytes(pty_pair):
    path, master = pty_pair
    link = UartLink(path)
    os.write(master, b"\x00\x00")
    time.sleep(0.05)
    link.flush_input()
    os.write(master, b"\x79")
    assert link.read(1, 1.0) == b"\x79"
    link.close()


def test_uart_inter_byte_delay_is_honoured():
    sleeps: list[float] = []
    link = UartLink("loop://", inter_byte_delay=0.001, sleep=sleeps.append)
    link.write(b"\x11\xee\x08")
    assert sleeps == [0.001, 0.001, 0.001]
    assert link.read(3, 1.0) == b"\x11\xee\x08"


def test_uart_spy_url_and_open_link(pty_pair):
    link = open_link(port=f"spy://{pty_pair[0]}?file=/dev/null", baud=9600)
    assert isinstance(link, UartLink) and link.caps.line_bytes_per_s == pytest.approx(9600 / 11)
    link.close()


def test_uart_missing_port_is_port_unavailable_with_hint(tmp_path):
    with pytest.raises(LinkError) as err:
        UartLink(str(tmp_path / "ttyNOPE"))
    assert err.value.code == "port_unavailable"
    assert "no such device" in str(err.value) and "ttyNOPE" in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_uart_permission_denied_suggests_dialout(tmp_path):
    node = tmp_path / "ttyLOCKED"
    node.write_bytes(b"")
    node.chmod(0)
    with pytest.raises(LinkError, match="dialout") as err:
        UartLink(str(node))
    assert err.value.code == "port_unavailable"


@pytest.mark.parametrize("exc, words", [
    (PermissionError(errno.EACCES, "Permission denied"), "dialout group"),
    (OSError(errno.EBUSY, "Device or resource busy"), "busy"),
    (OSError(errno.ENOENT, "No such file or directory"), "no such device"),
])
def test_uart_open_hints_name_the_fix(exc, words):
    assert words in _open_hint("/dev/ttyUSB0", exc)


def test_uart_open_hint_names_parity_when_the_port_refuses_settings():
    assert "--parity none" in _open_hint("/tmp/stm32", termios.error(22, "Invalid argument"))


def test_a_port_that_refuses_even_parity_is_a_link_error_not_a_traceback(pty_pair):
    # some kernels refuse PARENB on a pty once it has been set up (tcsetattr: EINVAL);
    # whatever the kernel does, opening must either work or fail as port_unavailable
    UartLink(pty_pair[0], parity="none").close()
    for _ in range(2):
        try:
            UartLink(pty_pair[0], parity="even").close()
        except LinkError as exc:
            assert exc.code == "port_unavailable" and "--parity none" in str(exc)


@pytest.mark.parametrize("kwargs", [{"parity": "odd"}, {"baud": 0}, {"inter_byte_delay": -1}])
def test_uart_rejects_bad_settings(kwargs):
    with pytest.raises(UsageError):
        UartLink("loop://", **kwargs)


class StrictBus:
    """Stands in for smbus2.SMBus: accepts only single-message i2c_rdwr at one address and
    answers reads from a script; anything unexpected fails the test."""

    def __init__(self, address: int, replies: list[bytes | OSError]) -> None:
        self.address = address
        self.replies = replies
        self.writes: list[bytes] = []

    def i2c_rdwr(self, *msgs: i2c_msg) -> None:
        assert len(msgs) == 1, "every frame must be exactly one i2c_rdwr message"
        msg = msgs[0]
        assert msg.addr == self.address
        if msg.flags & 1:  # I2C_M_RD
            reply = self.replies.pop(0)
            if isinstance(reply, OSError):
                raise reply
            assert len(reply) == msg.len, f"read of {msg.len} bytes, script has {len(reply)}"
            for i, b in enumerate(reply):
                msg.buf[i] = bytes([b])
        else:
            self.writes.append(bytes(msg))


class FakeClock:
    """A deterministic clock whose sleep() advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_i2c_frames_are_single_transfers():
    bus = StrictBus(0x48, [b"\x79", b"\x01\x04\x35"])
    link = I2cLink(bus, 0x48)
    link.write(b"\x02\xfd")
    assert link.read(1, 0.5) == b"\x79"
    assert link.read(3, 0.5) == b"\x01\x04\x35"
    assert bus.writes == [b"\x02\xfd"] and bus.replies == []
    caps = link.caps
    assert not caps.byte_stream and not caps.needs_sync and caps.version_extra_bytes == 0
    assert caps.erase_count_checksum and caps.no_stretch and caps.polls_busy
    assert caps.line_bytes_per_s == pytest.approx(400_000 / 9)


def test_i2c_chunk_limits_are_enforced():
    bus = StrictBus(0x48, [])
    link = I2cLink(bus, 0x48, read_chunk=32, write_chunk=64, max_frame=1025)
    assert link.caps.max_read == 32 and link.caps.max_write == 64
    assert link.caps.max_frame == 1025
    with pytest.raises(UsageError, match="read_chunk 32"):
        link.read(33, 0.5)
    with pytest.raises(UsageError, match="max_frame 1025"):
        link.write(bytes(1026))
    assert bus.writes == []  # refused before touching the bus
    link.write(bytes(1025))  # write_chunk bounds WRITE_MEMORY data, not an erase page list
    assert bus.writes == [bytes(1025)]


def test_i2c_frame_limit_defaults_to_i2c_dev_and_must_hold_a_write():
    link = I2cLink(StrictBus(0x48, []), 0x48)
    assert link.caps.max_frame == 8192  # linux i2c-dev: I2C_RDWR messages up to 8192 bytes
    for bad in (65, 8193):
        with pytest.raises(UsageError, match="max_frame"):
            I2cLink(StrictBus(0x48, []), 0x48, write_chunk=64, max_frame=bad)


def test_i2c_address_nack_is_polled_then_times_out_naming_bus_and_address():
    clock = FakeClock()
    nack = OSError(errno.EREMOTEIO, "Remote I/O error")
    bus = StrictBus(0x48, [nack, nack, b"\x79"])
    link = I2cLink(bus, 0x48, busy_poll=0.01, clock=clock, sleep=clock.sleep)
    assert link.read(1, 1.0) == b"\x79"
    assert clock.sleeps == [0.01, 0.01]

    bus.replies = [nack] * 1000
    with pytest.raises(LinkTimeout, match=r"StrictBus address 0x48.*within 0.05 s"):
        link.read(1, 0.05)
    assert 4 <= len(clock.sleeps) - 2 <= 7  # polled at busy_poll steps until the deadline


def test_i2c_write_nack_and_other_errors_are_link_errors():
    class Failing(StrictBus):
        def i2c_rdwr(self, *msgs: i2c_msg) -> None:
            raise self.replies.pop(0)  # type: ignore[misc]

    link = I2cLink(Failing(0x48, [OSError(errno.ENXIO, "No such device or address"),
                                  OSError(errno.EINVAL, "Invalid argument")]), 0x48)
    with pytest.raises(LinkTimeout, match="0x48: write of 2 bytes not acknowledged"):
        link.write(b"\x00\xff")
    with pytest.raises(LinkError, match="Invalid argument") as err:
        link.read(1, 0.5)
    assert not isinstance(err.value, LinkTimeout)


def test_i2c_missing_bus_is_port_unavailable():
    with pytest.raises(LinkError) as err:
        I2cLink(250, 0x48)
    assert err.value.code == "port_unavailable" and "/dev/i2c-250" in str(err.value)


@pytest.mark.parametrize("address", [0x00, 0x78, 0x90])
def test_i2c_rejects_addresses_outside_7_bit_range(address):
    with pytest.raises(UsageError):
        I2cLink(StrictBus(address, []), address)


def test_open_link_needs_exactly_one_kind():
    with pytest.raises(UsageError):
        open_link()
    with pytest.raises(UsageError):
        open_link(port="loop://", i2c_bus=1, i2c_address=0x48)
    with pytest.raises(UsageError):
        open_link(i2c_bus=StrictBus(0x48, []))
    assert isinstance(open_link(i2c_bus=StrictBus(0x48, []), i2c_address=0x48), I2cLink)
