"""From a configured target to what a bootloader session and the update pipeline need."""

from __future__ import annotations

from typing import Any, Callable, Optional

from agent.config import Config, TargetConfig
from agent.pins import PinSpec
from agent.flasher.session import LinkSpec, PinsSpec
from agent.ota.pipeline import FlashTarget


def link_spec(t: TargetConfig, bus: Any = None) -> LinkSpec:
    """The target's link; `bus` replaces the I2C bus number (the simulator's bus in the demo)."""
    fields = {k: v for k, v in t.link.__dict__.items()}
    if bus is not None and t.link.type == "i2c":
        fields["bus"] = bus
    return LinkSpec(**fields)


def pins_spec(t: TargetConfig, listener: Optional[Callable[[str, bool], None]] = None) -> PinsSpec:
    """The target's NRST/BOOT0 wiring and sequences."""
    p = t.pins
    nrst = PinSpec(p.nrst.line, p.nrst.active_low) if p.nrst else None
    boot0 = PinSpec(p.boot0.line, p.boot0.active_low) if p.boot0 else None
    return PinsSpec(backend=p.backend, chip=p.chip or "/dev/gpiochip0", nrst=nrst, boot0=boot0,
                    enter=tuple(t.enter_bootloader), exit=tuple(t.exit_bootloader),
                    listener=listener)


def flash_target(t: TargetConfig, *, bus: Any = None,
                 listener: Optional[Callable[[str, bool], None]] = None) -> FlashTarget:
    """Everything the update pipeline needs about one target."""
    return FlashTarget(
        name=t.name, product=t.product, link=link_spec(t, bus), pins=pins_spec(t, listener),
        groups=tuple(t.groups), expect_chip=t.expect_chip, verify=t.verify,
        auto_install=t.auto_install, allow_downgrade=t.allow_downgrade,
        connect_attempts=t.retries.connect, write_retries=t.retries.write, timeouts=t.timeouts,
        bootloader_options={"i2c_erase_nack": t.quirks.i2c_erase_nack})


def target_specs(config_path: str, name: Optional[str]) -> tuple[LinkSpec, PinsSpec, Optional[int]]:
    """Link, pins and expected chip of `--config PATH --target NAME` for the command line."""
    from agent.config import load
    from agent.errors import UsageError

    cfg: Config = load(config_path)
    if name is None:
        if len(cfg.targets) != 1:
            names = ", ".join(t.name for t in cfg.targets)
            raise UsageError(f"{config_path} has several targets ({names}): say which with --target")
        t = cfg.targets[0]
    else:
        t = cfg.target(name)
    return link_spec(t), pins_spec(t), t.expect_chip
