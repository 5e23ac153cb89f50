"""`stm32ota fleet`: every agent and target on the broker, live or once as JSON/CSV, or wait for a version."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from typing import Any, Callable, TextIO

from agent.cli.broker import add_broker_args, broker_options, not_connected, parse_broker
from agent.cli.options import command, parser
from agent.errors import EXIT_OK, UsageError
from agent.mqtt.client import MqttClient
from agent.mqtt.fleet import COLUMNS, Fleet, FleetRow, changes
from agent.mqtt.watcher import Watcher, wait_for

log = logging.getLogger(__name__)

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
BAR = 10
REDRAW = 0.2  # s between table redraws at most
HEADERS = ("agent", "target", "product", "online", "installed", "latest", "status", "phase",
           "progress", "error")


@parser("fleet", "show every agent and target on the broker: live table, JSON/CSV, or wait for a version")
def _fleet_args(p: argparse.ArgumentParser) -> None:
    add_watch_args(p)
    p.add_argument("--agent", help="only this agent's targets")
    p.add_argument("--product", help="only targets of this product (required with --wait-for)")
    p.add_argument("--once", action="store_true",
                   help="print the retained state once, when no message came for --quiet-for s")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON (implies --once)")
    fmt.add_argument("--csv", action="store_true", help="print CSV (implies --once)")
    p.add_argument("--settle", type=float, default=5.0, metavar="SECONDS",
                   help="collect retained messages for at most this long (default 5)")
    p.add_argument("--wait-for", metavar="VERSION",
                   help="exit 0 once every target of --product reports VERSION installed")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="give up --wait-for after this long, naming the stragglers (default 300)")


def add_watch_args(p: argparse.ArgumentParser) -> None:
    """The broker options, and where and how long to read the agents' retained messages."""
    add_broker_args(p)
    p.add_argument("--base-topic", default="stm32ota", help="(default stm32ota)")
    p.add_argument("--discovery-prefix", default="homeassistant",
                   help="where agents publish discovery, which names each target's product "
                        "(default homeassistant)")
    p.add_argument("--quiet-for", type=float, default=1.0, metavar="SECONDS",
                   help="the retained messages are all in after this long without one (default 1)")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up when the broker does not answer within this long (default 10)")


@command("fleet")
def cmd_fleet(args: argparse.Namespace) -> int:
    """Connect read-only, then print once, wait for a version, or show changes until Ctrl-C."""
    if args.wait_for and not args.product:
        raise UsageError("--wait-for needs --product: the version belongs to one product")
    for name in ("quiet_for", "settle", "timeout", "connect_timeout"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    fleet = Fleet(args.base_topic, args.discovery_prefix)
    watcher = Watcher(fleet, client_factory(args))
    if not watcher.start(args.connect_timeout):
        watcher.stop()
        raise not_connected(watcher.client, args.broker, args.connect_timeout)
    try:
        if args.wait_for:
            return _wait(args, watcher)
        if args.once or args.json or args.csv:
            if not watcher.settle(args.quiet_for, args.settle):
                print(f"stm32ota: warning: the view may be partial: the broker did not echo the "
                      f"viewer's marker on {watcher.marker} within {args.settle:g} s (an ACL that "
                      "forbids it, or a retained burst larger than --settle allows)", file=sys.stderr)
            _print_once(args, fleet, sys.stdout)
            return EXIT_OK
        _live(args, watcher, sys.stdout)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a person leaves the live view
    finally:
        watcher.stop()
    return EXIT_OK


def client_factory(args: argparse.Namespace) -> Callable[..., Any]:
    host, port = parse_broker(args.broker)
    options = broker_options(args)

    def make(**kwargs: Any) -> Any:
        return MqttClient(host, port, **options, **kwargs)

    return make


class _Lines:
    """Print what changed in the rows given (those that changed since the last call), one
    line per target; O(rows given), not O(fleet)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last: dict[tuple[str, str], FleetRow] = {}

    def __call__(self, rows: list[FleetRow]) -> None:
        before = [self.last[r.key] for r in rows if r.key in self.last]
        for line in changes(before, rows):
            self.out.write(line + "\n")
        self.out.flush()
        self.last.update((r.key, r) for r in rows)


def _wait(args: argparse.Namespace, watcher: Watcher) -> int:
    rows = wait_for(watcher, args.wait_for, args.product, timeout=args.timeout,
                    quiet=min(args.quiet_for, args.timeout), agent=args.agent,
                    report=None if args.quiet else _Lines(sys.stderr))
    if args.json:
        _print_once(args, watcher.fleet, sys.stdout)
    else:
        names = ", ".join(f"{r.agent}/{r.target}" for r in rows)
        print(f"all {len(rows)} target(s) of {args.product} report {args.wait_for}: {names}")
    return EXIT_OK


def _rows(args: argparse.Namespace, fleet: Fleet) -> list[FleetRow]:
    return fleet.snapshot(agent=args.agent, product=args.product)


def _print_once(args: argparse.Namespace, fleet: Fleet, out: TextIO) -> None:
    rows = _rows(args, fleet)
    if args.json:
        agents = [a for a in fleet.agent_ids() if args.agent is None or a == args.agent]
        online = {a: fleet.agents.get(a) for a in agents}
        doc = {"agents": [{"agent": a, "online": online[a]} for a in agents],
               "targets": [r.as_dict() for r in rows]}
        out.write(json.dumps(doc, indent=2) + "\n")
    elif args.csv:
        out.write(to_csv(rows))
    else:
        out.write(table(rows) + "\n")


def to_csv(rows: list[FleetRow]) -> str:
    """CSV with a header line; empty cells for unknown values, booleans as true/false."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if v is None else str(v).lower() if isinstance(v, bool) else v
                    for v in r.as_dict().values()])
    return buf.getvalue()


def _progress(r: FleetRow) -> str:
    if r.status not in ("QUEUED", "IN_PROGRESS") or r.percent is None:
        return ""
    filled = int(max(0, min(100, r.percent)) * BAR // 100)
    return f"[{'#' * filled}{'.' * (BAR - filled)}] {r.percent:3.0f}%"


def _cells(r: FleetRow) -> tuple[str, ...]:
    online = {True: "yes", False: "NO", None: "?"}[r.online]
    return (r.agent, r.target, r.product or "?", online, r.installed or "", r.latest or "",
            r.status or "", r.phase or "", _progress(r), r.error_code or "")


def table(rows: list[FleetRow]) -> str:
    """A fixed-width text table of the rows (no colours, so it survives any terminal)."""
    lines = [HEADERS] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    if not rows:
        text.append("(no targets seen yet)")
    return "\n".join(text)


def _live(args: argparse.Namespace, watcher: Watcher, out: TextIO) -> None:
    """Redraw the table on a terminal; elsewhere print each change as a line. Until Ctrl-C."""
    tty = out.isatty()
    lines = _Lines(out)
    drawn = -1
    while True:
        seen = watcher.changes
        if seen != drawn:
            drawn = seen
            if tty:
                rows = _rows(args, watcher.fleet)
                out.write(f"{CLEAR}stm32ota fleet @ {args.broker} ({args.base_topic})  "
                          f"{time.strftime('%H:%M:%S')}  Ctrl-C to quit\n\n{table(rows)}\n")
                out.flush()
                time.sleep(REDRAW)  # coalesce bursts (a progress message per second per target)
            else:  # only the rows that changed: O(changes), not O(fleet), per wake-up
                lines([r for r in watcher.fleet.drain() if (args.agent in (None, r.agent))
                       and (args.product in (None, r.product))])
        watcher.wait_change(seen, 1.0)
