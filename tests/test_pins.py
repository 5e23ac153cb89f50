"""Pins: polarity in one place, claim at the released level, sequences on the strict mock."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError, PinError
from agent.pins import PinSpec, open_pins
from agent.pins.mock import MockBackend


class VirtualClock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


# (active_low, asserted) -> host-side level (True = high)
@pytest.mark.parametrize("active_low, asserted, level", [
    (True, True, False),    # direct NRST wiring: GPIO low holds the MCU in reset
    (True, False, True),
    (False, True, True),    # direct BOOT0 wiring / NRST through an inverting transistor
    (False, False, False),
])
def test_polarity_table(active_low: bool, asserted: bool, level: bool) -> None:
    spec = PinSpec(17, active_low)
    assert spec.level_for(asserted) is level
    assert spec.asserted_at(level) is asserted


def test_default_polarity_suits_direct_wiring() -> None:
    assert PinSpec(17).resolved("nrst").active_low is True
    assert PinSpec(27).resolved("boot0").active_low is False
    assert PinSpec(27, True).resolved("boot0").active_low is True


@pytest.mark.parametrize("line", [-1, "", True, 1.5, None])
def test_bad_lines_are_config_errors(line: object) -> None:
    with pytest.raises(ConfigError):
        PinSpec(line)  # type: ignore[arg-type]


@pytest.mark.parametrize("nrst_low, boot0_low", [(True, False), (False, True), (True, True),
                                                 (False, False)])
def test_opening_claims_every_line_released_and_never_touches_the_mcu(
        nrst_low: bool, boot0_low: bool, clock: VirtualClock) -> None:
    seen: list[tuple[str, bool]] = []
    pins = open_pins("mock", PinSpec(17, nrst_low), PinSpec(27, boot0_low),
                     listener=lambda n, h: seen.append((n, h)), sleep=clock.sleep, clock=clock)
    mock = pins.backend
    assert isinstance(mock, MockBackend)
    assert mock.history == [(0.0, "nrst", nrst_low), (0.0, "boot0", boot0_low)]
    assert seen == []  # the MCU pins never left their pull-up/pull-down levels
    assert (mock.mcu_levels["nrst"], mock.mcu_levels["boot0"]) == (True, False)
    pins.close()
    assert seen == []


def test_enter_holds_boot0_across_the_reset_pulse_and_exit_releases_it(
        clock: VirtualClock) -> None:
    seen: list[tuple[float, str, bool]] = []
    with open_pins("mock", PinSpec(17), PinSpec(27), sleep=clock.sleep, clock=clock,
                   listener=lambda n, h: seen.append((clock.now, n, h))) as pins:
        pins.enter_bootloader()
        assert pins.asserted("boot0") and not pins.asserted("nrst")
        entered = list(seen)
        pins.exit_bootloader()
    assert entered == [(0.0, "nrst", False), (0.0, "boot0", True), (0.01, "nrst", True)]
    assert seen[3:] == [(0.11, "boot0", False), (0.11, "nrst", False), (0.12, "nrst", True)]
    assert clock.now == pytest.approx(0.14)  # 100 ms startup wait + 20 ms after exit


def test_inverted_wiring_drives_the_opposite_gpio_levels(clock: VirtualClock) -> None:
    pins = open_pins("mock", PinSpec(17, active_low=False), PinSpec(27, active_low=True),
                     sleep=clock.sleep, clock=clock)
    pins.run(["nrst low", "boot0 high"])
    assert (pins.backend.level("nrst"), pins.backend.level("boot0")) == (True, False)
    assert (pins.backend.mcu_levels["nrst"], pins.backend.mcu_levels["boot0"]) == (False, True)


def test_close_releases_boot0_then_nrst_even_mid_sequence(clock: VirtualClock) -> None:
    seen: list[tuple[str, bool]] = []
    pins = open_pins("mock", PinSpec(17), PinSpec(27), sleep=clock.sleep, clock=clock,
                     listener=lambda n, h: seen.append((n, h)))
    pins.run(["nrst low", "boot0 high"], where="test")
    mock = pins.backend
    pins.close()
    pins.close()  # twice is fine
    assert seen[-2:] == [("boot0", False), ("nrst", True)]
    assert mock.closed and mock.lines == {}
    with pytest.raises(PinError, match="closed"):
        pins.run(["10ms"])


def test_default_sequences_adapt_to_a_missing_boot0_but_explicit_ones_do_not(
        clock: VirtualClock) -> None:
    pins = open_pins("mock", PinSpec(17), None, sleep=clock.sleep, clock=clock)
    pins.enter_bootloader()  # BOOT0 strapped on the board: enter is a plain reset
    assert [h[1:] for h in pins.backend.history] == [("nrst", True), ("nrst", False),
                                                     ("nrst", True)]
    with pytest.raises(ConfigError, match="no boot0 pin is configured"):
        pins.enter_bootloader(["boot0 high", "nrst low", "1ms", "nrst high", "1ms"])


def test_backend_none_does_nothing_on_enter_and_exit(clock: VirtualClock) -> None:
    with open_pins("none", None, None, sleep=clock.sleep) as pins:
        pins.enter_bootloader()
        pins.exit_bootloader()
        assert pins.available == ()
        with pytest.raises(ConfigError, match="no nrst pin"):
            pins.run(["nrst low", "1ms", "nrst high"])
    assert clock.now == 0.0


def test_backend_none_refuses_pins() -> None:
    with pytest.raises(ConfigError, match="takes no nrst/boot0"):
        open_pins("none", PinSpec(17), None)


def test_one_line_for_both_signals_is_refused() -> None:
    with pytest.raises(ConfigError, match="both use line 17"):
        open_pins("mock", PinSpec(17), PinSpec(17))


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="auto, libgpiod, rpigpio, modem, none, mock"):
        open_pins("sysfs", PinSpec(17), None)


def test_mock_is_strict() -> None:
    mock = MockBackend()
    nrst = PinSpec(17).resolved("nrst")
    with pytest.raises(PinError, match="not claimed"):
        mock.write("nrst", False)
    mock.claim("nrst", nrst, True)
    with pytest.raises(PinError, match="busy"):
        mock.claim("boot0", PinSpec(17, False), False)  # same line under another name
    with pytest.raises(PinError, match="busy"):
        mock.claim("nrst", PinSpec(18, True), True)
    with pytest.raises(PinError, match="bool"):
        mock.write("nrst", 0)  # type: ignore[arg-type]
    mock.close()
    with pytest.raises(PinError, match="closed"):
        mock.write("nrst", True)
    with pytest.raises(PinError, match="closed"):
        mock.claim("boot0", PinSpec(27, False), False)


def test_a_failed_claim_frees_what_was_already_claimed() -> None:
    mock = MockBackend()

    def explode(name: str, mcu_high: bool) -> None:
        raise AssertionError("the listener must not be called")

    mock.listener = explode
    from agent.pins.base import Pins

    with pytest.raises(PinError, match="busy"):
        Pins(mock, {"nrst": PinSpec(17), "boot0": PinSpec(17)})
    assert mock.closed


def test_enter_and_exit_refuse_a_sequence_that_leaves_the_mcu_in_reset(
        clock: VirtualClock) -> None:
    pins = open_pins("mock", PinSpec(17), PinSpec(27), sleep=clock.sleep, clock=clock)
    with pytest.raises(ConfigError, match="exit_bootloader: the sequence ends with NRST low"):
        pins.exit_bootloader(["boot0 low", "nrst low"])
    assert len(pins.backend.history) == 2  # refused before any step ran
    pins.run(["nrst low"])  # a plain run may hold the MCU in reset on purpose
    assert pins.asserted("nrst")


def test_the_default_adapts_even_when_passed_in_explicitly(clock: VirtualClock) -> None:
    from agent.pins import DEFAULT_ENTER, parse_sequence

    pins = open_pins("mock", PinSpec(17), None, sleep=clock.sleep, clock=clock)
    pins.enter_bootloader(parse_sequence(DEFAULT_ENTER))  # what config.py hands over
    assert [h[1] for h in pins.backend.history] == ["nrst"] * 3
    assert pins.can_reset
    assert not open_pins("mock", None, PinSpec(27), sleep=clock.sleep).can_reset
