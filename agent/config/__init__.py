"""config.yaml -> typed, frozen values; strict with people, every problem reported at once.

    cfg = load("/etc/stm32ota/config.yaml")     # Config, or ConfigInvalid (a ConfigError)
    problems = check(path)                      # errors and warnings, for `stm32ota check-config`
    cfg.target("pump").link                     # UartLinkConfig | I2cLinkConfig
    reference_markdown()                        # the README's config reference

Keys, kinds and defaults live in one table (`agent.config.schema`); this module turns the
checked values into dataclasses and runs the checks that span keys (ports and GPIO lines used
twice, sequences that drive pins that are not wired, ...). Reading a config never touches
hardware, files other than the config itself, or the environment: secrets are resolved by
`Secret.resolve()` when they are needed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from agent.config.checks import cross_check, file_warnings
from agent.config.schema import ROOT, reference_markdown
from agent.config.values import INVALID, Context, Problem, did_you_mean, parse_yaml
from agent.errors import ConfigError
from agent.pins.sequence import Step
from agent.stm32.bootloader import Timeouts

log = logging.getLogger(__name__)

__all__ = [
    "Config", "AgentConfig", "MqttConfig", "TlsConfig", "TrustConfig", "DownloadConfig",
    "TargetConfig", "UartLinkConfig", "I2cLinkConfig", "PinsConfig", "PinLine", "Secret",
    "RetriesConfig", "QuirksConfig", "Problem", "ConfigInvalid", "load", "loads", "check",
    "reference_markdown", "target_link_options", "default_agent_id",
]


class ConfigInvalid(ConfigError):
    """config.yaml has problems; `.problems` lists every one (location, message, hint)."""

    def __init__(self, source: Path | str, problems: list[Problem]) -> None:
        self.problems = problems
        n = len(problems)
        lines = [f"{source}: {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Secret:
    """A password given inline, in a file or in an environment variable (at most one)."""

    value: str | None = field(default=None, repr=False)
    file: Path | None = None
    env: str | None = None
    where: str = ""

    @property
    def given(self) -> bool:
        """True when any of the three ways was used."""
        return self.value is not None or self.file is not None or self.env is not None

    def resolve(self) -> str | None:
        """The secret itself (file: its first line), or None if none is configured."""
        if self.value is not None:
            return self.value
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8").splitlines()[0] if \
                    self.file.stat().st_size else ""
            except OSError as err:
                raise ConfigError(f"{self.where}_file: cannot read {self.file}: "
                                  f"{err.strerror or err}") from err
        if self.env is not None:
            if self.env not in os.environ:
                raise ConfigError(f"{self.where}_env: environment variable {self.env} is not "
                                  "set; set it in the service's environment (systemd: "
                                  "Environment= or EnvironmentFile=)")
            return os.environ[self.env]
        return None


@dataclass(frozen=True)
class AgentConfig:
    """`agent:` this gateway."""

    id: str
    state_dir: Path
    cache_dir: Path
    cache_max: int
    log_level: str


@dataclass(frozen=True)
class TlsConfig:
    """`mqtt.tls:` (None in MqttConfig means plain MQTT)."""

    ca: Path | None
    cert: Path | None
    key: Path | None
    key_password: Secret
    insecure: bool


@dataclass(frozen=True)
class MqttConfig:
    """`mqtt:` the broker."""

    host: str
    port: int
    username: str | None
    password: Secret
    tls: TlsConfig | None
    base_topic: str
    discovery_prefix: str
    keepalive: int  # seconds
    client_id: str
    reconnect_max: float  # seconds


@dataclass(frozen=True)
class DownloadConfig:
    """`trust.download:` how firmware is fetched."""

    timeout: float
    retries: int
    backoff: float
    deadline: float
    min_rate: int  # bytes per second
    allow_redirects: str  # "same-host" or "any"


@dataclass(frozen=True)
class TrustConfig:
    """`trust:` which releases are accepted."""

    keys: tuple[Path, ...]
    allow_unsigned: bool
    allow_downgrade: bool
    max_image_size: int
    download: DownloadConfig


@dataclass(frozen=True)
class UartLinkConfig:
    """`link: {type: uart}` (AN3155)."""

    port: str
    baud: int | str  # a rate, or "auto"
    parity: str
    inter_byte_delay: float
    type: str = "uart"


@dataclass(frozen=True)
class I2cLinkConfig:
    """`link: {type: i2c}` (AN4221)."""

    bus: int
    address: int
    read_chunk: int
    write_chunk: int
    busy_poll: float
    type: str = "i2c"


LinkConfig = Union[UartLinkConfig, I2cLinkConfig]


@dataclass(frozen=True)
class PinLine:
    """One wired signal: a GPIO offset, a libgpiod line name, or rts/dtr."""

    line: int | str
    active_low: bool


@dataclass(frozen=True)
class PinsConfig:
    """`pins:` NRST/BOOT0 wiring; nrst and boot0 are None only with backend none."""

    backend: str
    chip: str | None
    nrst: PinLine | None
    boot0: PinLine | None


@dataclass(frozen=True)
class RetriesConfig:
    """`retries:` bounded retry limits."""

    connect: int
    write: int


@dataclass(frozen=True)
class QuirksConfig:
    """`quirks:` chip workarounds."""

    i2c_erase_nack: str


@dataclass(frozen=True)
class TargetConfig:
    """One STM32 wired to this gateway."""

    name: str
    product: str
    groups: tuple[str, ...]
    link: LinkConfig
    pins: PinsConfig
    enter_bootloader: tuple[Step, ...]
    exit_bootloader: tuple[Step, ...]
    expect_chip: int | None
    verify: str
    skip_unchanged: bool
    auto_install: bool
    allow_downgrade: bool
    retries: RetriesConfig
    timeouts: Timeouts
    quirks: QuirksConfig


@dataclass(frozen=True)
class Config:
    """A whole, valid config.yaml."""

    agent: AgentConfig
    mqtt: MqttConfig
    trust: TrustConfig
    targets: tuple[TargetConfig, ...]
    source: Path

    def target(self, name: str) -> TargetConfig:
        """The target called `name`; ConfigError with a "did you mean" otherwise."""
        for t in self.targets:
            if t.name == name:
                return t
        names = [t.name for t in self.targets]
        raise ConfigError(f"{self.source}: no target named {name!r}; "
                          f"{did_you_mean(name, names)}", code="unknown_target")


def default_agent_id(hostname: str | None = None) -> str:
    """The host name cut to its first label and to [A-Za-z0-9_-]; 'stm32ota' if nothing is left."""
    name = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
    return name or "stm32ota"


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
        reconnect_max=m["reconnect_max"])


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
    from agent.pins.sequence import DEFAULT_ENTER, DEFAULT_EXIT, parse_sequence

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
                        a["cache_max"], a["log_level"])
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


def loads(text: str, source: Path | str = "config.yaml") -> Config:
    """Validate config text; `source` names it in messages and anchors relative paths."""
    cfg, ctx = _read(text, Path(source).absolute())
    for p in ctx.problems:
        if p.level == "warning":
            log.warning("%s: %s", source, p)
    if cfg is None:
        raise ConfigInvalid(source, _in_file_order(ctx.errors))
    return cfg


def load(path: Path | str) -> Config:
    """Read and validate a config file; ConfigInvalid lists every problem in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(f"cannot read config {path}: {reason}", code="config_unreadable") \
            from err
    return loads(text, path)


def check(path: Path | str) -> list[Problem]:
    """Every error and warning in a config file (for `stm32ota check-config`); never raises."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        return [Problem("", f"cannot read {path}: {reason}", "check the path and permissions")]
    cfg, ctx = _read(text, path.absolute())
    if cfg is not None:
        file_warnings(cfg, ctx)
    return _in_file_order(ctx.problems)


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


def target_link_options(target: TargetConfig) -> dict[str, Any]:
    """The target's link as keyword arguments (the field names of session.LinkSpec)."""
    return dict(target.link.__dict__)
