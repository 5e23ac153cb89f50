"""The "Config" category of bench/reliability.py: broken config files against the real CLI.

Each variant of a valid, deployed config (its key and password files exist) breaks one thing;
`stm32ota check-config PATH` and `stm32ota run --config PATH` run as subprocesses and must
both exit 2 naming the key (and its line where the file has one), without a traceback, and
`run` must exit before connecting to the broker (a listening socket records any connection)
or writing anything (the state and cache folders are not created).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from reliability import ROOT, Row, category

from agent.ota.keys import keygen


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def base(work: Path, port: int) -> dict[str, Any]:
    """A valid config whose files exist under `work`, with its broker on 127.0.0.1:port."""
    return {
        "agent": {"id": "gw-1", "state_dir": str(work / "state"), "cache_dir": str(work / "cache")},
        "mqtt": {"host": "127.0.0.1", "port": port, "username": "u",
                 "password_file": str(work / "pw")},
        "trust": {"keys": [str(work / "release.pub")]},
        "targets": [
            {"name": "pump", "product": "pump-ctrl", "groups": ["cellar"],
             "link": {"type": "uart", "port": "/dev/ttyAMA0", "baud": 115200},
             "pins": {"backend": "libgpiod", "nrst": {"line": 17}, "boot0": {"line": 27}}},
            {"name": "sensor", "product": "sensor-node",
             "link": {"type": "i2c", "bus": 1, "address": 0x48}, "pins": {"backend": "none"}},
        ],
    }


Change = Callable[[dict, Path], Optional[str]]  # edits the dict (or returns the whole text)


def _set(path: str, value: Any) -> Change:
    def apply(d: dict, work: Path) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return apply


_DELETE = object()


def _file(name: str, content: Optional[str]) -> Change:
    """Replace (or with None, delete) a file the config names."""
    def apply(d: dict, work: Path) -> None:
        p = work / name
        if content is None:
            p.unlink()
        else:
            p.write_text(content)
    return apply


def _text(text: str) -> Change:
    return lambda d, work: text


def _with_yaml(suffix: str) -> Change:
    return lambda d, work: yaml.safe_dump(d, sort_keys=False) + suffix


def _mkfile(rel: str) -> Change:
    def apply(d: dict, work: Path) -> None:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("")
    return apply


# (name, change, the key the messages must name, whether a line number is expected)
VARIANTS: list[tuple[str, Change, str, bool]] = [
    ("missing mqtt.host", _set("mqtt.host", _DELETE), "mqtt.host", True),
    ("missing target name", _set("targets.0.name", _DELETE), "targets[0].name", True),
    ("missing product", _set("targets.0.product", _DELETE), "targets[0].product", True),
    ("missing link", _set("targets.0.link", _DELETE), "targets[0].link", True),
    ("missing link type", _set("targets.0.link.type", _DELETE), "targets[0].link", True),
    ("missing uart port", _set("targets.0.link.port", _DELETE), "targets[0].link.port", True),
    ("missing i2c address", _set("targets.1.link.address", _DELETE), "targets[1].link.address", True),
    ("no targets", _set("targets", []), "targets", True),
    ("port is text", _set("mqtt.port", "abc"), "mqtt.port", True),
    ("port out of range", _set("mqtt.port", 70000), "mqtt.port", True),
    ("agent id with a space", _set("agent.id", "a b"), "agent.id", True),
    ("baud is text", _set("targets.0.link.baud", "fast"), "targets[0].link.baud", True),
    ("allow_unsigned is text", _set("trust.allow_unsigned", "yes"), "trust.allow_unsigned", True),
    ("keys is not a list", _set("trust.keys", "release.pub"), "trust.keys", True),
    ("targets is text", _set("targets", "pump"), "targets", True),
    ("bare size", _set("agent.cache_max", 100), "agent.cache_max", True),
    ("size without a known unit", _set("trust.max_image_size", "4 apples"),
     "trust.max_image_size", True),
    ("chip id is a name", _set("targets.0.expect_chip", "L432"), "targets[0].expect_chip", True),
    ("verify none", _set("targets.0.verify", "none"), "targets[0].verify", True),
    ("unknown key mqtt.prot", _set("mqtt.prot", 1883), "mqtt.prot", True),
    ("unknown key agent.stat_dir", _set("agent.stat_dir", "/x"), "agent.stat_dir", True),
    ("unknown key in a target", _set("targets.0.lnk", {}), "targets[0].lnk", True),
    ("unknown download key", _set("trust.download", {"timout": "5s"}), "trust.download.timout",
     True),
    ("unknown top-level key", _set("extra", 1), "extra", True),
    ("bare duration", _set("mqtt.keepalive", 60), "mqtt.keepalive", True),
    ("duration with a bad unit", _set("mqtt.keepalive", "1x"), "mqtt.keepalive", True),
    ("negative duration", _set("trust.download", {"timeout": "-1s"}), "trust.download.timeout",
     True),
    ("duration as a word", _set("mqtt.reconnect_max", "forever"), "mqtt.reconnect_max", True),
    ("boot0 on the nrst line", _set("targets.0.pins.boot0", {"line": 17}),
     "targets[0].pins.boot0.line", True),
    ("two targets on one GPIO line", _set("targets.1.pins", {"backend": "libgpiod",
                                          "nrst": {"line": 17}, "boot0": {"line": 5}}),
     "targets[1].pins.nrst.line", True),
    ("two targets with one name", _set("targets.1.name", "pump"), "targets[1].name", True),
    ("two targets on one serial port", _set("targets.1.link", {"type": "uart",
                                            "port": "/dev/ttyAMA0"}), "targets[1].link.port", True),
    ("password without a user", _set("mqtt.username", _DELETE), "mqtt.username", True),
    ("cache smaller than an image", _set("agent.cache_max", "1KiB"), "agent.cache_max", True),
    ("bad sequence step", _set("targets.0.enter_bootloader", ["nrst sideways"]),
     "targets[0].enter_bootloader", True),
    ("sequence drives an unwired pin", _set("targets.1.enter_bootloader", ["nrst low"]),
     "targets[1].enter_bootloader", True),
    ("modem backend on an i2c link", _set("targets.1.pins", {"backend": "modem",
                                          "nrst": {"line": "rts"}}), "targets[1].pins.backend",
     True),
    ("empty state_dir", _set("agent.state_dir", ""), "agent.state_dir", True),
    ("state_dir is a file", _mkfile("state"), "agent.state_dir", True),
    ("cache_dir under a file", lambda d, w: (_mkfile("f")(d, w), _set(
        "agent.cache_dir", str(w / "f" / "cache"))(d, w))[1], "agent.cache_dir", True),
    ("missing key file", _file("release.pub", None), "trust.keys[0]", True),
    ("garbage key", _file("release.pub", "ed25519 not-base64!\n"), "trust.keys[0]", True),
    ("private key as trust key", _set("trust.keys", ["release.key"]), "trust.keys[0]", True),
    ("key is a folder", lambda d, w: _set("trust.keys", [str(w)])(d, w), "trust.keys[0]", True),
    ("missing password file", _file("pw", None), "mqtt.password_file", True),
    ("unset password variable", lambda d, w: (d["mqtt"].pop("password_file"), d["mqtt"].update(
        password_env="STM32OTA_BENCH_UNSET"))[1], "mqtt.password_env", True),
    ("missing TLS CA", _set("mqtt.tls", {"ca": "/nonexistent/ca.crt"}), "mqtt.tls.ca", True),
    ("TLS CA that is no certificate", lambda d, w: _set("mqtt.tls", {"ca": str(w / "pw")})(d, w),
     "mqtt.tls", True),
    ("TLS cert without key", lambda d, w: _set("mqtt.tls", {"cert": str(w / "pw")})(d, w),
     "mqtt.tls.key", True),
    ("alias bomb, 9 levels", _text(_bomb(9)), "(top level)", True),
    ("alias bomb inside targets", _with_yaml("x_bomb: " + _bomb(9).replace("\n", "\n  ")),
     "(top level)", True),
    ("alias inside its own anchor", _with_yaml("loop: &l {x: *l}\n"), "(top level)", True),
    ("duplicate key", _with_yaml("mqtt: {host: other}\n"), "mqtt", True),
    ("broken YAML", _text("mqtt: {host: h\ntargets: [\n"), "(top level)", True),
    ("tab indentation", _text("mqtt:\n\thost: h\n"), "(top level)", True),
    ("a list, not a mapping", _text("- just a list\n"), "(top level)", False),
    ("empty file", _text(""), "(top level)", False),
    ("not UTF-8", _text("mqtt: {host: \udcff}\n"), "config", False),
]


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


def run_variant(name: str, change: Change, work: Path, port: int) -> dict[str, Any]:
    """Write the variant under `work` and run both commands; their exit codes and output."""
    work.mkdir()
    keygen(work / "release")
    (work / "pw").write_text("pw\n")
    d = copy.deepcopy(base(work, port))
    text = change(d, work)
    path = work / "config.yaml"
    _write(path, text if isinstance(text, str) else yaml.safe_dump(d, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STM32OTA_BENCH_UNSET", None)
    out = {}
    for cmd in (["check-config", str(path)], ["run", "--config", str(path)]):
        r = subprocess.run([sys.executable, "-m", "agent", *cmd], capture_output=True,
                           text=True, timeout=60, env=env, cwd=str(work))
        out[cmd[0]] = (r.returncode, r.stdout + r.stderr)
    return out


def judge(out: dict[str, Any], where: str, line: bool) -> Optional[str]:
    """None if both commands refused cleanly naming `where` (and a line), else why not."""
    for cmd, (rc, text) in out.items():
        if "Traceback" in text:
            return f"{cmd}: traceback: {text[-400:]}"
        if rc != 2:
            return f"{cmd}: exit {rc}: {text[-300:]}"
        if where not in text:
            return f"{cmd}: does not name {where}: {text[-300:]}"
        if line and "(line " not in text:
            return f"{cmd}: names no line: {text[-300:]}"
    return None


@category("CONFIG")
def config_category(quick: bool) -> Row:
    """Broken config files: both check-config and run exit 2 naming the key and its line."""
    row = Row("Config")
    variants = VARIANTS[::4] if quick else VARIANTS
    with tempfile.TemporaryDirectory(prefix="stm32ota-rel-cfg-") as tmp, \
            socket.socket() as broker:
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        broker.setblocking(False)
        for i, (name, change, where, line) in enumerate(variants):
            work = Path(tmp) / f"v{i}"
            row.tried += 1
            row.expected += 2  # one refusal from each command
            out = run_variant(name, change, work, broker.getsockname()[1])
            row.tracebacks += sum("Traceback" in text for _rc, text in out.values())
            row.delivered += sum(rc == 2 for rc, _text in out.values())
            why = judge(out, where, line)
            if why is None:
                row.clean += 1
            else:
                row.failures.append(f"{name}: {why}")
            created = [p.name for p in (work / "state", work / "cache") if p.is_dir()]
            if created:
                row.outside_bytes += 1
                row.failures.append(f"{name}: run created {created}")
        try:
            broker.accept()
            row.failures.append("run connected to the broker")
            row.clean = 0
        except BlockingIOError:
            pass
    row.figures["commands run"] = str(2 * row.tried)
    return row
