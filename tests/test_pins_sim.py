"""End to end: the mock pins drive the simulated STM32 through the same reset sequences."""

from __future__ import annotations

import pytest

from agent.pins import PinSpec, open_pins
from agent.stm32.chips import CHIPS
from agent.sim import SimChip


@pytest.fixture
def running_sim() -> SimChip:
    """A non-realtime L432 running its application: BOOT0 pulled down, flash not empty."""
    sim = SimChip(CHIPS[0x435], realtime=False, boot0=False)
    sim.flash[:8] = bytes.fromhex("0030002009000008")  # a vector table: SP, reset handler
    sim.power_cycle()  # AN2606 pattern 16: the L4 empty check is latched at power-on
    assert sim.mode == "application"
    return sim


def _resets(sim: SimChip) -> list[tuple]:
    return [e for e in sim.events if e[0] == "reset"]


@pytest.mark.parametrize("nrst_low, boot0_low", [(True, False), (False, True)])
def test_reset_sequences_move_the_simulator_between_modes(
        running_sim: SimChip, nrst_low: bool, boot0_low: bool) -> None:
    sim = running_sim
    booted = len(_resets(sim))
    pins = open_pins("mock", PinSpec(17, nrst_low), PinSpec(27, boot0_low),
                     listener=sim.set_line, sleep=lambda s: None)
    assert sim.mode == "application" and len(_resets(sim)) == booted  # opening: no reset
    pins.enter_bootloader()
    assert sim.mode == "bootloader"
    pins.exit_bootloader()
    assert sim.mode == "application"
    pins.close()
    assert sim.mode == "application"
    assert [e[1:3] for e in _resets(sim)[booted:]] == [("nrst", "bootloader"),
                                                        ("nrst", "application")]


def test_a_reset_without_boot0_starts_the_application(running_sim: SimChip) -> None:
    with open_pins("mock", PinSpec(17), PinSpec(27), listener=running_sim.set_line,
                   sleep=lambda s: None) as pins:
        pins.run(["nrst low", "1ms", "nrst high", "1ms"])
        assert running_sim.mode == "application"
        assert _resets(running_sim)[-1][1:3] == ("nrst", "application")


def test_closing_mid_enter_lets_the_chip_start_its_application(running_sim: SimChip) -> None:
    pins = open_pins("mock", PinSpec(17), PinSpec(27), listener=running_sim.set_line,
                     sleep=lambda s: None)
    pins.run(["nrst low", "boot0 high"])  # e.g. the agent is stopped at this instant
    pins.close()  # BOOT0 released before NRST
    assert running_sim.mode == "application"
