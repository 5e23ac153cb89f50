"""Reset sequences: the step language, its units, its hints, and the checks made at load."""

from __future__ import annotations

import logging

import pytest

from agent.errors import ConfigError
from agent.pins.sequence import (DEFAULT_ENTER, DEFAULT_EXIT, Delay, PinStep, format_sequence,
                                 parse_sequence, validate_sequence)


@pytest.mark.parametrize("text, step", [
    ("nrst low", PinStep("nrst", True)),
    ("nrst high", PinStep("nrst", False)),
    ("boot0 high", PinStep("boot0", True)),
    ("boot0 low", PinStep("boot0", False)),
    ("nrst assert", PinStep("nrst", True)),
    ("NRST  Release", PinStep("nrst", False)),
    ("boot0 asserted", PinStep("boot0", True)),
    ("boot0 released", PinStep("boot0", False)),
    ("10ms", Delay(0.010)),
    ("10 ms", Delay(0.010)),
    ("0.5s", Delay(0.5)),
    ("100us", Delay(100e-6)),
    ("0ms", Delay(0.0)),
])
def test_each_step_form_means_what_the_datasheet_says(text: str, step: object) -> None:
    (parsed,) = parse_sequence([text])
    assert parsed == step


def test_nrst_low_is_asserted_and_boot0_high_is_asserted() -> None:
    steps = parse_sequence(["nrst low", "boot0 high"])
    assert [s.asserted for s in steps] == [True, True]
    assert [s.mcu_high for s in steps] == [False, True]


def test_a_comma_separated_string_is_the_same_as_a_list() -> None:
    assert parse_sequence("boot0 high, nrst low,10ms , nrst high, 50ms") == \
        parse_sequence(["boot0 high", "nrst low", "10ms", "nrst high", "50ms"])


def test_parsed_steps_render_back_to_canonical_text() -> None:
    steps = parse_sequence(["NRST assert", "boot0 high", "10 ms", "nrst release", "0.5s", "100us"])
    assert format_sequence(steps) == "nrst low, boot0 high, 10ms, nrst high, 500ms, 100us"
    assert parse_sequence(format_sequence(steps)) == steps


def test_already_parsed_steps_pass_through() -> None:
    steps = parse_sequence(list(DEFAULT_EXIT))
    assert parse_sequence(steps) == steps


@pytest.mark.parametrize("bad, hint", [
    ("bot0 high", "did you mean 'boot0 high'?"),
    ("nrst lo", "did you mean 'nrst low'?"),
    ("reset low", "did you mean 'nrst low'?"),
    ("nrst=low", "did you mean 'nrst low'?"),
    ("boot0", "did you mean 'boot0 high'?"),
    ("10", "durations need a unit: 10ms"),
    (10, "durations need a unit: 10ms"),
    ("10sec", "unknown unit 'sec'; use us, ms or s"),
    ("5min", "unknown unit 'min'"),
    ("120s", "longer than 60s"),
    ("wiggle", "expected '<nrst|boot0> <low|high>' or a duration like '10ms'"),
    (None, "expected a string like 'nrst low' or '10ms'"),
    (True, "expected a string"),
])
def test_bad_items_name_the_place_the_item_and_a_hint(bad: object, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sequence(["boot0 high", bad], where="targets[0].pins.enter_bootloader")
    message = str(info.value)
    assert message.startswith("targets[0].pins.enter_bootloader[1]: ")
    assert repr(bad) in message
    assert hint in message
    assert info.value.code == "config"


def test_a_sequence_that_is_not_a_list_or_string_is_rejected() -> None:
    with pytest.raises(ConfigError, match="expected a list of steps"):
        parse_sequence({"nrst": "low"}, where="x")  # type: ignore[arg-type]


def test_defaults_are_valid_and_end_with_the_mcu_running() -> None:
    for seq in (DEFAULT_ENTER, DEFAULT_EXIT):
        steps = parse_sequence(list(seq))
        validate_sequence(steps, ["nrst", "boot0"])
        assert isinstance(steps[-1], Delay) and steps[-1].seconds >= 0.01
    enter = parse_sequence(list(DEFAULT_ENTER))
    # BOOT0 is asserted only while NRST already holds the MCU in reset.
    assert enter.index(PinStep("nrst", True)) < enter.index(PinStep("boot0", True)) \
        < enter.index(PinStep("nrst", False))


def test_a_step_for_a_pin_that_is_not_configured_is_a_config_error() -> None:
    steps = parse_sequence(["boot0 high", "nrst low", "10ms", "nrst high"])
    with pytest.raises(ConfigError) as info:
        validate_sequence(steps, ["nrst"], where="targets[1].pins.enter_bootloader")
    assert "targets[1].pins.enter_bootloader[0]" in str(info.value)
    assert "no boot0 pin is configured" in str(info.value)


def test_a_sequence_that_leaves_the_mcu_in_reset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ends with NRST low"):
        validate_sequence(parse_sequence(["nrst high", "10ms", "nrst low"]), ["nrst"])


def test_no_delay_after_the_reset_release_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.pins.sequence"):
        validate_sequence(parse_sequence(["nrst low", "1ms", "nrst high"]), ["nrst"])
    assert "no delay after 'nrst high'" in caplog.text
