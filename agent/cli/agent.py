"""Handlers of the agent-side subcommands: run, check-config, keygen, sign, publish."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from agent.cli.options import command, int_auto
from agent.cli.options import parser
from agent.errors import ConfigError, UsageError

log = logging.getLogger(__name__)


@parser("run", "run the agent: MQTT-driven updates of the configured targets (what systemd starts)")
def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config.yaml")


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    """Load the config, start the service, run until SIGTERM/SIGINT."""
    from agent.config import load
    from agent.service import Service
    from agent.config.targets import flash_target

    cfg = load(args.config)
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
    return 0


@parser("check-config", "validate a config file and say exactly what is wrong and where")
def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="config.yaml")


@command("check-config")
def cmd_check_config(args: argparse.Namespace) -> int:
    """Print every problem with its location; exit 2 when there are errors."""
    from agent.config import check

    problems = check(args.path)
    for p in problems:
        print(f"{args.path}: {p}")
    errors = [p for p in problems if p.level == "error"]
    if errors:
        print(f"{args.path}: {len(errors)} error(s); nothing was started", file=sys.stderr)
        return 2
    print(f"{args.path}: OK" + (f" ({len(problems)} warning(s))" if problems else ""))
    return 0


@parser("keygen", "make an ed25519 key pair for signing releases: NAME.key (0600) and NAME.pub")
def _keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="release", metavar="NAME", help="file name stem (default release)")


@command("keygen")
def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key pair; never overwrites."""
    from agent.ota.keys import keygen

    key, pub = keygen(args.out)
    print(f"private key: {key} (keep it secret; mode 0600)\npublic key : {pub} "
          f"(copy it to each gateway and list it under trust.keys)")
    return 0


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
    from agent.flasher import image as firmware
    from agent.ota.keys import build_manifest

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
    else:
        sys.stdout.write(text)
    return 0


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


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """--broker, --username, --password-file and the TLS options of the one-shot MQTT tools."""
    p.add_argument("--broker", default="localhost:1883",
                   help="HOST:PORT (default localhost:1883; 8883 is usual with TLS)")
    p.add_argument("--username")
    p.add_argument("--password-file", help="file whose first line is the password")
    tls = p.add_argument_group("TLS (any of these turns it on)")
    tls.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) of the broker; "
                     "without it, but with another TLS option, the system CAs")
    tls.add_argument("--cert", metavar="FILE", help="client certificate (PEM), with --key")
    tls.add_argument("--key", metavar="FILE", help="private key of --cert (PEM); a password "
                     "for it is read from the environment variable STM32OTA_KEY_PASSWORD")
    tls.add_argument("--insecure", action="store_true",
                     help="do not check that the broker's certificate names --broker's host "
                          "(the certificate itself is still verified)")


def broker_options(args: argparse.Namespace) -> dict:
    """MqttClient keyword arguments (username, password, tls) from add_broker_args' options."""
    from agent.mqtt.client import TlsOptions

    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together: a client certificate needs its key")
    for name in ("password_file", "ca", "cert", "key"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--{name.replace('_', '-')} {path}: no such file")
    password = None
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\n")
        if args.username is None:
            raise UsageError("--password-file needs --username (MQTT sends no password without one)")
    tls = None
    if args.ca or args.cert or args.insecure:
        tls = TlsOptions(ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure,
                         key_password=os.environ.get("STM32OTA_KEY_PASSWORD") if args.key else None)
    return {"username": args.username, "password": password, "tls": tls}


def parse_broker(text: str) -> tuple[str, int]:
    """HOST:PORT (port optional, default 1883); [v6]:port allowed."""
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith("]") is False and ":" in host:
        return text.strip("[]"), 1883
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise UsageError(f"--broker {text!r}: expected HOST:PORT, e.g. localhost:1883") from None


@command("publish")
def cmd_publish(args: argparse.Namespace) -> int:
    """Validate the manifest locally, then publish it and wait for the broker's ack."""
    from agent.mqtt.contract import Topics, check_id
    from agent.ota.manifest import parse_manifest
    from agent.mqtt.client import MqttClient

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
    payload = fields if retain else {"op": "install", "manifest": fields}
    host, port = parse_broker(args.broker)
    client = MqttClient(host, port, client_id=f"stm32ota-publish-{os.getpid()}",
                        session_expiry=0, **broker_options(args))
    client.start()
    try:
        if not client.wait_connected(args.connect_timeout):
            raise ConfigError(f"cannot connect to the MQTT broker at {host}:{port}; check "
                              "--broker, --username, --password-file and the TLS options "
                              "(the log line above says why)", code="broker_unreachable")
        if not client.publish_wait(topic, payload, retain=retain, timeout=10):
            raise ConfigError(f"the broker at {host}:{port} did not acknowledge the message",
                              code="broker_unreachable")
    finally:
        client.stop()
    print(f"published {m.product} {m.version} to {topic}" + (" (retained)" if retain else ""))
    return 0
