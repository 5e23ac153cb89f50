"""check-config refuses exactly what `run` refuses at start, and hostile YAML stays cheap."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest

from agent import config
from agent.config import ConfigInvalid
from agent.config.yamlfile import MAX_ALIAS_EXPANSION
from agent.ota.keys import keygen

REPO = Path(__file__).resolve().parent.parent


def deployed_example(tmp: Path) -> Path:
    """The repository's config.yaml with its /etc and /var paths moved under `tmp`, and the
    key and password files it names made: what a finished installation looks like."""
    etc = tmp / "etc"
    etc.mkdir()
    keygen(etc / "release")
    (etc / "mqtt-password").write_text("pw\n")
    text = (REPO / "config.yaml").read_text()
    text = text.replace("/etc/stm32ota/", f"{etc}/").replace("/var/", f"{tmp}/var/")
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def errors_of(path: Path) -> list[config.Problem]:
    """check-config's errors; load_for_run must refuse with the same ones."""
    found = [p for p in config.check(path) if p.level == "error"]
    with pytest.raises(ConfigInvalid) as info:
        config.load_for_run(path)
    assert [str(p) for p in info.value.problems] == [str(p) for p in found]
    return found


def test_deployed_example_passes_check_and_load_for_run(tmp_path: Path) -> None:
    path = deployed_example(tmp_path)
    assert config.check(path) == []
    assert config.load_for_run(path).targets[0].name == "pump"
    assert not (tmp_path / "var").exists(), "checking must create nothing"


def _edit(old: str, new: str) -> Callable[[Path], None]:
    def apply(tmp: Path) -> None:
        path = tmp / "config.yaml"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))
    return apply


def _garbage_key(tmp: Path) -> None:
    (tmp / "etc" / "release.pub").write_text("ed25519 not-base64!\n")


def _state_dir_a_file(tmp: Path) -> None:
    (tmp / "var" / "lib").mkdir(parents=True)
    (tmp / "var" / "lib" / "stm32ota").write_text("")


def _cache_under_a_file(tmp: Path) -> None:
    (tmp / "var").mkdir()
    (tmp / "var" / "cache").write_text("")


CASES = {
    "missing key file": (lambda t: (t / "etc" / "release.pub").unlink(), "trust.keys[0]",
                         "cannot read public key"),
    "garbage key": (_garbage_key, "trust.keys[0]", "not valid base64"),
    "missing password file": (lambda t: (t / "etc" / "mqtt-password").unlink(),
                              "mqtt.password_file", "cannot read"),
    "unset password variable": (_edit("password_file: ", "password_env: STM32OTA_UNSET_PW\n"
                                      "  # was: "), "mqtt.password_env", "is not set"),
    "state_dir is a file": (_state_dir_a_file, "agent.state_dir", "is a file, not a folder"),
    "cache_dir under a file": (_cache_under_a_file, "agent.cache_dir", "is a file"),
    "unreadable TLS CA": (_edit("  # tls:", "  tls: {ca: /nonexistent/ca.crt}\n  #"),
                          "mqtt.tls.ca", "cannot read"),
    "TLS CA that is no certificate": (_edit("  # tls:", "  tls: {ca: config.yaml}\n  #"),
                                      "mqtt.tls", "could not be loaded"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_what_run_refuses_check_config_refuses_with_key_and_line(tmp_path: Path,
                                                                 name: str) -> None:
    spoil, where, words = CASES[name]
    path = deployed_example(tmp_path)
    spoil(tmp_path)
    found = errors_of(path)
    assert [p.where for p in found] == [where], found
    assert words in found[0].message and found[0].line is not None


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_state_dir_the_user_cannot_write_is_refused(tmp_path: Path) -> None:
    path = deployed_example(tmp_path)
    (tmp_path / "var").mkdir(mode=0o500)
    found = errors_of(path)
    assert {p.where for p in found} == {"agent.state_dir", "agent.cache_dir"}
    assert all("cannot be created" in p.message for p in found)


def test_run_exits_2_naming_key_and_line_before_connecting(tmp_path: Path) -> None:
    path = deployed_example(tmp_path)
    _garbage_key(tmp_path)
    with socket.socket() as broker:  # a "broker" that records whether anyone connected
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        broker.settimeout(0.5)
        text = path.read_text().replace("host: homeassistant.local", "host: 127.0.0.1") \
            .replace("port: 1883", f"port: {broker.getsockname()[1]}")
        path.write_text(text)
        r = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path)],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        with pytest.raises(socket.timeout):
            broker.accept()
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "release.pub" in t)
    assert r.returncode == 2, r.stderr
    assert f"trust.keys[0] (line {line})" in r.stderr and "not valid base64" in r.stderr


def bomb(levels: int) -> str:
    """A "billion laughs" document: each level lists the previous one nine times."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_nine_level_alias_bomb_is_refused_within_a_small_budget() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ConfigInvalid) as info:
            config.loads(bomb(9))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (p,) = info.value.problems
    assert "aliases" in p.message and str(MAX_ALIAS_EXPANSION) in p.message and p.line == 2
    # 9**9 nodes would need gigabytes; the budget keeps the walk to a few thousand nodes
    assert peak < 20 * 1024 * 1024, peak


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(ConfigInvalid) as info:
        config.loads("agent: &a {x: *a}\n")
    assert "refers to itself" in info.value.problems[0].message


def test_a_few_aliases_still_work() -> None:
    cfg = config.loads("""\
agent: {id: gw}
mqtt: {host: h}
trust: {allow_unsigned: true}
targets:
  - {name: a, product: p, link: {type: i2c, bus: 1, address: 0x48},
     pins: {backend: none}, retries: &r {connect: 5}}
  - {name: b, product: p, link: {type: i2c, bus: 1, address: 0x49},
     pins: {backend: none}, retries: *r}
""")
    assert cfg.targets[0].retries == cfg.targets[1].retries
    assert cfg.targets[1].retries.connect == 5
