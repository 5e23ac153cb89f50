"""Handlers of the agent's own subcommands: run (what systemd starts) and check-config."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from agent.cli.options import command, parser
from agent.config import check, load_for_run
from agent.errors import EXIT_OK, EXIT_USAGE, UsageError
from agent.service import Service, flash_target

log = logging.getLogger(__name__)


@parser("run", "run the agent: MQTT-driven updates of the configured targets (what systemd starts)")
def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config.yaml")


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    """Load and check the config (as check-config does), start the service, run until
    SIGTERM/SIGINT."""
    cfg = load_for_run(args.config)
    if not args.verbose and not args.quiet:  # -v / -q on the command line win over the config
        logging.getLogger().setLevel(cfg.agent.log_level.upper())
    svc = Service(cfg, [flash_target(t) for t in cfg.targets])
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        svc.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    svc.start()
    svc.run_forever()
    return EXIT_OK


@parser("check-config", "validate a config file and say exactly what is wrong and where")
def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="config.yaml (or give it with --config, as `run` does)")
    p.add_argument("--config", help="config.yaml")


@command("check-config")
def cmd_check_config(args: argparse.Namespace) -> int:
    """Print every problem with its location; exit 2 when there are errors."""
    if (args.path is None) == (args.config is None):
        raise UsageError("give the config file once: check-config --config PATH (or PATH)")
    args.path = args.path or args.config
    problems = check(args.path)
    for p in problems:
        print(f"{args.path}: {p}")
    errors = [p for p in problems if p.level == "error"]
    if errors:
        print(f"{args.path}: {len(errors)} error(s); nothing was started", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.path}: OK" + (f" ({len(problems)} warning(s))" if problems else ""))
    return EXIT_OK
