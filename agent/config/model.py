"""The typed, frozen values a valid config.yaml becomes (what the rest of the agent reads).

The builder in `agent.config` fills them from the schema-checked dicts; the cross-key checks
(`agent.config.checks`) read them too, which is why they live apart from both.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from agent.config.values import did_you_mean
from agent.errors import ConfigError
from agent.pins.sequence import Step
from agent.stm32.bootloader import Timeouts

log = logging.getLogger(__name__)


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
    name: str = ""  # display name in Home Assistant (default: the host name)


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
    progress_interval: float = 5.0  # seconds between progress messages inside a phase, at least
    jitter: float = 5.0  # seconds: bound of the random delay before a reconnect / HA re-send


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
