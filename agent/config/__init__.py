"""config.yaml -> typed, frozen values; strict with people, every problem reported at once.

    cfg = load("/etc/stm32ota/config.yaml")     # Config, or ConfigInvalid (a ConfigError)
    problems = check(path)                      # errors and warnings, for `stm32ota check-config`
    cfg = load_for_run(path)                    # load + everything `run` needs at start
    cfg.target("pump").link                     # UartLinkConfig | I2cLinkConfig
    reference_markdown()                        # docs/configuration.md's config reference

Keys, kinds and defaults live in one table (`agent.config.schema`); this module turns the
checked values into the dataclasses of `agent.config.model` and runs the checks that span keys
(`agent.config.checks`: ports and GPIO lines used twice, sequences that drive pins that are
not wired, ...). `load` and `loads` never touch hardware, files other than the config
itself (and /etc/machine-id for the default agent id), or the environment. `check` and
`load_for_run` add the startup checks (`agent.config.startup`: trust keys load, secrets
resolve, TLS files load, state and cache folders are usable), so `check-config` refuses
exactly what `run` would refuse at start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import socket
from pathlib import Path
from typing import Any

from agent.config.checks import cross_check
from agent.config.model import (
    AgentConfig, Config, DownloadConfig, I2cLinkConfig, LinkConfig, MqttConfig, PinLine,
    PinsConfig, QuirksConfig, RetriesConfig, Secret, TargetConfig, TlsConfig, TrustConfig,
    UartLinkConfig,
)
from agent.config.schema import ROOT, reference_markdown
from agent.config.startup import startup_checks
from agent.config.values import INVALID, Context, Problem
from agent.config.yamlfile import parse_yaml
from agent.errors import ConfigError, ConfigInvalid
from agent.pins.sequence import DEFAULT_ENTER, DEFAULT_EXIT, parse_sequence
from agent.stm32.bootloader import Timeouts

log = logging.getLogger(__name__)

__all__ = [
    "Config", "AgentConfig", "MqttConfig", "TlsConfig", "TrustConfig", "DownloadConfig",
    "TargetConfig", "UartLinkConfig", "I2cLinkConfig", "PinsConfig", "PinLine", "Secret",
    "RetriesConfig", "QuirksConfig", "Problem", "ConfigInvalid", "load", "loads", "check",
    "load_for_run",
    "reference_markdown", "target_link_options", "default_agent_id",
    "host_name",
]

# machine-id(5): systemd's, and D-Bus's older copy where systemd is absent
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def host_name(hostname: str | None = None) -> str:
    """The host name cut to its first label and to [A-Za-z0-9_-]; 'stm32ota' if nothing is left."""
    name = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
    return name or "stm32ota"


def machine_id(paths: tuple[str, ...] = MACHINE_ID_FILES) -> str | None:
    """This machine's id (32 hex digits, machine-id(5)), or None where there is none."""
    for path in paths:
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if re.fullmatch(r"[0-9a-fA-F]{32}", text):
            return text.lower()
    return None


def default_agent_id(machine: str | None = None, hostname: str | None = None) -> str:
    """An id unique per machine: 12 hex digits of HMAC-SHA256 keyed by the machine id over
    "stm32ota" (machine-id(5) asks applications to use such an application-specific hash,
    never the id itself); the sanitised host name only where the machine has no id. Host
    names are not unique: every cloned Raspberry Pi image is `raspberrypi`, and two agents
    with one id take each other's MQTT session over."""
    machine = machine if machine is not None else machine_id()
    if machine is None:
        log.warning("no machine id in %s: agent.id defaults to the host name, which clones "
                    "share; set agent.id", " or ".join(MACHINE_ID_FILES))
        return host_name(hostname)
    return hmac.new(machine.encode("ascii"), b"stm32ota", hashlib.sha256).hexdigest()[:12]


def _secret(raw: dict[str, Any], prefix: str, where: str) -> Secret:
    return Secret(raw[prefix], raw[f"{prefix}_file"], raw[f"{prefix}_env"], where)


def _build_mqtt(m: dict[str, Any], agent_id: str) -> MqttConfig:
    tls = None
    if m["tls"] is not None:
        t = m["tls"]
        tls = TlsConfig(t["ca"], t["cert"], t["key"], _secret(t, "key_password",
                        "mqtt.tls.key_password"), t["insecure"])
    port = m["port"] if m["port"] is not None else (8883 if tls else 1883)
    return MqttConfig(
        host=m["host"], port=port, username=m["username"],
        password=_secret(m, "password", "mqtt.password"), tls=tls,
        base_topic=m["base_topic"], discovery_prefix=m["discovery_prefix"],
        keepalive=m["keepalive"], client_id=m["client_id"] or f"stm32ota-{agent_id}",
        reconnect_max=m["reconnect_max"], progress_interval=m["progress_interval"],
        jitter=m["jitter"])


def _build_pins(p: dict[str, Any]) -> PinsConfig:
    def line(d: dict[str, Any] | None) -> PinLine | None:
        return PinLine(d["line"], d["active_low"]) if d else None

    chip = p["chip"]
    if chip is None and p["backend"] in ("auto", "libgpiod"):
        chip = "/dev/gpiochip0"
    elif chip is not None and "/" not in chip:
        chip = f"/dev/{chip}"  # `gpiochip4` means the device of that name
    return PinsConfig(p["backend"], chip, line(p["nrst"]), line(p["boot0"]))


def _build_target(t: dict[str, Any], trust_downgrade: bool) -> TargetConfig:
    link_raw = dict(t["link"])
    kind = link_raw.pop("type")
    link: LinkConfig = UartLinkConfig(**link_raw) if kind == "uart" else I2cLinkConfig(**link_raw)
    pins = _build_pins(t["pins"])
    wired = pins.backend != "none"
    enter = t["enter_bootloader"] if t["enter_bootloader"] is not None else \
        parse_sequence(DEFAULT_ENTER if wired else ())
    leave = t["exit_bootloader"] if t["exit_bootloader"] is not None else \
        parse_sequence(DEFAULT_EXIT if wired else ())
    timeouts = Timeouts(**{k: v for k, v in t["timeouts"].items() if v is not None})
    if isinstance(link, I2cLinkConfig):
        timeouts = Timeouts(**{**timeouts.__dict__, "busy_poll_interval": link.busy_poll})
    downgrade = t["allow_downgrade"]
    return TargetConfig(
        name=t["name"], product=t["product"], groups=t["groups"], link=link, pins=pins,
        enter_bootloader=enter, exit_bootloader=leave, expect_chip=t["expect_chip"],
        verify=t["verify"], skip_unchanged=t["skip_unchanged"], auto_install=t["auto_install"],
        allow_downgrade=trust_downgrade if downgrade is None else downgrade,
        retries=RetriesConfig(**t["retries"]), timeouts=timeouts,
        quirks=QuirksConfig(**t["quirks"]))


def _build(data: dict[str, Any], source: Path) -> Config:
    a, tr = data["agent"], data["trust"]
    agent = AgentConfig(a["id"] or default_agent_id(), a["state_dir"], a["cache_dir"],
                        a["cache_max"], a["log_level"], name=a["name"] or host_name())
    trust = TrustConfig(tr["keys"], tr["allow_unsigned"], tr["allow_downgrade"],
                        tr["max_image_size"], DownloadConfig(**tr["download"]))
    targets = tuple(_build_target(t, trust.allow_downgrade) for t in data["targets"])
    return Config(agent, _build_mqtt(data["mqtt"], agent.id), trust, targets, source)


def _read(text: str, source: Path) -> tuple[Config | None, Context]:
    ctx = Context(base=source.parent)
    raw = parse_yaml(text, ctx)
    if raw is INVALID:
        return None, ctx
    if raw is None:
        ctx.add("", "the file is empty", "start from the example config.yaml in the repository")
        return None, ctx
    data = ROOT(raw, "", ctx)
    if data is not INVALID:
        cross_check(data, ctx)
    if ctx.errors or data is INVALID:
        return None, ctx
    return _build(data, source), ctx


def _raise_or_return(cfg: Config | None, ctx: Context, source: Path | str) -> Config:
    for p in ctx.problems:
        if p.level == "warning":
            log.warning("%s: %s", source, p)
    if cfg is None or ctx.errors:
        raise ConfigInvalid(source, _in_file_order(ctx.errors))
    return cfg


def loads(text: str, source: Path | str = "config.yaml") -> Config:
    """Validate config text; `source` names it in messages and anchors relative paths."""
    cfg, ctx = _read(text, Path(source).absolute())
    return _raise_or_return(cfg, ctx, source)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(f"cannot read config {path}: {reason}", code="config_unreadable") \
            from err


def load(path: Path | str) -> Config:
    """Read and validate a config file; ConfigInvalid lists every problem in it."""
    path = Path(path)
    return loads(_text(path), path)


def _checked(path: Path) -> tuple[Config | None, Context]:
    """The config and its problems, the startup checks included (what check-config shows)."""
    cfg, ctx = _read(_text(path), path.absolute())
    if cfg is not None:
        startup_checks(cfg, ctx)
    return cfg, ctx


def load_for_run(path: Path | str) -> Config:
    """`load` plus every check `run` needs at start; ConfigInvalid names each key and line."""
    path = Path(path)
    cfg, ctx = _checked(path)
    return _raise_or_return(cfg, ctx, path)


def check(path: Path | str) -> list[Problem]:
    """Every error and warning `load_for_run` would give (for `stm32ota check-config`)."""
    path = Path(path)
    try:
        _cfg, ctx = _checked(path)
    except ConfigError as err:
        return [Problem("", str(err), "check the path and permissions")]
    return _in_file_order(ctx.problems)


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


def target_link_options(target: TargetConfig) -> dict[str, Any]:
    """The target's link as keyword arguments (the field names of session.LinkSpec)."""
    return dict(target.link.__dict__)
