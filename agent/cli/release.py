"""Handlers of the release tools: keygen, sign (make a signed manifest) and publish (announce it)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timedelta, timezone

from agent.cli.broker import (add_broker_args, broker_options, duration_arg, not_connected,
                              parse_broker)
from agent.cli.options import command, int_auto, parser
from agent.errors import EXIT_OK, ConfigError, UsageError
from agent.flasher import image as firmware
from agent.mqtt.client import MqttClient
from agent.mqtt.topics import Topics, check_id
from agent.ota.keys import build_manifest, keygen
from agent.ota.manifest import parse_manifest

log = logging.getLogger(__name__)


@parser("keygen", "make an ed25519 key pair for signing releases: NAME.key (0600) and NAME.pub")
def _keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="release", metavar="NAME", help="file name stem (default release)")


@command("keygen")
def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key pair; never overwrites."""
    key, pub = keygen(args.out)
    print(f"private key: {key} (keep it secret; mode 0600)\npublic key : {pub} "
          f"(copy it to each gateway and list it under trust.keys)")
    return EXIT_OK


@parser("sign", "write the signed release manifest (JSON) for a firmware file")
def _sign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="firmware image (.hex, .srec, .bin)")
    p.add_argument("--key", required=True, help="private key made by keygen (NAME.key)")
    p.add_argument("--product", required=True)
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    p.add_argument("--url", required=True, help="where agents download the file (http/https)")
    p.add_argument("--address", type=int_auto, help="load address of a .bin (default 0x08000000)")
    p.add_argument("--chip", type=int_auto, help="product ID the image is built for, e.g. 0x435")
    p.add_argument("--title")
    p.add_argument("--release-summary")
    p.add_argument("--release-url")
    p.add_argument("--min-version")
    p.add_argument("--expires", help="YYYY-MM-DDTHH:MM:SSZ")
    p.add_argument("--rollout", type=int, help="percent of the fleet (0-100)")
    p.add_argument("-o", "--output", help="write here instead of stdout")


@command("sign")
def cmd_sign(args: argparse.Namespace) -> int:
    """Compute size and sha256, sign, write the manifest."""
    firmware.load(args.file, address=args.address,  # refuse to sign a file we could not flash
                  bin_default=firmware.DEFAULT_BIN_ADDRESS)
    manifest = build_manifest(
        args.file, key=args.key, product=args.product, version=args.version, url=args.url,
        address=args.address, chip=args.chip, title=args.title,
        release_summary=args.release_summary, release_url=args.release_url,
        min_version=args.min_version, expires=args.expires, rollout=args.rollout)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        if not args.quiet:
            print(f"wrote the signed manifest of {args.product} {args.version} to {args.output}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


@parser("publish", "announce a signed release (retained) or send it as an install command")
def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="manifest JSON written by `stm32ota sign`")
    add_broker_args(p)
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up when the broker does not answer within this long (default 10)")
    p.add_argument("--base-topic", default="stm32ota")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--target", metavar="AGENT/TARGET", help="install on one target now")
    who.add_argument("--group", help="install on every target of a group now")
    who.add_argument("--fleet", action="store_true", help="install on every target now")
    p.add_argument("--spread", type=duration_arg, default=0.0, metavar="DURATION",
                   help="with --group/--fleet: each target starts at its own fixed offset "
                        "within this window, e.g. 10m (default 0: at once)")
    p.add_argument("--expire", type=duration_arg, default=1800.0, metavar="DURATION",
                   help="an install command not delivered within this long is dropped by the "
                        "broker (MQTT 5 message expiry) and refused by the agent (not_after); "
                        "default 30m")


@command("publish")
def cmd_publish(args: argparse.Namespace) -> int:
    """Validate the manifest locally, then publish it and wait for the broker's ack."""
    with open(args.manifest, "rb") as f:
        raw = f.read()
    m = parse_manifest(raw)  # never publish what every agent would reject as malformed
    fields = json.loads(raw)
    if args.target:
        agent_id, _, target = args.target.partition("/")
        if not target:
            raise UsageError("--target takes AGENT/TARGET, e.g. gw-01/pump")
        check_id("agent", agent_id)
        topic = Topics(args.base_topic, agent_id).cmd(check_id("target", target))
    elif args.group:
        topic = Topics(args.base_topic, "x").group_cmd(check_id("group", args.group))
    elif args.fleet:
        topic = Topics(args.base_topic, "x").fleet_cmd
    else:
        topic = Topics(args.base_topic, "x").release(m.product)
    retain = not (args.target or args.group or args.fleet)
    if args.spread and not (args.group or args.fleet):
        raise UsageError("--spread goes with --group or --fleet: it spreads their targets' starts")
    payload = fields if retain else _install(fields, args.spread, args.expire)
    host, port = parse_broker(args.broker)
    client = MqttClient(host, port, client_id=f"stm32ota-publish-{os.getpid()}",
                        session_expiry=0, **broker_options(args))
    client.start()
    try:
        if not client.wait_connected(args.connect_timeout):
            raise not_connected(client, f"{host}:{port}", args.connect_timeout)
        if not client.publish_wait(topic, payload, retain=retain, timeout=10,
                                   expiry=None if retain else max(1, int(args.expire))):
            raise ConfigError(f"the broker at {host}:{port} did not acknowledge the message",
                              code="broker_unreachable")
    finally:
        client.stop()
    if not args.quiet:
        print(f"published {m.product} {m.version} to {topic}" + (" (retained)" if retain else ""))
    return EXIT_OK


def _install(manifest: dict, spread: float, expire: float) -> dict:
    """The install command: the manifest, when it stops counting, and the spread window."""
    until = datetime.now(timezone.utc) + timedelta(seconds=expire)
    cmd = {"op": "install", "manifest": manifest,
           "not_after": until.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if spread:
        cmd["spread"] = spread
    return cmd
