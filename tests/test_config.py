"""config.yaml: what loads, what each mistake says, and that the reference lists every key."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import config
from agent.config import ConfigInvalid, Problem
from agent.config.schema import ROOT, LinkVariants, Table
from agent.config.values import ListOf
from agent.errors import EXIT_USAGE, ConfigError
from agent.pins.sequence import Delay, PinStep

REPO = Path(__file__).resolve().parent.parent

# The minimal example from DESIGN.md "config.yaml", verbatim: these spellings are the contract.
DESIGN_MINIMAL = """\
agent: {id: gw-01, state_dir: /var/lib/stm32ota, cache_dir: /var/cache/stm32ota}
mqtt: {host: homeassistant.local, port: 1883, username: stm32ota, password_file: /etc/stm32ota/mqtt-password}
trust: {keys: [/etc/stm32ota/release.pub]}      # public key files made by `stm32ota keygen`
targets:
  - name: pump
    product: pump-ctrl
    groups: [cellar]
    link: {type: uart, port: /dev/ttyAMA0, baud: 115200}
    pins: {backend: auto, nrst: {line: 17, active_low: true}, boot0: {line: 27}}
    expect_chip: 0x435
  - name: sensor
    product: sensor-node
    link: {type: i2c, bus: 1, address: 0x48}
    pins: {backend: none}                        # chip is put in bootloader mode some other way
"""

BASE: dict[str, Any] = yaml.safe_load(DESIGN_MINIMAL)


def variant(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-path changes, e.g. variant(**{"targets.0.link.baud": "fast"})."""
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


DELETE = object()


def problems(data: dict[str, Any] | str) -> list[Problem]:
    """The problems ConfigInvalid lists for this config (fails the test if it loads)."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(ConfigInvalid) as info:
        config.loads(text, "/etc/stm32ota/config.yaml")
    return info.value.problems


def only(data: dict[str, Any] | str) -> Problem:
    """The single problem of a config with exactly one mistake."""
    found = problems(data)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


# --- what loads --------------------------------------------------------------------------


def test_repository_example_loads_with_both_targets() -> None:
    cfg = config.load(REPO / "config.yaml")
    assert [t.name for t in cfg.targets] == ["pump", "sensor"]
    pump, sensor = cfg.targets
    assert pump.link == config.UartLinkConfig("/dev/ttyAMA0", 115200, "even", 0.0)
    assert pump.pins.nrst == config.PinLine(17, True)
    assert pump.pins.boot0 == config.PinLine(27, False)
    assert pump.expect_chip == 0x435
    assert sensor.link == config.I2cLinkConfig(1, 0x48, 256, 256, 0.002)
    assert cfg.source == REPO / "config.yaml"


def test_repository_example_is_refused_only_for_the_files_this_machine_lacks() -> None:
    found = config.check(REPO / "config.yaml")
    assert {(p.where, p.level) for p in found} <= {("mqtt.password_file", "error"),
                                                   ("trust.keys[0]", "error")}, found
    assert all(p.line is not None and ("/etc/stm32ota/" in p.message) for p in found)


def test_design_minimal_example_loads_with_documented_defaults() -> None:
    cfg = config.loads(DESIGN_MINIMAL)
    assert cfg.agent == config.AgentConfig("gw-01", Path("/var/lib/stm32ota"),
                                           Path("/var/cache/stm32ota"), 64 * 2**20, "info",
                                           name=config.host_name())
    m = cfg.mqtt
    assert (m.host, m.port, m.username, m.tls) == ("homeassistant.local", 1883, "stm32ota", None)
    assert m.password == config.Secret(file=Path("/etc/stm32ota/mqtt-password"),
                                       where="mqtt.password")
    assert (m.base_topic, m.discovery_prefix, m.keepalive) == ("stm32ota", "homeassistant", 60)
    assert (m.client_id, m.reconnect_max) == ("stm32ota-gw-01", 60.0)
    assert cfg.trust == config.TrustConfig(
        (Path("/etc/stm32ota/release.pub"),), False, False, 4 * 2**20,
        config.DownloadConfig(30.0, 3, 2.0, 1800.0, 1024, "same-host"))
    pump, sensor = cfg.targets
    assert (pump.product, pump.groups, pump.verify, pump.auto_install) == \
        ("pump-ctrl", ("cellar",), "auto", False)
    assert pump.retries == config.RetriesConfig(2, 3)
    assert pump.quirks.i2c_erase_nack == "verify"
    assert pump.pins.chip == "/dev/gpiochip0"
    assert pump.enter_bootloader[0] == PinStep("nrst", True)
    assert sensor.pins == config.PinsConfig("none", None, None, None)
    assert sensor.enter_bootloader == () and sensor.exit_bootloader == ()


def test_values_are_frozen() -> None:
    cfg = config.loads(DESIGN_MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.targets[0].link.baud = 9600  # type: ignore[misc]


def test_units_hex_strings_and_inherited_values() -> None:
    cfg = config.loads(yaml.safe_dump(variant(**{
        "agent.cache_max": "1GiB", "mqtt.keepalive": "1m30s", "mqtt.tls": {}, "mqtt.port": DELETE,
        "trust.allow_downgrade": True, "trust.max_image_size": "512KiB",
        "targets.0.expect_chip": "0x435", "targets.0.link.inter_byte_delay": "1ms",
        "targets.0.timeouts": {"erase_page": "2s"},
        "targets.1.link": {"type": "i2c", "bus": 1, "address": "0x48", "busy_poll": "5ms"},
        "targets.1.allow_downgrade": False,
    })))
    assert cfg.agent.cache_max == 2**30 and cfg.trust.max_image_size == 512 * 1024
    assert cfg.mqtt.keepalive == 90 and cfg.mqtt.port == 8883  # tls moves the default port
    pump, sensor = cfg.targets
    assert pump.expect_chip == 0x435 and pump.link.inter_byte_delay == pytest.approx(0.001)
    assert pump.timeouts.erase_page == 2.0 and pump.timeouts.byte == 0.5
    assert sensor.link.address == 0x48
    assert sensor.timeouts.busy_poll_interval == pytest.approx(0.005)
    assert (pump.allow_downgrade, sensor.allow_downgrade) == (True, False)


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(variant(**{"trust.keys": ["keys/a.pub"]})))
    assert config.load(tmp_path / "c.yaml").trust.keys == (tmp_path / "keys/a.pub",)


def test_default_agent_id_is_a_hash_of_the_machine_id_and_the_name_is_the_host_name(
        tmp_path: Path) -> None:
    one, two = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
    a, b = config.default_agent_id(one), config.default_agent_id(two)
    assert a != b and a == config.default_agent_id(one.upper().lower())  # stable, one per machine
    assert re.fullmatch(r"[0-9a-f]{12}", a) and one[:12] not in a  # never the id itself
    assert config.default_agent_id(None, "pi 4.local") in (config.default_agent_id(), "pi-4")
    assert config.host_name("pi 4.local") == "pi-4" and config.host_name("...") == "stm32ota"
    (tmp_path / "machine-id").write_text(one + "\n")
    (tmp_path / "empty").write_text("")  # a cloned image whose id is made at first boot
    paths = (str(tmp_path / "missing"), str(tmp_path / "empty"), str(tmp_path / "machine-id"))
    assert config.machine_id(paths) == one
    assert config.machine_id((str(tmp_path / "empty"),)) is None
    cfg = config.loads(yaml.safe_dump(variant(**{"agent": {}})))
    assert cfg.agent.id == config.default_agent_id() and cfg.agent.name == config.host_name()
    assert cfg.mqtt.client_id == f"stm32ota-{cfg.agent.id}"


def test_custom_sequences_are_parsed_to_steps() -> None:
    cfg = config.loads(yaml.safe_dump(variant(**{
        "targets.0.enter_bootloader": ["boot0 high", "nrst low", "20ms", "nrst high", "50ms"]})))
    steps = cfg.targets[0].enter_bootloader
    assert steps[:2] == (PinStep("boot0", True), PinStep("nrst", True))
    assert steps[2] == Delay(0.02)


# --- each kind of mistake: location and hint ---------------------------------------------


def test_typo_key_names_location_and_suggests_the_key() -> None:
    p = only(variant(**{"targets.0.link.baudrate": 9600}))
    assert p.where == "targets[0].link.baudrate"
    assert "unknown" in p.message and "did you mean 'baud'" in p.hint


def test_key_of_the_other_link_type_says_which_type_it_belongs_to() -> None:
    p = only(variant(**{"targets.0.link.address": 0x48}))
    assert p.where == "targets[0].link.address" and "type: i2c" in p.hint


def test_missing_required_key() -> None:
    p = only(variant(**{"mqtt.host": DELETE}))
    assert p.where == "mqtt.host" and p.message.startswith("missing")
    p = only(variant(**{"targets.1.link.address": DELETE}))
    assert p.where == "targets[1].link.address" and "0x48" in p.hint


def test_wrong_type() -> None:
    p = only(variant(**{"targets.0.link.baud": "fast"}))
    assert p.where == "targets[0].link.baud" and "whole number" in p.message
    p = only(variant(**{"targets.0.auto_install": "yes please"}))
    assert p.where == "targets[0].auto_install" and "true or false" in p.message


def test_bare_duration_is_refused_with_a_unit_hint() -> None:
    p = only(variant(**{"mqtt.keepalive": 60}))
    assert p.where == "mqtt.keepalive" and '"60s"' in p.hint
    p = only(variant(**{"targets.0.link.inter_byte_delay": 1}))
    assert '"1ms"' in p.hint


def test_bare_size_is_refused() -> None:
    p = only(variant(**{"trust.max_image_size": 4096}))
    assert p.where == "trust.max_image_size" and "unit" in p.message


def test_duplicate_yaml_key_names_path_and_both_lines() -> None:
    text = DESIGN_MINIMAL.replace("    groups: [cellar]\n",
                                  "    groups: [cellar]\n    product: other\n")
    p = only(text)
    assert p.where == "targets[0].product" and "lines 6 and 8" in p.message
    assert p.line == 8


def test_gpio_line_used_twice_across_targets_and_within_one() -> None:
    second = {"backend": "libgpiod", "chip": "gpiochip0", "nrst": {"line": 27},
              "boot0": {"line": 22}}
    p = only(variant(**{"targets.1.pins": second}))
    assert p.where == "targets[1].pins.nrst.line" and "targets[0].pins.boot0" in p.message
    other_chip = dict(second, chip="/dev/gpiochip4")
    config.loads(yaml.safe_dump(variant(**{"targets.1.pins": other_chip})))  # other chip: fine
    p = only(variant(**{"targets.0.pins.boot0.line": 17}))
    assert p.where == "targets[0].pins.boot0.line" and "already used" in p.message


def test_two_targets_never_share_a_serial_port_whatever_the_spelling() -> None:
    p = only(variant(**{"targets.1.link": {"type": "uart", "port": "spy:///dev/ttyAMA0"},
                        "targets.1.pins": {"backend": "none"}}))
    assert p.where == "targets[1].link.port" and "targets[0] (pump)" in p.message


def test_bad_and_duplicate_names() -> None:
    p = only(variant(**{"targets.1.name": "sensor/1"}))
    assert p.where == "targets[1].name" and "letters, digits" in p.hint
    p = only(variant(**{"targets.1.name": "pump"}))
    assert p.where == "targets[1].name" and "also used" in p.message
    assert only(variant(**{"agent.id": "gw 01"})).where == "agent.id"


def test_bad_sequence_step_is_located_and_explained() -> None:
    p = only(variant(**{"targets.0.enter_bootloader": ["nrst lo", "10ms", "nrst high"]}))
    assert p.where == "targets[0].enter_bootloader[0]"
    assert "did you mean 'nrst low'" in p.hint


def test_sequence_driving_pins_that_are_not_wired() -> None:
    p = only(variant(**{"targets.1.exit_bootloader": ["nrst low", "10ms", "nrst high"]}))
    assert p.where.startswith("targets[1].exit_bootloader") and "nrst" in p.message


def test_verify_none_is_refused_with_the_cli_alternative() -> None:
    p = only(variant(**{"targets.0.verify": "none"}))
    assert p.where == "targets[0].verify" and "--no-verify" in p.hint


def test_pins_rules_per_backend() -> None:
    p = only(variant(**{"targets.0.pins.boot0": DELETE}))
    assert p.where == "targets[0].pins.boot0" and "missing" in p.message
    p = only(variant(**{"targets.1.pins": {"backend": "none", "nrst": {"line": 5}}}))
    assert p.where == "targets[1].pins.nrst" and "choose a backend" in p.hint
    p = only(variant(**{"targets.1.pins": {"backend": "modem", "nrst": {"line": "dtr"},
                                           "boot0": {"line": "rts"}}}))
    assert p.where == "targets[1].pins.backend" and "UART" in p.message
    modem = {"backend": "modem", "nrst": {"line": "DTR"}, "boot0": {"line": "rts"}}
    cfg = config.loads(yaml.safe_dump(variant(**{"targets.0.pins": modem})))
    assert cfg.targets[0].pins.nrst == config.PinLine("dtr", True)
    p = only(variant(**{"targets.0.pins.nrst.line": "rts"}))
    assert p.where == "targets[0].pins.nrst.line" and "backend: modem" in p.hint


def test_secrets_one_way_only_and_plain_password_is_a_warning(tmp_path: Path) -> None:
    p = only(variant(**{"mqtt.password_env": "MQTT_PW"}))
    assert p.where == "mqtt.password_env" and "2 ways" in p.message
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(variant(**{"mqtt.password_file": DELETE,
                                              "mqtt.password": "hunter2"})))
    warnings = [p for p in config.check(path) if p.where == "mqtt.password"]
    assert warnings and warnings[0].level == "warning" and "password_file" in warnings[0].hint
    assert "hunter2" not in repr(config.load(path).mqtt)


def test_secret_resolves_from_file_and_environment(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    assert config.Secret(file=tmp_path / "pw").resolve() == "s3cret"
    monkeypatch.setenv("STM32OTA_TEST_PW", "from-env")
    assert config.Secret(env="STM32OTA_TEST_PW").resolve() == "from-env"
    with pytest.raises(ConfigError, match="mqtt.password_env"):
        config.Secret(env="STM32OTA_TEST_UNSET_PW", where="mqtt.password").resolve()
    with pytest.raises(ConfigError, match="cannot read"):
        config.Secret(file=tmp_path / "nope", where="mqtt.password").resolve()


def test_trust_without_keys_refuses_unless_unsigned_is_allowed() -> None:
    p = only(variant(**{"trust.keys": []}))
    assert p.where == "trust.keys" and "stm32ota keygen" in p.hint
    config.loads(yaml.safe_dump(variant(**{"trust.keys": [], "trust.allow_unsigned": True})))


def test_every_problem_is_collected_in_one_error_in_file_order() -> None:
    found = problems(variant(**{"mqtt.prot": 1883, "targets.0.link.baud": "fast",
                                "targets.1.link.bus": -1}))
    assert [p.where for p in found] == ["mqtt.prot", "targets[0].link.baud",
                                        "targets[1].link.bus"]
    assert [p.line for p in found] == sorted(p.line or 0 for p in found)


def test_config_invalid_is_a_usage_error_whose_message_lists_everything() -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(yaml.safe_dump(variant(**{"mqtt.prot": 1, "agent.id": "a b"})), "x.yaml")
    assert info.value.exit_code == EXIT_USAGE
    text = str(info.value)
    assert text.startswith("x.yaml: 2 problems") and "mqtt.prot" in text and "agent.id" in text


def test_unreadable_empty_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load(tmp_path / "missing.yaml")
    assert config.check(tmp_path / "missing.yaml")[0].message.startswith("cannot read")
    assert only("").message == "the file is empty"
    p = only("mqtt: {host: h\ntargets: [")
    assert "not valid YAML" in p.message and p.line is not None
    assert only("- just a list").message.startswith("expected a mapping")


def test_target_lookup_suggests_a_name() -> None:
    cfg = config.loads(DESIGN_MINIMAL)
    assert cfg.target("sensor").product == "sensor-node"
    with pytest.raises(ConfigError, match="did you mean 'pump'"):
        cfg.target("pmup")


def test_target_link_options_match_link_fields() -> None:
    cfg = config.loads(DESIGN_MINIMAL)
    assert config.target_link_options(cfg.targets[1]) == {
        "type": "i2c", "bus": 1, "address": 0x48, "read_chunk": 256, "write_chunk": 256,
        "busy_poll": 0.002}


# --- the reference -----------------------------------------------------------------------


def _all_keys(table: Table, prefix: str = "") -> list[str]:
    out = []
    for key in table.keys.values():
        path = f"{prefix}.{key.name}" if prefix else key.name
        out.append(path)
        kind = key.kind.item if isinstance(key.kind, ListOf) else key.kind
        path += "[]" if isinstance(key.kind, ListOf) else ""
        if isinstance(kind, Table):
            out += _all_keys(kind, path)
        elif isinstance(kind, LinkVariants):
            out.append(f"{path}.type")
            for variant_table in kind.variants.values():
                out += _all_keys(variant_table, path)
    return out


def test_reference_markdown_mentions_every_key() -> None:
    md = config.reference_markdown()
    keys = _all_keys(ROOT)
    assert len(keys) > 60
    missing = [k for k in keys if f"`{k}`" not in md]
    assert missing == []
    assert "targets[].link` with `type: i2c" in md and "gpiochip4" in md


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out += _paths(value, prefix + (key,))
    return out


@pytest.mark.parametrize("bad", [None, -1, "x", [], {}, True, ["a"], {"a": 1}])
def test_any_wrong_value_anywhere_gives_problems_not_a_crash(bad: Any) -> None:
    for path in _paths(BASE):
        data = copy.deepcopy(BASE)
        node: Any = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = bad
        try:
            config.loads(yaml.safe_dump(data))
        except ConfigInvalid as err:
            assert err.problems and all(p.where for p in err.problems if p.line), path
