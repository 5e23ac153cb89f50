"""Test kit for the whole agent: real mosquitto, real HTTP, simulated STM32s, a signing key.

    from agentkit import AgentKit

    def test_x(tmp_path):
        with AgentKit(tmp_path) as kit:
            pump = kit.uart_target("pump", product="pump-ctrl", groups=("cellar",))
            sensor = kit.i2c_target("sensor", product="sensor-node")
            svc = kit.start_service()                      # in-process Service on kit.broker
            m = kit.release("pump-ctrl", "1.2.0", kit.image(3000))   # served + signed
            kit.publish_release(m)                         # retained, like mosquitto_pub -r
            kit.command("pump", "install")                 # <base>/<agent>/pump/cmd
            job = kit.wait_job("pump", "SUCCEEDED")        # last job-topic document
            assert pump.flashed(m) ...

Parts:
- `AgentKit(tmp_path)`: starts a `Mosquitto` and a `FileServer`, makes `state/`, `cache/`, a key
  pair (`kit.key`, `kit.pub`) and an `Observer` (`kit.obs`) subscribed to `#` before the agent
  starts, so it records every message the agent publishes.
- Targets: `uart_target()` serves a non-realtime `SimChip` on a `PtySim` (config parity none);
  `i2c_target()` attaches one to a shared `SimI2CBus`. Both return a `SimTarget` (`.sim`,
  `.config` dict, `.flash_bytes(address, n)`, `.touched()` = any erase/write event).
  Pins are `mock` (driving `sim.set_line`) in-process, or `none` with `pins="none"`.
- `write_config(**agent_overrides)` writes config.yaml and returns its path; `load_config()`;
  `flash_targets(cfg)` builds FlashTargets, `devices(cfg)` the simulators standing in for their
  devices; `start_service()` / `stop_service()`; `start_process()` runs `python -m agent run`
  as a subprocess (UART targets with `pins="none"` only: a mock pin cannot cross processes).
- Releases: `image(size, seed)` bytes; `release(product, version, data, **fields)` serves the
  data and returns a signed manifest dict; `sign(fields)` re-signs any dict.
- MQTT: `publish_release(m)`, `command(target, payload)`, `group_command(g, payload)`,
  `fleet_command(payload)`, `publish(topic, payload, retain)`; `wait_job(target, *statuses)`,
  `jobs(target)` (every job document seen), `states(target)`, `events(target)`.
- `kit.topics` is the agent's `agent.mqtt.contract.Topics`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.service import flash_target
from agent.flasher.target import Devices
from agent.mqtt.topics import Topics
from agent.ota.keys import keygen, sign_manifest
from agent.pins.mock import MockBackend
from agent.stm32.chips import CHIPS, Chip
from agent.sim import Faults, PtySim, SimChip
from agent.sim.i2c import SimI2CBus
from httpserver import FileServer
from mosquitto import Mosquitto

log = logging.getLogger(__name__)

AGENT_ID = "gw-test"
BASE = "stm32ota"
DISCOVERY = "homeassistant"
FLASH_START = 0x08000000
L432 = 0x435
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Message:
    """One MQTT message as the observer received it."""

    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class Observer:
    """A raw paho client subscribed to `#` that records every message, per topic, in order."""

    def __init__(self, host: str, port: int, topics: Iterable[str] = ("#",)) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"observer-{os.getpid()}-{id(self)}")
        self._subscribed = threading.Event()
        self._topics = list(topics)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"observer could not subscribe on {host}:{port}")

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain),
                                         time.monotonic()))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Message]:
        """Every message seen on exactly this topic, oldest first."""
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait(self, predicate: Callable[[list[Message]], Any], timeout: float = 20.0,
             what: str = "a condition") -> Any:
        """Wait until predicate(all messages) is truthy; return its value or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.messages))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; seen:\n"
                                       + "\n".join(f"{m.topic} {m.payload[:200]!r}"
                                                   for m in self.messages[-40:]))
                self._cond.wait(min(left, 0.2))

    def wait_topic(self, topic: str, predicate: Callable[[Message], bool] = lambda m: True,
                   timeout: float = 20.0, after: int = 0) -> Message:
        """The first message on `topic` (from index `after` of all messages) matching predicate."""
        def find(msgs: list[Message]) -> Optional[Message]:
            return next((m for m in msgs[after:] if m.topic == topic and predicate(m)), None)
        return self.wait(find, timeout, f"a message on {topic}")

    def mark(self) -> int:
        """An index for `wait_topic(after=...)`: only messages from now on."""
        with self._cond:
            return len(self.messages)

    def publish(self, topic: str, payload: Any, retain: bool = False) -> None:
        """Publish (str/bytes as is, anything else as JSON) at QoS 1 and wait for the broker's ack."""
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class SimTarget:
    """A simulated STM32 wired to the agent, and its config entry."""

    name: str
    sim: SimChip
    config: dict
    pty: Optional[PtySim] = None
    bus: Optional[SimI2CBus] = None

    def flash_bytes(self, address: int, n: int) -> bytes:
        """n bytes of the simulated main flash from an absolute address."""
        off = address - self.sim.chip.flash_start
        return bytes(self.sim.flash[off:off + n])

    def touched(self) -> list:
        """Events that changed the flash (erases and writes); [] if nothing did."""
        return [e for e in self.sim.events if "erase" in str(e[0]).lower()
                or "write" in str(e[0]).lower()]


class AgentKit:
    """Broker, HTTP server, key pair, simulated targets and an observer in `tmp_path`."""

    def __init__(self, tmp_path: Path, *, agent_id: str = AGENT_ID) -> None:
        self.dir = Path(tmp_path)
        self.agent_id = agent_id
        self.topics = Topics(BASE, agent_id, DISCOVERY)
        self.state_dir = self.dir / "state"
        self.cache_dir = self.dir / "cache"
        self.key, self.pub = keygen(self.dir / "release")
        self.targets: dict[str, SimTarget] = {}
        self.trust: dict[str, Any] = {"keys": [str(self.pub)]}
        self.bus = SimI2CBus()
        self.broker = Mosquitto()
        self.http = FileServer()
        self.obs: Optional[Observer] = None
        self.service: Any = None
        self.proc: Optional[subprocess.Popen] = None
        self.config_path = self.dir / "config.yaml"

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> "AgentKit":
        """Start the broker, the HTTP server and the observer."""
        self.broker.start()
        self.http.start()
        self.obs = Observer(self.broker.host, self.broker.port)
        return self

    def close(self) -> None:
        """Stop everything that was started (agent first)."""
        self.stop_service()
        self.stop_process()
        if self.obs is not None:
            self.obs.close()
        for t in self.targets.values():
            if t.pty is not None:
                t.pty.stop()
        self.http.stop()
        self.broker.close()

    def __enter__(self) -> "AgentKit":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- targets ---------------------------------------------------------------------------

    def _sim(self, chip: int | Chip, faults: Optional[Faults]) -> SimChip:
        c = chip if isinstance(chip, Chip) else CHIPS[chip]
        return SimChip(c, realtime=False, faults=faults)

    def _entry(self, name: str, product: str, groups: Iterable[str], link: dict, pins: str,
               extra: dict) -> dict:
        entry: dict[str, Any] = {"name": name, "product": product, "link": link}
        if groups:
            entry["groups"] = list(groups)
        if pins == "mock":
            n = 2 * len(self.targets)
            entry["pins"] = {"backend": "mock", "chip": f"mock{len(self.targets)}",
                             "nrst": {"line": n}, "boot0": {"line": n + 1}}
        else:
            entry["pins"] = {"backend": "none"}
        entry.update(extra)
        return entry

    def uart_target(self, name: str, *, product: str = "pump-ctrl", groups: Iterable[str] = (),
                    chip: int | Chip = L432, faults: Optional[Faults] = None, pins: str = "mock",
                    **extra: Any) -> SimTarget:
        """A simulated chip on a real pty (8N1), configured as a UART target."""
        sim = self._sim(chip, faults)
        pty = PtySim(sim).start()
        link = {"type": "uart", "port": pty.path, "baud": 115200, "parity": "none"}
        t = SimTarget(name, sim, self._entry(name, product, groups, link, pins, extra), pty=pty)
        self.targets[name] = t
        return t

    def i2c_target(self, name: str, *, product: str = "sensor-node", groups: Iterable[str] = (),
                   chip: int | Chip = L432, faults: Optional[Faults] = None, address: int = 0x48,
                   pins: str = "mock", **extra: Any) -> SimTarget:
        """A simulated chip on the kit's SimI2CBus (in-process agents only)."""
        sim = self._sim(chip, faults)
        self.bus.attach(address, sim)
        link = {"type": "i2c", "bus": 1, "address": address}
        t = SimTarget(name, sim, self._entry(name, product, groups, link, pins, extra), bus=self.bus)
        self.targets[name] = t
        return t

    # ----- config and agent ------------------------------------------------------------------

    def config_dict(self, **agent: Any) -> dict:
        """The config as a dict (agent-section overrides as keywords)."""
        return {
            "agent": {"id": self.agent_id, "state_dir": str(self.state_dir),
                      "cache_dir": str(self.cache_dir), **agent},
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "keepalive": "5s",
                     "reconnect_max": "1s", "jitter": "0s", "client_id": f"stm32ota-{self.agent_id}"},
            "trust": {**self.trust, "download": {"timeout": "5s", "retries": 1, "backoff": "10ms"}},
            "targets": [t.config for t in self.targets.values()],
        }

    def write_config(self, data: Optional[dict] = None, **agent: Any) -> Path:
        """Write config.yaml (from `data` or `config_dict(**agent)`) and return its path."""
        self.config_path.write_text(yaml.safe_dump(data or self.config_dict(**agent),
                                                   sort_keys=False))
        return self.config_path

    def load_config(self) -> Any:
        """Write and load the config."""
        from agent.config import load

        return load(self.write_config())

    def flash_targets(self, cfg: Any) -> list:
        """The config's FlashTargets, as `stm32ota run` builds them."""
        return [flash_target(tc) for tc in cfg.targets]

    def devices(self, cfg: Any) -> dict[str, Devices]:
        """The simulators stand in for the targets' devices (I2C bus, mock pins -> sim.set_line)."""
        out = {}
        for tc in cfg.targets:
            sim_t = self.targets[tc.name]
            pins = None
            if tc.pins.backend == "mock":
                pins = lambda sim=sim_t.sim: MockBackend(sim.set_line)  # noqa: E731
            out[tc.name] = Devices(i2c_bus=sim_t.bus, pins=pins)
        return out

    def start_service(self, wait_online: bool = True) -> Any:
        """A new in-process Service on the current config; waits for availability online."""
        from agent.service import Service

        mark = self.obs.mark()
        cfg = self.load_config()
        self.service = Service(cfg, self.flash_targets(cfg), devices=self.devices(cfg))
        self.service.start()
        if wait_online:
            self._wait_started(mark)
        return self.service

    def _wait_started(self, mark: int) -> None:
        """Availability online and every target's first state seen, so a later mark()
        only covers what the test caused."""
        self.obs.wait_topic(self.topics.availability, lambda m: m.payload == b"online", after=mark)
        for name in self.targets:
            self.obs.wait_topic(self.topics.state(name), after=mark)

    def stop_service(self) -> None:
        """Stop the in-process Service, if any."""
        if self.service is not None:
            self.service.stop()
            self.service = None

    def start_process(self, wait_online: bool = True, log_path: Optional[Path] = None) -> subprocess.Popen:
        """`python -m agent run --config` as a subprocess (stderr to `agent.log` in the kit dir)."""
        mark = self.obs.mark()
        path = self.write_config()
        self.log_path = log_path or self.dir / "agent.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent", "-v", "run", "--config",
                                          str(path)], stdout=logf, stderr=logf, env=env,
                                         cwd=str(REPO))
        if wait_online:
            self._wait_started(mark)
        return self.proc

    def stop_process(self, kill: bool = False) -> Optional[int]:
        """SIGTERM (or SIGKILL) the subprocess agent and return its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
        return proc.wait(10)

    def agent_log(self) -> str:
        """What the subprocess agent logged so far."""
        return self.log_path.read_text(errors="replace") if getattr(self, "log_path", None) else ""

    # ----- releases --------------------------------------------------------------------------

    @staticmethod
    def image(size: int = 3000, seed: int = 1) -> bytes:
        """Deterministic pseudo-random firmware bytes."""
        return random.Random(seed).randbytes(size)

    def sign(self, fields: dict) -> dict:
        """Fields re-signed with the kit's key."""
        return sign_manifest(fields, self.key)

    def release(self, product: str, version: str, data: bytes, *, path: Optional[str] = None,
                signed: bool = True, **fields: Any) -> dict:
        """Serve `data` as a .bin at FLASH_START and return its signed manifest dict."""
        import hashlib

        path = path or f"/{product}-{version}.bin"
        self.http.files[path] = data
        m = {"product": product, "version": version, "url": self.http.url(path),
             "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "format": "bin",
             "address": FLASH_START, **fields}
        return self.sign(m) if signed else m

    # ----- MQTT ------------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any, retain: bool = False) -> None:
        """Raw publish through the observer's connection (like mosquitto_pub)."""
        self.obs.publish(topic, payload, retain)

    def publish_release(self, manifest: Any, product: Optional[str] = None) -> None:
        """Put a manifest (dict, str or bytes) on `<base>/release/<product>`, retained."""
        product = product or manifest["product"]
        self.publish(self.topics.release(product), manifest, retain=True)

    def command(self, target: str, payload: Any, retain: bool = False) -> None:
        """Send to `<base>/<agent>/<target>/cmd` (topic not validated: hostile names allowed)."""
        self.publish(f"{BASE}/{self.agent_id}/{target}/cmd", payload, retain)

    def group_command(self, group: str, payload: Any) -> None:
        """Send to `<base>/group/<group>/cmd`."""
        self.publish(self.topics.group_cmd(group), payload)

    def fleet_command(self, payload: Any) -> None:
        """Send to `<base>/fleet/cmd`."""
        self.publish(self.topics.fleet_cmd, payload)

    def retained(self, topic: str, timeout: float = 10.0) -> Message:
        """What a subscriber arriving now gets on `topic`: the retained message (retain flag set)."""
        late = Observer(self.broker.host, self.broker.port, [topic])
        try:
            return late.wait_topic(topic, lambda m: m.retain, timeout=timeout)
        finally:
            late.close()

    def jobs(self, target: str) -> list[dict]:
        """Every job document the agent published for the target, oldest first."""
        return [m.json() for m in self.obs.on(self.topics.job(target)) if m.payload]

    def states(self, target: str) -> list[dict]:
        """Every state document the agent published for the target, oldest first."""
        return [m.json() for m in self.obs.on(self.topics.state(target)) if m.payload]

    def events(self, target: str) -> list[dict]:
        """Every event the agent published for the target, oldest first."""
        return [m.json() for m in self.obs.on(self.topics.events(target)) if m.payload]

    def wait_job(self, target: str, *statuses: str, after: int = 0, timeout: float = 30.0) -> dict:
        """The first job document (from message index `after`) whose status is one of
        `statuses` (default: any terminal status)."""
        want = statuses or TERMINAL
        msg = self.obs.wait_topic(self.topics.job(target),
                                  lambda m: bool(m.payload) and m.json().get("status") in want,
                                  timeout=timeout, after=after)
        return msg.json()

    def wait_settled(self, target: str, job: dict, timeout: float = 20.0) -> dict:
        """The state published after `job` (a terminal job document) was: in_progress false."""
        topic = self.topics.job(target)
        idx = next(i for i, m in enumerate(self.obs.messages)
                   if m.topic == topic and m.payload and m.json() == job)
        return self.wait_state(target, lambda s: True, after=idx + 1, timeout=timeout)

    def wait_state(self, target: str, predicate: Callable[[dict], bool], *, after: int = 0,
                   timeout: float = 20.0) -> dict:
        """The first state document (from index `after`) matching predicate."""
        msg = self.obs.wait_topic(self.topics.state(target),
                                  lambda m: bool(m.payload) and predicate(m.json()),
                                  timeout=timeout, after=after)
        return msg.json()


# ----- Home Assistant schema checks (reference/ha-mqtt.md section 1.2) -------------------------

HA_STATE_KEYS = frozenset({"installed_version", "latest_version", "title", "release_summary",
                           "release_url", "entity_picture", "in_progress", "update_percentage"})


def assert_ha_state(doc: Any) -> None:
    """Raise AssertionError unless `doc` passes HA's MQTT update JSON state schema as the
    contract narrows it: only HA's keys, strings non-null, in_progress a bool, release_url
    http(s), update_percentage null or a number 0..100 (and null when not in progress)."""
    assert isinstance(doc, dict), doc
    assert set(doc) <= HA_STATE_KEYS, f"keys HA rejects: {sorted(set(doc) - HA_STATE_KEYS)}"
    for k, v in doc.items():
        if k == "update_percentage":
            continue
        assert v is not None, f"{k} is null: HA drops the whole message"
    for k in ("installed_version", "latest_version", "title", "release_summary"):
        if k in doc:
            assert isinstance(doc[k], str), (k, doc[k])
    if "in_progress" in doc:
        assert isinstance(doc["in_progress"], bool), doc["in_progress"]
    if "release_url" in doc:
        assert doc["release_url"].startswith(("http://", "https://")), doc["release_url"]
    pct = doc.get("update_percentage")
    if pct is not None:
        assert not isinstance(pct, bool) and isinstance(pct, (int, float)), pct
        assert 0 <= pct <= 100, pct
        assert doc.get("in_progress") is True, "a percentage while not in progress"
