"""--config/--target: the flasher commands' Target from a configured target (config.yaml).

Imported by main() only when --config is given (options.CONFIG_MODULE): the config package
is the larger part of the start-up of a flasher command, and `--port` needs none of it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from agent.cli.options import CONFIGURED
from agent.config import load
from agent.config.targets import flasher_target
from agent.errors import UsageError
from agent.flasher.target import Target


def configured_target(args: argparse.Namespace) -> Target:
    """A configured target's link, pins, sequences, timeouts and quirks (--config/--target)."""
    given = [o for o, v in (("--port", args.port), ("--i2c-bus", args.i2c_bus),
                            ("--nrst", args.nrst), ("--boot0", args.boot0)) if v is not None]
    if args.pins_backend != "none":
        given.append("--pins")
    if given:
        raise UsageError(f"--config takes the link and pins from the target; drop "
                         f"{', '.join(given)} or drop --config")
    cfg = load(args.config)
    if args.target is None:
        if len(cfg.targets) != 1:
            names = ", ".join(t.name for t in cfg.targets)
            raise UsageError(f"{args.config} has several targets ({names}): say which with --target")
        t = cfg.targets[0]
    else:
        t = cfg.target(args.target)
    target = flasher_target(t)
    if args.expect_chip is not None:
        target = replace(target, expect_chip=args.expect_chip)
    return target


CONFIGURED["target"] = configured_target  # what options.target_from_args calls for --config
