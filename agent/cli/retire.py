"""`stm32ota retire`: clear what a retired agent, or one retired target, left retained on the broker."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from agent.cli.fleet import add_watch_args, client_factory
from agent.cli.broker import not_connected
from agent.cli.options import command, parser
from agent.errors import EXIT_OK, ConfigError, UsageError
from agent.mqtt.fleet import Fleet
from agent.mqtt.watcher import Watcher
from agent.mqtt.topics import Topics, check_id

log = logging.getLogger(__name__)


@parser("retire", "clear the retained state, job, availability and Home Assistant discovery of "
                  "a retired agent, or of one of its targets")
def _retire_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent", required=True, metavar="ID", help="the agent's id (agent.id)")
    p.add_argument("--target", metavar="NAME",
                   help="only this target (taken out of the agent's config); default: all of "
                        "the agent's targets and its availability")
    add_watch_args(p)


@command("retire")
def cmd_retire(args: argparse.Namespace) -> int:
    """Learn the agent's targets from its retained messages, then clear them (empty retained)."""
    topics = Topics(args.base_topic, check_id("agent", args.agent),
                    discovery_prefix=args.discovery_prefix)
    fleet = Fleet(args.base_topic, args.discovery_prefix)
    watcher = Watcher(fleet, client_factory(args))
    try:
        if not watcher.start(args.connect_timeout):
            raise not_connected(watcher.client, args.broker, args.connect_timeout)
        watcher.settle(args.quiet_for, max(5.0, args.quiet_for))
        if args.target is None and fleet.agents.get(args.agent):
            # a running agent re-publishes all of it on its next connect: stop it first
            raise ConfigError(f"agent {args.agent} is online: stop it (systemctl stop stm32ota) "
                              "before retiring it, or retire one --target it no longer has",
                              code="agent_online")
        names = [check_id("target", args.target)] if args.target else \
            [r.target for r in fleet.snapshot(agent=args.agent)]
        if not names and args.agent not in fleet.agents:
            raise UsageError(f"nothing retained for agent {args.agent} under "
                             f"{args.base_topic}/ (check --agent and --base-topic)",
                             code="no_targets")
        cleared = _clear(watcher.client, topics, names, whole=args.target is None)
    finally:
        watcher.stop()
    if not args.quiet:
        what = ", ".join(names) if names else "no targets"
        print(f"retired {args.agent}{'/' + args.target if args.target else ''}: cleared "
              f"{cleared} retained topics ({what}{', availability' if not args.target else ''})")
    return EXIT_OK


def _clear(client: Any, topics: Topics, names: list[str], whole: bool) -> int:
    """Publish an empty retained message (which deletes it) on every topic; count them."""
    doomed = [t for name in names for t in (topics.state(name), topics.job(name),
                                            topics.discovery(name))]
    if whole:
        doomed.append(topics.availability)
    for topic in doomed:
        if not client.publish_wait(topic, b"", retain=True, timeout=10):
            raise ConfigError(f"the broker did not acknowledge clearing {topic}",
                              code="broker_unreachable")
    return len(doomed)
