"""End to end: the mock pins drive the simulated STM32 through the same reset sequences."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from agent.pins import PinSpec, open_pins


def _sim_chip() -> Any:
    """A non-realtime SimChip for the L432 (0x435), or skip while the simulator is not there."""
    for module in ("agent.stm32.sim", "agent.stm32.sim_core"):
        try:
            cls = getattr(importlib.import_module(module), "SimChip")
            break
        except (ImportError, AttributeError):
            continue
    else:
        pytest.skip("agent.stm32.sim.SimChip is not written yet")
    from agent.stm32.chips import CHIPS

    for args, kwargs in (((CHIPS[0x435],), {"realtime": False}), ((CHIPS[0x435],), {}),
                         ((), {"realtime": False}), ((), {})):
        try:
            sim = cls(*args, **kwargs)
        except TypeError:
            continue
        if not hasattr(sim, "set_line") or not hasattr(sim, "mode"):
            pytest.skip("SimChip has no set_line/mode yet")
        return sim
    pytest.skip("cannot construct SimChip with the signatures tried")


@pytest.mark.parametrize("nrst_low, boot0_low", [(True, False), (False, True)])
def test_reset_sequences_move_the_simulator_between_modes(nrst_low: bool,
                                                          boot0_low: bool) -> None:
    sim = _sim_chip()
    before = sim.mode
    pins = open_pins("mock", PinSpec(17, nrst_low), PinSpec(27, boot0_low),
                     listener=sim.set_line, sleep=lambda s: None)
    assert sim.mode == before  # opening the pins did not reset the running chip
    pins.enter_bootloader()
    assert sim.mode == "bootloader"
    pins.exit_bootloader()
    assert sim.mode == "application"
    pins.close()
    assert sim.mode == "application"


def test_a_reset_without_boot0_starts_the_application() -> None:
    sim = _sim_chip()
    with open_pins("mock", PinSpec(17), PinSpec(27), listener=sim.set_line,
                   sleep=lambda s: None) as pins:
        pins.run(["nrst low", "1ms", "nrst high", "1ms"])
        assert sim.mode == "application"
