"""Bootloader simulator: a strict device-side model of the STM32 ROM bootloader.

Public names (others code against these):

    sim = SimChip(chip, *, baud=115200, realtime=False, faults=Faults(), flash_size=None,
                  clock=time.monotonic, sleep=time.sleep, boot0=True, strict=True)
    sim.flash / sim.set_line("nrst"|"boot0"|"power", high) / sim.reset(boot0=True) / sim.power_cycle()
    sim.empty_flag (the empty-check latch) / sim.system_reset(obl=False) / sim.jump(addr)
    sim.mode ("reset" | "bootloader" | "application") / sim.events / sim.read_protected
    PtySim(sim, link_path=None).start() -> .path, .stop()
    SimI2CBus().attach(address, sim); bus.i2c_rdwr(*smbus2_i2c_msgs); bus.close()
    serve_pty(path, chip, *, baud, realtime=True, faults=Faults(), stop_event=None)
    parse_faults(["nack-write=5", "drop=200", "corrupt=300", "silent-resets=2",
                  "slow-erase=4", "rdp", "i2c-erase-no-ack", "rup-ack-after-erase"]) -> Faults

Behaviour is documented in core (boot, interface selection, timing), framing (packets in,
answers out), bootrom (the command set, from AN3155/AN4221), memory (flash programming rules)
and faults. The protocol facts are agent.stm32.protocol, which the host-side client shares.
"""

from __future__ import annotations

import logging

from agent.sim.core import SimChip
from agent.sim.faults import Faults, parse_faults
from agent.sim.i2c import SimI2CBus
from agent.sim.pty import PtySim, serve_pty

log = logging.getLogger(__name__)

__all__ = ["Faults", "PtySim", "SimChip", "SimI2CBus", "parse_faults", "serve_pty"]
