"""Backends: libgpiod and RPi.GPIO against strict fakes of the exact API we use, modem on a pty.

The fakes reject every call the real library would reject (wrong types, unknown keywords,
busy lines, outputs that were never set up, use after release), and record what reached the
"wire", so the tests can check the very first level each line showed.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import sys
import types
from typing import Any, Optional

import pytest
import serial

from agent.errors import ConfigError, PinError
from agent.pins import PinSpec, open_pins
from agent.pins import libgpiod as libgpiod_module

# ---------------------------------------------------------------- fake gpiod (v2 API surface)


class FakeGpiod:
    """gpiod>=2.0: request_lines, LineSettings, gpiod.line.{Direction, Value}."""

    def __init__(self) -> None:
        self.chips: dict[str, int] = {}  # path -> number of lines
        self.held: dict[tuple[str, int], str] = {}  # (chip, offset) -> consumer
        self.events: list[tuple[Any, ...]] = []  # (op, offset, high)
        self.deny: Optional[OSError] = None
        self.drives: dict[int, str] = {}  # offset -> drive of its request
        line = types.ModuleType("gpiod.line")
        line.Direction = enum.Enum("Direction", "AS_IS INPUT OUTPUT")
        line.Drive = enum.Enum("Drive", "PUSH_PULL OPEN_DRAIN OPEN_SOURCE")
        line.Value = enum.Enum("Value", {"INACTIVE": 0, "ACTIVE": 1})
        self.line = line
        module = types.ModuleType("gpiod")
        module.line = line
        module.LineSettings = self._line_settings_class()
        module.request_lines = self.request_lines
        self.module = module

    def _line_settings_class(self) -> type:
        fake = self

        class LineSettings:
            def __init__(self, *, direction: Any = None, active_low: bool = False,
                         output_value: Any = None, drive: Any = None) -> None:
                direction = direction or fake.line.Direction.AS_IS
                output_value = output_value or fake.line.Value.INACTIVE
                self.drive = drive or fake.line.Drive.PUSH_PULL
                assert isinstance(direction, fake.line.Direction), direction
                assert isinstance(self.drive, fake.line.Drive), self.drive
                assert isinstance(output_value, fake.line.Value), output_value
                assert isinstance(active_low, bool)
                self.direction, self.active_low, self.output_value = \
                    direction, active_low, output_value

        return LineSettings

    def high(self, settings_active_low: bool, value: Any) -> bool:
        return (value is self.line.Value.ACTIVE) != settings_active_low

    def request_lines(self, path: str, config: dict, consumer: Optional[str] = None,
                      event_buffer_size: Optional[int] = None,
                      output_values: Optional[dict] = None) -> "FakeRequest":
        if self.deny is not None:
            raise self.deny
        if path not in self.chips:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        assert isinstance(config, dict) and output_values is None
        for offset, settings in config.items():
            assert isinstance(settings, self.module.LineSettings)
            if not isinstance(offset, int) or not 0 <= offset < self.chips[path]:
                raise ValueError(f"invalid offset {offset!r}")
            if (path, offset) in self.held:
                raise OSError(errno.EBUSY, "Device or resource busy")
            assert settings.direction is self.line.Direction.OUTPUT
        for offset, settings in config.items():
            self.held[(path, offset)] = consumer or "?"
            self.drives[offset] = settings.drive.name
            self.events.append(("request", offset,
                                self.high(settings.active_low, settings.output_value)))
        return FakeRequest(self, path, {o: s.active_low for o, s in config.items()})


class FakeRequest:
    """gpiod.LineRequest: set_value and release; everything after release raises."""

    def __init__(self, fake: FakeGpiod, path: str, lines: dict[int, bool]) -> None:
        self.fake, self.path, self.lines, self.released = fake, path, lines, False

    def set_value(self, line: int, value: Any) -> None:
        assert not self.released, "RequestReleasedError"
        assert line in self.lines, f"line {line} not in this request"
        assert isinstance(value, self.fake.line.Value)
        self.fake.events.append(("set", line, self.fake.high(self.lines[line], value)))

    def release(self) -> None:
        assert not self.released, "RequestReleasedError"
        self.released = True
        for offset in self.lines:
            del self.fake.held[(self.path, offset)]
            self.fake.events.append(("release", offset, None))


@pytest.fixture
def gpiod(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> FakeGpiod:
    fake = FakeGpiod()
    chip = str(tmp_path / "gpiochip0")
    open(chip, "w").close()  # exists, for the auto backend's check
    fake.chips[chip] = 54
    monkeypatch.setitem(sys.modules, "gpiod", fake.module)
    monkeypatch.setitem(sys.modules, "gpiod.line", fake.line)
    return fake


def _chip(fake: FakeGpiod) -> str:
    return next(iter(fake.chips))


@pytest.mark.parametrize("nrst_low, boot0_low", [(True, False), (False, True)])
def test_libgpiod_requests_each_line_at_its_released_level(
        gpiod: FakeGpiod, nrst_low: bool, boot0_low: bool) -> None:
    pins = open_pins("libgpiod", PinSpec(17, nrst_low), PinSpec(27, boot0_low),
                     chip=_chip(gpiod), sleep=lambda s: None)
    assert gpiod.events == [("request", 17, nrst_low), ("request", 27, boot0_low)]
    assert set(gpiod.held.values()) == {"stm32ota"}
    pins.enter_bootloader()
    pins.close()
    assert gpiod.held == {}
    assert gpiod.events[2:5] == [("set", 17, not nrst_low), ("set", 27, not boot0_low),
                                 ("set", 17, nrst_low)]
    assert gpiod.events[-2:] == [("release", 17, None), ("release", 27, None)]


@pytest.mark.parametrize("nrst_low, nrst_drive", [(True, "OPEN_DRAIN"), (False, "PUSH_PULL")])
def test_libgpiod_drives_nrst_open_drain_unless_through_an_inverter(
        gpiod: FakeGpiod, nrst_low: bool, nrst_drive: str) -> None:
    # wired straight, NRST only ever needs pulling low; released it is left to the MCU's
    # pull-up, so a reset button or the chip's own reset pulse never fights the host's output
    pins = open_pins("libgpiod", PinSpec(17, nrst_low), PinSpec(27), chip=_chip(gpiod),
                     sleep=lambda s: None)
    assert gpiod.drives == {17: nrst_drive, 27: "PUSH_PULL"}
    pins.close()


def test_libgpiod_busy_line_says_who_to_ask(gpiod: FakeGpiod) -> None:
    gpiod.held[(_chip(gpiod), 27)] = "someone-else"
    with pytest.raises(PinError, match=r"is another process holding GPIO 27\? see `gpioinfo`") \
            as info:
        open_pins("libgpiod", PinSpec(17), PinSpec(27), chip=_chip(gpiod))
    assert info.value.code == "gpio_busy"
    assert (_chip(gpiod), 17) not in gpiod.held  # NRST was given back


def test_libgpiod_missing_chip_and_permission(gpiod: FakeGpiod) -> None:
    with pytest.raises(PinError, match="gpiodetect") as info:
        open_pins("libgpiod", PinSpec(17), None, chip="/dev/gpiochip9")
    assert info.value.code == "gpio_chip_missing"
    gpiod.deny = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(PinError, match="add the user to the gpio group"):
        open_pins("libgpiod", PinSpec(17), None, chip=_chip(gpiod))


def test_libgpiod_v1_bindings_are_refused_with_an_install_hint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", types.ModuleType("gpiod"))  # v1: no request_lines
    with pytest.raises(PinError, match=r"v1 API.*gpiod>=2\.0"):
        open_pins("libgpiod", PinSpec(17), None)


# ---------------------------------------------------------------- fake RPi.GPIO


class FakeRpiGpio(types.ModuleType):
    """RPi.GPIO 0.7: setmode/getmode/setwarnings/setup/output/cleanup, strict like the C code."""

    BCM, BOARD, OUT, IN, HIGH, LOW, PUD_OFF = 11, 10, 0, 1, 1, 0, 20

    def __init__(self) -> None:
        super().__init__("RPi.GPIO")
        self.mode: Optional[int] = None
        self.outputs: set[int] = set()
        self.events: list[tuple[Any, ...]] = []

    def getmode(self) -> Optional[int]:
        return self.mode

    def setmode(self, mode: int) -> None:
        if mode not in (self.BCM, self.BOARD) or self.mode not in (None, mode):
            raise ValueError("A different mode has already been set!")
        self.mode = mode

    def setwarnings(self, flag: bool) -> None:
        assert isinstance(flag, bool)

    def setup(self, channel: int, direction: int, pull_up_down: int = 20,
              initial: int = -1) -> None:
        if self.mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode")
        if not isinstance(channel, int) or not 0 <= channel <= 27:
            raise ValueError("The channel sent is invalid on a Raspberry Pi")
        if direction not in (self.IN, self.OUT) or initial not in (-1, 0, 1):
            raise ValueError("An invalid direction or initial value was passed to setup()")
        self.outputs.add(channel)
        self.events.append(("setup", channel, bool(initial) if initial != -1 else None))

    def output(self, channel: int, value: int) -> None:
        if channel not in self.outputs:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        assert value in (0, 1)
        self.events.append(("output", channel, bool(value)))

    def cleanup(self, channel: Any = None) -> None:
        channels = list(self.outputs) if channel is None else \
            ([channel] if isinstance(channel, int) else list(channel))
        for ch in channels:
            self.outputs.discard(ch)
            self.events.append(("cleanup", ch, None))


@pytest.fixture
def rpigpio(monkeypatch: pytest.MonkeyPatch) -> FakeRpiGpio:
    fake = FakeRpiGpio()
    package = types.ModuleType("RPi")
    package.GPIO = fake
    monkeypatch.setitem(sys.modules, "RPi", package)
    monkeypatch.setitem(sys.modules, "RPi.GPIO", fake)
    return fake


def test_rpigpio_sets_up_outputs_with_their_released_level(rpigpio: FakeRpiGpio) -> None:
    with open_pins("rpigpio", PinSpec(17), PinSpec(27), sleep=lambda s: None) as pins:
        assert rpigpio.mode == rpigpio.BCM
        assert rpigpio.events == [("setup", 17, True), ("setup", 27, False)]
        pins.enter_bootloader()
        pins.exit_bootloader()
    assert rpigpio.outputs == set()
    assert ("cleanup", 17, None) in rpigpio.events and ("cleanup", 27, None) in rpigpio.events


def test_rpigpio_refuses_board_numbering_and_names(rpigpio: FakeRpiGpio) -> None:
    with pytest.raises(PinError, match="BCM numbers"):
        rpigpio.mode = rpigpio.BOARD
        open_pins("rpigpio", PinSpec(17), None)
    rpigpio.mode = None
    with pytest.raises(PinError, match="needs a BCM GPIO number"):
        open_pins("rpigpio", PinSpec("GPIO17"), None)
    with pytest.raises(PinError, match="not a valid BCM number"):
        open_pins("rpigpio", PinSpec(99), None)


# ---------------------------------------------------------------- auto


def test_auto_prefers_libgpiod(gpiod: FakeGpiod, rpigpio: FakeRpiGpio,
                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="agent.pins"):
        pins = open_pins("auto", PinSpec(17), None, chip=_chip(gpiod))
    assert pins.backend.name == "libgpiod" and "using libgpiod" in caplog.text
    assert rpigpio.events == []


def test_auto_falls_back_to_rpigpio_visibly(gpiod: FakeGpiod, rpigpio: FakeRpiGpio,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="agent.pins"):
        pins = open_pins("auto", PinSpec(17), None, chip="/nonexistent/gpiochip0")
    assert pins.backend.name == "rpigpio"
    assert "falling back to RPi.GPIO" in caplog.text and "/nonexistent/gpiochip0" in caplog.text
    assert gpiod.events == []


def test_auto_without_any_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "RPi", None)
    monkeypatch.setattr(libgpiod_module, "chip_available", lambda chip: True)  # a Pi without gpiod
    with pytest.raises(PinError, match=r"stm32ota\[gpiod\]"):
        open_pins("auto", PinSpec(17), None)


def test_auto_without_a_gpio_chip_blames_the_device_not_gpiod(tmp_path, monkeypatch) -> None:
    """No /dev/gpiochip*: installing gpiod would not help, so the error must not say so."""
    monkeypatch.setitem(sys.modules, "RPi", None)
    with pytest.raises(PinError) as err:
        open_pins("auto", PinSpec(17), None, chip=str(tmp_path / "gpiochip0"))
    text = str(err.value)
    assert text.startswith("no GPIO here:") and "does not exist" in text
    assert "libgpiod:" not in text and "ls /dev/gpiochip*" in text


# ---------------------------------------------------------------- modem (RTS/DTR) on a real pty


class RecordingSerial(serial.Serial):
    """A real pyserial port on a pty; only the RTS/DTR ioctls (which a pty rejects) are faked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.modem: list[tuple[str, bool]] = []
        super().__init__(*args, **kwargs)

    def _update_rts_state(self) -> None:
        self.modem.append(("rts", self._rts_state))

    def _update_dtr_state(self) -> None:
        self.modem.append(("dtr", self._dtr_state))


@pytest.fixture
def pty() -> Any:
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_modem_on_a_real_pty_explains_that_it_has_no_modem_lines(pty: Any) -> None:
    port = serial.Serial(pty[1], timeout=0.5)
    try:
        with pytest.raises(PinError, match="no modem control lines") as info:
            open_pins("modem", PinSpec("dtr"), PinSpec("rts"), serial=port)
        assert info.value.code == "modem_lines"
    finally:
        port.close()


def test_modem_claims_released_in_pyserial_terms_and_keeps_the_port(pty: Any) -> None:
    port = RecordingSerial(pty[1], timeout=0.5)
    opened = len(port.modem)
    pins = open_pins("modem", PinSpec("DTR"), PinSpec("rts"), serial=port, sleep=lambda s: None)
    # Released: NRST TTL high -> DTR deasserted; BOOT0 TTL low -> RTS asserted (pyserial True).
    assert port.modem[opened:] == [("dtr", False), ("rts", True)]
    pins.enter_bootloader()
    assert port.modem[opened + 2:] == [("dtr", True), ("rts", False), ("dtr", False)]
    pins.close()
    assert port.is_open  # the link owns the port
    port.write(b"\x7f")
    assert os.read(pty[0], 1) == b"\x7f"
    port.close()


def test_modem_rejects_gpio_numbers_a_shared_line_and_a_missing_port(pty: Any) -> None:
    port = RecordingSerial(pty[1])
    try:
        with pytest.raises(ConfigError, match="'rts' or 'dtr'"):
            open_pins("modem", PinSpec(17), None, serial=port)
        with pytest.raises(ConfigError, match="both use line"):
            open_pins("modem", PinSpec("rts"), PinSpec("rts"), serial=port)
        with pytest.raises(ConfigError, match="needs the serial port"):
            open_pins("modem", PinSpec("rts"), None)
    finally:
        port.close()
