"""Shared fixtures: a simulated STM32L432 bootloader, on a real pty when a test needs a port."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest

from agent.stm32.chips import CHIPS, Chip
from agent.sim import PtySim, SimChip

log = logging.getLogger(__name__)


@pytest.fixture
def l432() -> Chip:
    """The seed project's chip: STM32L43x/44x, PID 0x435."""
    return CHIPS[0x435]


@pytest.fixture
def sim_chip(l432: Chip) -> SimChip:
    """A fresh, non-realtime simulated L432 sitting in its system bootloader."""
    return SimChip(l432, realtime=False)


@pytest.fixture
def sim_pty(sim_chip: SimChip) -> Iterator[PtySim]:
    """`sim_chip` served on a pseudo-terminal; open `sim_pty.path` with any serial library."""
    pty = PtySim(sim_chip).start()
    try:
        yield pty
    finally:
        pty.stop()
