"""The one schema table of config.yaml: every key, its kind, default and a one-line description.

`agent.config` validates against these tables and `reference_markdown()` renders them for the
docs/configuration.md, so the documentation cannot drift from what is accepted. Defaults are written in the
file's own language ("60s", "64MiB") and parsed by the same kind as a user's value.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any

from agent.config.values import (
    INVALID, NAME_RE, Boolean, Choice, Context, Duration, Integer, ListOf, PathKind, Size, Text,
    did_you_mean, join, type_name,
)
from agent.errors import ConfigError
from agent.pins.modem import MODEM_LINES
from agent.pins.sequence import DEFAULT_ENTER, DEFAULT_EXIT, parse_sequence
from agent.stm32.bootloader import Timeouts

log = logging.getLogger(__name__)

REQUIRED: Any = object()  # marker default: the key must be given


@dataclass(frozen=True)
class Key:
    """One key of a mapping: how to read it, its default, and what it is for."""

    name: str
    kind: Any
    doc: str
    default: Any = None  # REQUIRED, None (not set) or a raw value in the file's own language
    default_doc: str = ""  # how the default reads in the reference when it is computed
    example: str = ""  # shown in the hint when a required key is missing


class Table:
    """A mapping with a fixed set of keys; reading it gives a dict with every key filled in."""

    def __init__(self, *keys: Key) -> None:
        self.keys = {k.name: k for k in keys}

    def describe(self) -> str:
        """Type column of the reference table."""
        return "mapping"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            ctx.add(where, f"expected a mapping (key: value), got {type_name(value)}")
            return INVALID
        for name in value:
            if name not in self.keys:
                ctx.add(join(where, str(name)), "unknown key", did_you_mean(str(name), self.keys))
        out: dict[str, Any] = {}
        for key in self.keys.values():
            here = join(where, key.name)
            if key.name in value:
                out[key.name] = key.kind(value[key.name], here, ctx)
            elif key.default is REQUIRED:
                hint = f"e.g. {key.name}: {key.example}" if key.example else ""
                ctx.add(here, f"missing: {key.doc}", hint)
                out[key.name] = INVALID
            elif key.default is None:
                out[key.name] = None
            else:
                out[key.name] = key.kind(key.default, here, ctx)
        return out


class LinkVariants:
    """`targets[].link`: a mapping whose keys depend on its `type`."""

    DOCS = ("uart: AN3155", "i2c: AN4221")

    def __init__(self, **variants: Table) -> None:
        self.variants = variants

    def describe(self) -> str:
        """Type column of the reference table."""
        return "mapping (by type)"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if not isinstance(value, dict):
            ctx.add(where, f"expected a mapping with a type, got {type_name(value)}",
                    "e.g. link: {type: uart, port: /dev/ttyAMA0}")
            return INVALID
        kind = value.get("type")
        if not isinstance(kind, str) or kind not in self.variants:
            msg = "missing: the link type" if kind is None else f"unknown link type {kind!r}"
            ctx.add(join(where, "type"), msg, did_you_mean(str(kind), self.variants))
            return INVALID
        rest = {k: v for k, v in value.items() if k != "type"}
        table = self.variants[kind]
        for name in rest:
            others = [t for t, tab in self.variants.items() if t != kind and name in tab.keys]
            if name not in table.keys and others:
                ctx.add(join(where, name), f"not a key of a {kind} link",
                        f"'{name}' belongs to type: {others[0]}")
        out = table({k: v for k, v in rest.items()
                     if k in table.keys or not any(k in t.keys for t in self.variants.values())},
                    where, ctx)
        if out is not INVALID:
            out["type"] = kind
        return out


class Sequence:
    """A reset sequence: a list of steps (or one comma-separated string) -> parsed Steps."""

    def describe(self) -> str:
        """Type column of the reference table."""
        return "list of steps"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        try:
            return parse_sequence(value, where)
        except ConfigError as err:
            # its message starts with the location (maybe of one step): keep that as `where`
            text = str(err)
            found = re.match(rf"{re.escape(where)}(\[\d+\])?: ", text)
            if found:
                where, text = where + (found.group(1) or ""), text[found.end():]
            message, _, hint = text.partition("; ")
            ctx.add(where, message, hint or "e.g. [nrst low, boot0 high, 10ms, nrst high, 100ms]")
            return INVALID


NAME = Text(NAME_RE, "name ([A-Za-z0-9_-]+)")
POSITIVE = Duration(lo=0.001)

AGENT = Table(
    Key("id", NAME, "this gateway's id in MQTT topics; unique per gateway",
        default_doc="12 hex digits hashed from /etc/machine-id (the host name where there is none)"),
    Key("name", Text(), "this gateway's name in Home Assistant", default_doc="host name"),
    Key("state_dir", PathKind(), "where job state survives restarts", "/var/lib/stm32ota"),
    Key("cache_dir", PathKind(), "where verified images are kept", "/var/cache/stm32ota"),
    Key("cache_max", Size(), "largest total size of cache_dir", "64MiB"),
    Key("log_level", Choice("debug", "info", "warning", "error"), "how much to log", "info"),
)

TLS = Table(
    Key("ca", PathKind(), "CA certificate file (PEM) of the broker", default_doc="system CAs"),
    Key("cert", PathKind(), "client certificate file (PEM), for brokers that want one"),
    Key("key", PathKind(), "private key file of `cert` (PEM)"),
    Key("key_password", Text(), "password of `key` in the YAML (prefer the next two)"),
    Key("key_password_file", PathKind(), "file holding the password of `key`"),
    Key("key_password_env", Text(what="variable name"), "environment variable holding it"),
    Key("insecure", Boolean(), "skip the broker host name check (testing only)", False),
)

MQTT = Table(
    Key("host", Text(what="host name"), "broker host name or address", REQUIRED,
        example="homeassistant.local"),
    Key("port", Integer(1, 65535), "broker port", default_doc="`1883`; `8883` with tls"),
    Key("username", Text(), "user name at the broker"),
    Key("password", Text(), "password in the YAML (works; password_file is better)"),
    Key("password_file", PathKind(), "file whose first line is the password"),
    Key("password_env", Text(what="variable name"), "environment variable holding the password"),
    Key("tls", TLS, "connect with TLS (a mapping; `tls: {}` uses the system CAs)"),
    Key("base_topic", Text(what="MQTT topic prefix"), "first level of every topic", "stm32ota"),
    Key("discovery_prefix", Text(what="MQTT topic prefix"), "Home Assistant discovery prefix",
        "homeassistant"),
    Key("keepalive", Duration(lo=1, hi=65535, whole=True), "MQTT keepalive", "60s"),
    Key("client_id", Text(), "MQTT client id", default_doc="`stm32ota-<agent id>`"),
    Key("reconnect_max", Duration(lo=1), "longest wait between reconnect attempts", "60s"),
    Key("progress_interval", Duration(lo=0), "progress inside a phase, not retained, at most "
        "this often and only after another 10% of the job (phase changes and the result are "
        "retained at once)", "5s"),
    Key("jitter", Duration(lo=0, hi=3600), "wait a random time up to this before reconnecting "
        "after a lost connection and before answering Home Assistant's `online`, so a fleet "
        "does not come back in one second (raise it for large fleets)", "5s"),
)

DOWNLOAD = Table(
    Key("timeout", POSITIVE, "give up on a stalled connection or read after this", "30s"),
    Key("retries", Integer(0, 100), "further attempts after a failed download", 3),
    Key("backoff", Duration(), "wait before the first retry (doubles each time)", "2s"),
    Key("deadline", POSITIVE, "give up on a download, retries included, after this", "30m"),
    Key("min_rate", Size(lo=0), "slowest transfer accepted, per second, averaged over "
        "`timeout` (`0B`: only a stall fails)", "1KiB"),
    Key("allow_redirects", Choice("same-host", "any"), "follow redirects to the same host and "
        "port only, or to any host", "same-host"),
)

TRUST = Table(
    Key("keys", ListOf(PathKind()), "public key files made by `stm32ota keygen`", [],
        default_doc="none"),
    Key("allow_unsigned", Boolean(), "accept manifests without a valid signature", False),
    Key("allow_downgrade", Boolean(), "accept releases not newer than the installed one", False),
    Key("max_image_size", Size(), "largest firmware download accepted", "4MiB"),
    Key("download", DOWNLOAD, "how firmware is fetched", {}),
)

class BaudKind(Integer):
    """A baud rate, or "auto" (the link steps down from 115200 until the bootloader answers)."""

    def describe(self) -> str:
        """Type column of the reference table."""
        return "integer or auto"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        return "auto" if value == "auto" else super().__call__(value, where, ctx)


UART_LINK = Table(
    Key("port", Text(what="serial port"), "serial device or pyserial URL", REQUIRED,
        example="/dev/ttyAMA0"),
    # AN3155 / AN2606: autobaud tested 1200..115200; stm32flash allows up to 4 Mbaud. auto: a
    # ROM measuring 0x7F in software may be 5 % off at 115200 (AN2606 Table 6), over AN3155's 2.5 %
    Key("baud", BaudKind(1200, 4_000_000), "baud rate, or auto: 115200 stepping down to 19200 "
        "until the bootloader answers", "auto"),
    # AN3155 2: the bootloader speaks 8E1; "none" only for adapters that cannot do parity
    Key("parity", Choice("even", "none"), "parity", "even"),
    # seed notes: the L432 dropped bytes from an ESP32 without 1 ms between them
    Key("inter_byte_delay", Duration(hi=1.0), "pause after each byte sent", "0ms"),
)

I2C_LINK = Table(
    Key("bus", Integer(0, 255), "I2C bus number (/dev/i2c-N)", REQUIRED, example="1"),
    # AN2606: 7-bit address per product, e.g. 0x48 for the L43x
    Key("address", Integer(0x03, 0x77, hex=True), "7-bit bootloader address", REQUIRED,
        example="0x48"),
    # AN4221: at most 256 bytes per read/write; the seed's ESP32 could only do 32/64
    Key("read_chunk", Integer(1, 256), "bytes per READ_MEMORY", 256),
    Key("write_chunk", Integer(1, 256), "bytes per WRITE_MEMORY", 256),
    # AN4221 4.2: the host polls one byte while the answer is BUSY 0x76
    Key("busy_poll", Duration(lo=0.0001, hi=1.0), "pause between BUSY polls", "2ms"),
)

class Line:
    """A GPIO line offset, a libgpiod line name, or rts/dtr (which fits the backend: later)."""

    def describe(self) -> str:
        """Type column of the reference table."""
        return "integer \\| line name \\| rts \\| dtr"

    def __call__(self, value: Any, where: str, ctx: Context) -> Any:
        if isinstance(value, str) and value.strip() and not value.strip().isdigit():
            name = value.strip()
            return name.lower() if name.lower() in MODEM_LINES else name
        return Integer(0, 1023)(value, where, ctx)


def pin_table(active_low: bool) -> Table:
    """nrst and boot0 differ only in their default polarity."""
    return Table(
        Key("line", Line(), "GPIO line offset (BCM number on a Pi) or libgpiod line name; "
            "rts/dtr with the modem backend",
            REQUIRED, example="17"),
        Key("active_low", Boolean(), "the line is asserted by driving it low", active_low),
    )


PINS = Table(
    Key("backend", Choice("auto", "libgpiod", "rpigpio", "modem", "none", "mock"),
        "how NRST and BOOT0 are driven", REQUIRED, example="auto"),
    # Pi 5: the header's RP1 chip was gpiochip4 until the late-2024 kernels renumbered it to
    # gpiochip0 (keeping gpiochip4 as an alias); `gpiodetect` lists it as pinctrl-rp1
    Key("chip", Text(what="gpiochip"), "GPIO chip (libgpiod, auto, mock); a bare name means "
        "/dev/NAME. Pi 5: the header is gpiochip4 on kernels before late 2024, gpiochip0 on "
        "newer ones (gpiodetect: pinctrl-rp1)", default_doc="`/dev/gpiochip0`"),
    Key("nrst", pin_table(True), "the reset line (required unless backend is none)"),
    Key("boot0", pin_table(False), "the BOOT0 line (required unless backend is none)"),
)

_TIMEOUT_DOCS = {
    "sync": "ACK of the 0x7F autobaud byte",
    "byte": "ACK of an ordinary command or a short reply",
    "write_block": "ACK after one WRITE_MEMORY block",
    "erase_page": ("per page or sector in one erase command, at least (big sectors get 3x "
                   "the chip table's typical time)"),
    "mass_erase": ("whole-chip erase, at least (1.5x the sum of the table's page times if "
                   "longer)"),
    "checksum": "CRC command answer",
    "unprotect": "readout/write unprotect (mass-erases first)",
    "reset_settle": "pause while the chip resets after a protection command",
}


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


# Overrides of agent.stm32.bootloader.Timeouts; busy_poll_interval comes from link.busy_poll.
TIMEOUTS = Table(*(
    Key(f.name, POSITIVE, _TIMEOUT_DOCS.get(f.name, f"Timeouts.{f.name}"),
        default_doc=f"`{_seconds(f.default)}`")
    for f in dataclasses.fields(Timeouts) if f.name != "busy_poll_interval"
))

RETRIES = Table(
    # further tries, as everywhere (write, download): 0 is one attempt; 2 keeps the 3 attempts
    # a flasher Target makes by default
    Key("connect", Integer(0, 100), "further tries to reach the bootloader (reset + sync)", 2),
    Key("write", Integer(0, 100), "further tries of one failed block write", 3),
)

QUIRKS = Table(
    # seed notes: the L432 sends no ACK after an I2C erase (NACK when polled), erase done anyway
    Key("i2c_erase_nack", Choice("verify", "strict"), "a missing ACK after an I2C erase: "
        "`verify` checks the pages are blank and goes on, `strict` fails", "verify"),
)

TARGET = Table(
    Key("name", NAME, "target id in MQTT topics", REQUIRED, example="pump"),
    Key("product", NAME, "which releases apply (`<base>/release/<product>`)", REQUIRED,
        example="pump-ctrl"),
    Key("groups", ListOf(NAME), "groups for `<base>/group/<group>/cmd`", []),
    Key("link", LinkVariants(uart=UART_LINK, i2c=I2C_LINK), "how the bootloader is reached",
        REQUIRED, example="{type: uart, port: /dev/ttyAMA0}"),
    Key("pins", PINS, "how NRST and BOOT0 are driven", REQUIRED, example="{backend: none}"),
    Key("enter_bootloader", Sequence(), "steps that start the ROM bootloader",
        default_doc=f"`[{', '.join(DEFAULT_ENTER)}]`; none with backend none"),
    Key("exit_bootloader", Sequence(), "steps that start the application",
        default_doc=f"`[{', '.join(DEFAULT_EXIT)}]`; none with backend none"),
    Key("expect_chip", Integer(0, 0xFFF, hex=True), "PID the chip must answer (e.g. 0x435)",
        default_doc="any"),
    Key("verify", Choice("auto", "crc", "readback", refused={
        "none": "the agent always verifies what it wrote; `stm32ota flash --no-verify` "
                "exists for one-off bench work"}),
        "how written flash is checked (auto: the bootloader's CRC where it has one, else a CRC "
        "computed on the chip when NRST and BOOT0 are wired, else read-back)", "auto"),
    Key("skip_unchanged", Boolean(), "leave pages alone that already hold the image (false: "
        "erase and write every page the image covers)", True),
    Key("auto_install", Boolean(), "install announced releases without a command", False),
    Key("allow_downgrade", Boolean(), "override trust.allow_downgrade for this target",
        default_doc="`trust.allow_downgrade`"),
    Key("retries", RETRIES, "retry limits", {}),
    Key("timeouts", TIMEOUTS, "bootloader deadline overrides", {}),
    Key("quirks", QUIRKS, "chip workarounds", {}),
)

ROOT = Table(
    Key("agent", AGENT, "this gateway", {}),
    Key("mqtt", MQTT, "the broker", REQUIRED, example="{host: homeassistant.local}"),
    Key("trust", TRUST, "which releases are accepted", {}),
    Key("targets", ListOf(TARGET, unique=False), "the STM32s wired to this gateway", REQUIRED,
        example="[{name: pump, product: pump-ctrl, link: ..., pins: ...}]"),
)


def _sections(table: Table, prefix: str, title: str,
              variant: str = "") -> list[tuple[str, str, Table, str]]:
    out = [(prefix, title, table, variant)]
    for key in table.keys.values():
        kind = key.kind.item if isinstance(key.kind, ListOf) else key.kind
        path = join(prefix, key.name) + ("[]" if isinstance(key.kind, ListOf) else "")
        if isinstance(kind, Table):
            out += _sections(kind, path, f"`{path}`")
        elif isinstance(kind, LinkVariants):
            for name, sub in kind.variants.items():
                out += _sections(sub, path, f"`{path}` with `type: {name}`", name)
    return out


def _default_text(key: Key) -> str:
    if key.default_doc:
        return key.default_doc
    if key.default is REQUIRED:
        return "**required**"
    if key.default is None:
        return "not set"
    if isinstance(key.default, bool):
        return str(key.default).lower()
    if isinstance(key.default, (list, dict)):
        return "empty" if isinstance(key.default, list) else "defaults"
    return f"`{key.default}`"


def reference_markdown() -> str:
    """The config.yaml reference as Markdown tables, one per section (for docs/configuration.md)."""
    lines = ["Durations carry a unit (`10ms`, `2s`, `5m`, `1h`), sizes too (`512KiB`, `64MiB`);",
             "addresses and PIDs may be hex (`0x48`). Relative paths are taken from the",
             "folder of the config file. Unknown keys are errors.", ""]
    for prefix, title, table, variant in _sections(ROOT, "", "Top level"):
        lines += [f"### {title}", "", "| key | type | default | description |",
                  "|---|---|---|---|"]
        if variant:
            lines.append(f"| `{prefix}.type` | `{variant}` | **required** | "
                         f"selects this kind of link ({' or '.join(LinkVariants.DOCS)}) |")
        for key in table.keys.values():
            full = join(prefix, key.name)
            lines.append(f"| `{full}` | {key.kind.describe()} | {_default_text(key)} | "
                         f"{key.doc} |")
        lines.append("")
    return "\n".join(lines)
