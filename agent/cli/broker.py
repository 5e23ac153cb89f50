"""The options of the one-shot MQTT tools (publish, fleet, retire, demo): broker, login, TLS,
and durations written as config.yaml writes them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from agent.config.values import INVALID, Context, Duration
from agent.errors import ConfigError, UsageError
from agent.mqtt.tls import TlsOptions


def duration_arg(text: str) -> float:
    """A duration as config.yaml writes them (30s, 10m, 1h30m) in seconds, 0 or more."""
    ctx = Context(base=Path("."))
    seconds = Duration(lo=0)(text, "duration", ctx)
    if seconds is INVALID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 10m or 1h)")
    return float(seconds)


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


def not_connected(client: Any, broker: str, timeout: float) -> ConfigError:
    """The error of a one-shot tool whose MqttClient did not connect: broker_auth for a
    refused login (at once; retrying cannot fix it), broker_unreachable after the timeout."""
    if client.refused:
        return ConfigError(f"the MQTT broker at {broker} {client.refused.replace('the broker ', '')}; "
                           "check --username and --password-file", code="broker_auth")
    why = f": {client.last_failure}" if client.last_failure else " (no answer)"
    return ConfigError(f"cannot connect to the MQTT broker at {broker} within {timeout:g} s{why}; "
                       "check --broker, --username, --password-file and the TLS options",
                       code="broker_unreachable")


def parse_broker(text: str) -> tuple[str, int]:
    """HOST:PORT (port optional, default 1883); [v6]:port allowed."""
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith("]") is False and ":" in host:
        return text.strip("[]"), 1883
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise UsageError(f"--broker {text!r}: expected HOST:PORT, e.g. localhost:1883") from None
