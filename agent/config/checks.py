"""Checks of config.yaml that span keys: shared ports and GPIO lines, secrets given twice, ...

They run on the checked-but-raw dicts from the schema (a value may be INVALID when its own
problem is already recorded), so one pass reports per-key and cross-key problems together.
"""

from __future__ import annotations

import os
from typing import Any

from agent.config.values import INVALID, Context, join
from agent.errors import ConfigError
from agent.pins.modem import MODEM_LINES
from agent.pins.sequence import validate_sequence
from agent.stm32.chips import CHIPS


def _ok(value: Any) -> bool:
    return value is not INVALID and value is not None


def _one_way(raw: dict[str, Any], name: str, where: str, ctx: Context) -> None:
    """A secret given inline, by file or by environment: at most one, and inline is a warning."""
    given = [k for k in (name, f"{name}_file", f"{name}_env") if _ok(raw.get(k))]
    if len(given) > 1:
        ctx.add(join(where, given[1]), f"{name} is given {len(given)} ways ({', '.join(given)})",
                "keep one of them")
    if _ok(raw.get(name)):
        ctx.warn(join(where, name), "a password in config.yaml can be read by anyone who can "
                 "read the file", f"put it in a file of mode 0600 and use {name}_file, "
                 f"or use {name}_env")


def _topic_prefix(value: Any, where: str, ctx: Context) -> None:
    if not isinstance(value, str):
        return
    if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/") \
            or "//" in value:
        ctx.add(where, f"{value!r} is not a usable MQTT topic prefix",
                "no + or # wildcards, no leading, trailing or doubled '/'")


def _check_mqtt(m: Any, ctx: Context) -> None:
    if not isinstance(m, dict):
        return
    _one_way(m, "password", "mqtt", ctx)
    has_password = any(_ok(m[k]) for k in ("password", "password_file", "password_env"))
    if has_password and not _ok(m["username"]) and m["username"] is not INVALID:
        ctx.add("mqtt.username", "missing: a password needs a user name (MQTT 3.1.1 3.1.2.9)",
                "add username: or remove the password")
    _topic_prefix(m["base_topic"], "mqtt.base_topic", ctx)
    _topic_prefix(m["discovery_prefix"], "mqtt.discovery_prefix", ctx)
    t = m["tls"]
    if not isinstance(t, dict):
        return
    _one_way(t, "key_password", "mqtt.tls", ctx)
    if _ok(t["cert"]) != _ok(t["key"]) and INVALID not in (t["cert"], t["key"]):
        missing = "key" if _ok(t["cert"]) else "cert"
        ctx.add(f"mqtt.tls.{missing}", "missing: a client certificate needs its key and the key "
                "its certificate", "give both cert and key, or neither")
    if any(_ok(t[k]) for k in ("key_password", "key_password_file", "key_password_env")) \
            and t["key"] is None:
        ctx.add("mqtt.tls.key_password", "a key password without a key", "add key: or remove it")
    if t["insecure"] is True:
        ctx.warn("mqtt.tls.insecure", "the broker's host name is not checked, so anyone on the "
                 "path can pose as the broker", "use it only for testing")


def _check_trust(data: dict[str, Any], ctx: Context) -> None:
    tr, a = data["trust"], data["agent"]
    if not isinstance(tr, dict):
        return
    if tr["keys"] == () and tr["allow_unsigned"] is False:
        ctx.add("trust.keys", "no public key to check release signatures, so every release "
                "would be refused", "make one with `stm32ota keygen` and list its .pub file "
                "(or set allow_unsigned: true, never in production)")
    if tr["allow_unsigned"] is True:
        ctx.warn("trust.allow_unsigned", "anyone who can publish to the broker can flash your "
                 "targets", "list release keys and set it to false")
    if isinstance(a, dict) and isinstance(a["cache_max"], int) \
            and isinstance(tr["max_image_size"], int) and a["cache_max"] < tr["max_image_size"]:
        ctx.add("agent.cache_max", "smaller than trust.max_image_size, so a large verified "
                "image would not fit the cache", "raise cache_max or lower max_image_size")


def _port_key(port: str) -> str:
    """Two spellings of one device compare equal (spy:// wrapper, symlinks like /dev/serial0)."""
    port = port.split("?")[0]
    if port.startswith("spy://"):
        port = port[len("spy://"):]
    return os.path.realpath(port) if port.startswith("/") else port


def _check_pin_lines(p: dict[str, Any], link: Any, where: str, ctx: Context,
                     used: dict[tuple[str, Any], str]) -> None:
    backend = p["backend"]
    for name in ("nrst", "boot0"):
        pin, here = p[name], f"{where}.pins.{name}"
        if pin is None:
            if backend not in ("none", INVALID):
                ctx.add(here, f"missing: backend {backend} needs the {name} line",
                        f"e.g. {name}: {{line: {17 if name == 'nrst' else 27}}}")
            continue
        if pin is INVALID or not _ok(pin["line"]):
            continue
        line, lwhere = pin["line"], f"{here}.line"
        if backend == "none":
            ctx.add(here, "backend none drives no pins", f"remove {name} or choose a backend")
        elif backend == "modem" and line not in MODEM_LINES:
            ctx.add(lwhere, f"the modem backend drives rts or dtr, not {line!r}", "use rts or dtr")
        elif backend != "modem" and line in MODEM_LINES:
            ctx.add(lwhere, f"{line} is a serial modem line", "set backend: modem to use it")
        elif backend == "rpigpio" and not isinstance(line, int):
            ctx.add(lwhere, "RPi.GPIO takes BCM numbers, not line names", "e.g. line: 17")
        elif backend != "none":
            chip = p["chip"] if _ok(p["chip"]) else "gpiochip0"
            owner = _port_key(link["port"]) if backend == "modem" and isinstance(link, dict) \
                and "port" in link else "/dev/" + chip.split("/")[-1]
            key = (owner, line)
            if key in used:
                ctx.add(lwhere, f"line {line} of {owner} is already used by {used[key]}",
                        "each GPIO line can drive one signal of one target")
            else:
                used[key] = f"{where}.pins.{name}"


def _check_pins(t: dict[str, Any], where: str, ctx: Context,
                used: dict[tuple[str, Any], str]) -> None:
    p, link = t["pins"], t["link"]
    if not isinstance(p, dict):
        return
    backend = p["backend"]
    if backend == "modem" and isinstance(link, dict) and link.get("type") != "uart":
        ctx.add(f"{where}.pins.backend", "the modem backend drives RTS/DTR of the serial port, "
                "but this target's link is not a UART", "use a GPIO backend or none")
    if _ok(p["chip"]) and backend in ("rpigpio", "modem", "none"):
        ctx.add(f"{where}.pins.chip", f"backend {backend} has no GPIO chip",
                "remove chip, or use backend libgpiod")
    _check_pin_lines(p, link, where, ctx, used)
    wired = {s for s in ("nrst", "boot0") if isinstance(p[s], dict)} if backend != "none" else set()
    for seq in ("enter_bootloader", "exit_bootloader"):
        if _ok(t[seq]):
            try:
                validate_sequence(t[seq], wired, f"{where}.{seq}")
            except ConfigError as err:
                text = str(err).removeprefix(f"{where}.{seq}: ")
                message, _, hint = text.partition("; ")
                ctx.add(f"{where}.{seq}", message, hint)


def _check_target_ids(ts: tuple[Any, ...], ctx: Context) -> None:
    """Names, serial ports and I2C addresses are each used by one target only."""
    seen: dict[tuple[Any, ...], str] = {}
    for i, t in enumerate(ts):
        if not isinstance(t, dict):
            continue
        where = join("targets", i)
        owner = f"{where} ({t['name']})" if isinstance(t["name"], str) else where
        link = t["link"] if isinstance(t["link"], dict) else {}
        claims: list[tuple[tuple[Any, ...], str, str, str]] = []
        if isinstance(t["name"], str):
            claims.append((("name", t["name"]), "name", f"the name {t['name']!r}",
                           "target names must be unique"))
        if isinstance(link.get("port"), str):
            claims.append((("port", _port_key(link["port"])), "link.port",
                           f"serial port {link['port']}",
                           "two targets cannot share one serial port"))
        if _ok(link.get("address")) and _ok(link.get("bus")):
            claims.append((("i2c", link["bus"], link["address"]), "link.address",
                           f"I2C address 0x{link['address']:02x} on bus {link['bus']}",
                           "each target needs its own bus or address"))
        for key, at, what, hint in claims:
            if key in seen:
                ctx.add(f"{where}.{at}", f"{what} is also used by {seen[key]}", hint)
            else:
                seen[key] = owner


def _check_targets(ts: Any, ctx: Context) -> None:
    if not isinstance(ts, tuple):
        return
    if not ts:
        ctx.add("targets", "no targets", "list at least one STM32 under targets:")
    _check_target_ids(ts, ctx)
    used: dict[tuple[str, Any], str] = {}
    for i, t in enumerate(ts):
        if not isinstance(t, dict):
            continue
        where = join("targets", i)
        _check_pins(t, where, ctx, used)
        pid = t["expect_chip"]
        if isinstance(pid, int) and pid not in CHIPS:
            ctx.warn(f"{where}.expect_chip", f"PID 0x{pid:03X} is not in the chip table",
                     "check it with `stm32ota info`; flashing an unknown chip will fail")


def cross_check(data: dict[str, Any], ctx: Context) -> None:
    """Run every check that needs more than one key; problems go to `ctx`."""
    _check_mqtt(data["mqtt"], ctx)
    _check_trust(data, ctx)
    _check_targets(data["targets"], ctx)

