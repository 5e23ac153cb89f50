"""The demo's world: the scenario, and the broker, chips, web server, keys and agent it needs.

`World(opts, workdir, stack).build()` makes keys and images and starts everything, each part
registered on the exit stack so a failure half-way still tears down what started; `start()`
connects the viewer and starts the agent. `agent.demo` runs the update on top of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

from agent.config import load
from agent.demo.parts import FLASH_BASE, FileServer, ihex, make_image, start_broker
from agent.demo.view import Board, Row
from agent.errors import UsageError
from agent.flasher import image as firmware
from agent.flasher.target import Devices
from agent.mqtt.client import MqttClient
from agent.mqtt.commands import MAX_COMMAND_BYTES
from agent.mqtt.contract import Topics
from agent.ota.jobs import StateStore
from agent.ota.keys import build_manifest, keygen
from agent.pins.mock import MockBackend
from agent.service import Service, flash_target
from agent.sim import Faults, PtySim, SimChip, SimI2CBus
from agent.stm32.chips import CHIPS

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
AGENT_ID = "demo"
BASE_TOPIC = "stm32ota"
OLD, NEW = "1.0.0", "1.1.0"
CHIP_PID = 0x435  # STM32L43x/44x, the seed project's chip
MARKER = ".stm32ota-demo"  # marks a --workdir the demo may clean up again
_OWN = ("keys", "firmware", "releases", "state", "cache", "config.yaml")
NACK_EVERY = 5  # --faults: every 5th WRITE_MEMORY packet is refused
ERASE_FACTOR = 6.0  # --faults: erases take this much longer, so the broker restart hits a flash


@dataclass(frozen=True)
class DemoTarget:
    """One simulated target of the demo."""

    name: str
    product: str
    title: str
    link: str  # "uart" | "i2c"
    fmt: str  # file format of its firmware: "hex" | "bin"
    size: int  # image bytes
    lines: tuple[int, int]  # mock GPIO lines of NRST and BOOT0


TARGETS = (
    DemoTarget("pump", "pump-ctrl", "Pump controller", "uart", "hex", 20 * 1024, (17, 27)),
    DemoTarget("sensor", "sensor-node", "Sensor node", "i2c", "bin", 16 * 1024, (22, 23)),
)


@dataclass(frozen=True)
class DemoOptions:
    """What the command line asked for."""

    fast: bool = False
    faults: bool = False
    keep: bool = False
    broker: Optional[tuple[str, int]] = None
    username: Optional[str] = None  # for --broker (e.g. a Home Assistant add-on broker)
    password: Optional[str] = None
    workdir: Optional[Path] = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    tty: Optional[bool] = None
    timeout: Optional[float] = None  # seconds for the whole update; None: 60 fast, 180 real


def prepare_workdir(path: Optional[Path]) -> tuple[Path, bool]:
    """The directory for keys, images, state; (path, is_temporary). Refuses foreign content."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="stm32ota-demo-")), True
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()) and not (path / MARKER).exists():
        raise UsageError(f"--workdir {path} is not empty and was not made by the demo; give a "
                         "new or empty directory (the demo deletes its own files there on the "
                         "next run)", code="workdir_in_use")
    for name in _OWN:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for old in path.glob("flash-*.bin"):
        old.unlink()
    (path / MARKER).write_text("made by stm32ota demo; its files here are replaced on each run\n",
                               encoding="utf-8")
    return path, False


def write_firmware(root: Path, t: DemoTarget, version: str) -> Path:
    """Build one firmware version of a target and write it in the target's format."""
    data = make_image(t.product, version, t.size)
    path = root / f"{t.product}-{version}.{t.fmt}"
    if t.fmt == "hex":
        path.write_text(ihex(data, FLASH_BASE, start=FLASH_BASE + 0x201), encoding="ascii")
    else:
        path.write_bytes(data)
    return path


def config_text(work: Path, host: str, port: int, uart_port: str) -> str:
    """The agent's config.yaml for the demo (a real config, checked like any other)."""
    def q(value: Any) -> str:  # a JSON string is a YAML string, whatever the path holds
        return json.dumps(str(value))

    lines = [
        "# Written by `stm32ota demo`: the agent that updates the simulated chips.",
        # name: the devices are "pump on demo" in Home Assistant, not named after this host
        f"agent: {{id: {AGENT_ID}, name: {AGENT_ID}, state_dir: {q(work / 'state')}, "
        f"cache_dir: {q(work / 'cache')}}}",
        f"mqtt: {{host: {q(host)}, port: {port}, base_topic: {BASE_TOPIC}, reconnect_max: 2s}}",
        f"trust: {{keys: [{q(work / 'keys' / 'demo-release.pub')}]}}",
        "targets:",
    ]
    for t in TARGETS:
        nrst, boot0 = t.lines
        if t.link == "uart":
            link = f"{{type: uart, port: {q(uart_port)}, baud: 115200, parity: none}}"  # a pty: 8N1
        else:  # the agent is handed the simulated bus object for bus 1
            link = "{type: i2c, bus: 1, address: 0x48}"
        lines += [f"  - name: {t.name}", f"    product: {t.product}", f"    link: {link}",
                  f"    pins: {{backend: mock, nrst: {{line: {nrst}}}, boot0: {{line: {boot0}}}}}",
                  f"    expect_chip: 0x{CHIP_PID:03X}"]
    return "\n".join(lines) + "\n"


def dump_json(path: Path, doc: dict) -> None:
    """Write a manifest the way `stm32ota sign` does."""
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class World:
    """Everything the demo runs, wired together."""

    def __init__(self, opts: DemoOptions, work: Path, stack: contextlib.ExitStack) -> None:
        self.o = opts
        self.work = work
        self.stack = stack
        self.topics = Topics(BASE_TOPIC, AGENT_ID)
        self.sims: dict[str, SimChip] = {}
        self.labels: dict[str, str] = {}
        self.files: dict[tuple[str, str], Path] = {}
        self.host, self.port, self.protocol, self.broker_text = "", 0, 5, ""
        self.broker: Any = None
        self.svc: Any = None
        self.viewer: Any = None
        self.web: Optional[FileServer] = None
        self.board: Optional[Board] = None
        self.bus: Optional[SimI2CBus] = None
        self.manifests: dict[str, dict] = {}
        self.before: dict[str, Optional[str]] = {}  # versions installed before the update
        self.chaos_note = ""
        self.hidden_logs: dict[str, int] = {}  # logger name -> records counted, not shown

    # ----- build -------------------------------------------------------------------------------

    def build(self) -> None:
        """Keys, images, broker, chips, web server, config, agent, viewer: in that order."""
        key = self._keys()
        fw = self.work / "firmware"
        fw.mkdir()
        for t in TARGETS:
            for v in (OLD, NEW):
                self.files[(t.name, v)] = write_firmware(fw, t, v)
        self._broker()
        uart_port = self._chips()
        self.web = self.stack.enter_context(FileServer(fw))
        self._sign(key)
        self._agent(uart_port)
        self._viewer()

    def _keys(self) -> Path:
        (self.work / "keys").mkdir()
        key, _ = keygen(self.work / "keys" / "demo-release")
        return key

    def _broker(self) -> None:
        if self.o.broker is not None:
            self.host, self.port = self.o.broker
            self.protocol = None  # MQTT 5, or 3.1.1 if that broker speaks only 3.1.1
            who = f" as {self.o.username}" if self.o.username else ""
            self.broker_text = f"{self.host}:{self.port}{who} (given with --broker)"
            return
        self.broker = start_broker()
        self.stack.callback(self.broker.close)
        self.host, self.port, self.protocol = self.broker.host, self.broker.port, self.broker.protocol
        mqtt = "MQTT 3.1.1" if self.protocol == 4 else "MQTT 5"
        self.broker_text = f"{self.broker.kind} on {self.host}:{self.port} ({mqtt})"

    def _chips(self) -> str:
        """Both simulated L432s, running 1.0.0; returns the UART pty path."""
        uart_port = ""
        for t in TARGETS:
            faults = Faults()
            if self.o.faults:
                faults = Faults(nack_every_write=NACK_EVERY, erase_factor=ERASE_FACTOR,
                                i2c_erase_no_ack=t.link == "i2c")
            sim = SimChip(CHIPS[CHIP_PID], realtime=not self.o.fast, faults=faults, boot0=False)
            image = firmware.load(str(self.files[(t.name, OLD)]), bin_default=FLASH_BASE)
            for seg in image.segments:  # as if it left the factory with 1.0.0
                off = seg.address - sim.chip.flash_start
                sim.flash[off:off + len(seg.data)] = seg.data
            sim.power_cycle()  # latch "flash not empty": BOOT0 low now runs the application
            self.sims[t.name] = sim
            if t.link == "uart":
                pty = PtySim(sim).start()
                self.stack.callback(pty.stop)
                uart_port = pty.path
                self.labels[t.name] = f"UART {pty.path}"
            else:
                self.bus = SimI2CBus()
                self.bus.attach(0x48, sim)
                self.stack.callback(self.bus.close)
                self.labels[t.name] = "I2C 0x48"
        return uart_port

    def _sign(self, key: Path) -> None:
        (self.work / "releases").mkdir()
        assert self.web is not None
        for t in TARGETS:
            path = self.files[(t.name, NEW)]
            m = build_manifest(path, key=key, product=t.product, version=NEW,
                               url=self.web.url(path.name), chip=CHIP_PID, title=t.title,
                               release_summary=f"{t.title} {NEW}: demo release built by "
                                               "`stm32ota demo`")
            dump_json(self.work / "releases" / f"{t.product}-{NEW}.json", m)
            self.manifests[t.name] = m

    def _agent(self, uart_port: str) -> None:
        path = self.work / "config.yaml"
        path.write_text(config_text(self.work, self.host, self.port, uart_port), encoding="utf-8")
        cfg = load(path)
        store = StateStore(cfg.agent.state_dir)
        for t in TARGETS:  # the agent's records agree with what the chips run
            old = self.files[(t.name, OLD)]
            store.set_installed(t.name, OLD, _sha256(old))
        targets = [flash_target(cfg.target(t.name)) for t in TARGETS]

        def client() -> Any:
            return self._client(f"stm32ota-{cfg.agent.id}", will=(self.topics.availability,
                                                                  "offline", True),
                                max_payload=MAX_COMMAND_BYTES)

        self.svc = Service(cfg, targets, client_factory=client, devices=self._devices())

    def _devices(self) -> dict[str, Devices]:
        """The simulators stand in for each target's devices: mock pins drive their lines."""
        return {t.name: Devices(i2c_bus=self.bus if t.link == "i2c" else None,
                                pins=lambda sim=self.sims[t.name]: MockBackend(sim.set_line))
                for t in TARGETS}

    def _client(self, client_id: str, **kw: Any) -> Any:
        return MqttClient(self.host, self.port, client_id=client_id, protocol=self.protocol,
                          reconnect_min=0.5, reconnect_max=2, keepalive=20,
                          session_expiry=3600 if self.protocol == 4 else 0,
                          username=self.o.username, password=self.o.password, **kw)

    def _viewer(self) -> None:

        rows = {t.name: Row(t.name, self.labels[t.name], t.size) for t in TARGETS}
        self.board = Board(rows, out=self.o.out, tty=self.o.tty)
        self.viewer = self._client(f"stm32ota-demo-viewer-{os.getpid()}")
        for t in TARGETS:
            self.viewer.subscribe(self.topics.job(t.name), self._on("job", t.name))
            self.viewer.subscribe(self.topics.state(t.name), self._on("state", t.name))

    def _on(self, kind: str, name: str) -> Any:
        def handler(topic: str, payload: bytes, retained: bool) -> None:
            if not payload:
                return
            doc = json.loads(payload)
            assert self.board is not None
            (self.board.on_job if kind == "job" else self.board.on_state)(name, doc)

        return handler

    # ----- run -----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect the viewer, clear stale releases, start the agent."""

        self.viewer.start()
        self.stack.callback(self.viewer.stop)
        if not self.viewer.wait_connected(CONNECT_TIMEOUT):
            raise UsageError(f"cannot connect to the MQTT broker at {self.host}:{self.port}",
                             code="broker_unreachable")
        # An earlier run on this broker left retained messages: its release (signed by a key
        # thrown away since: the agent would reject it) and its job and state. Clear them, then
        # forget what the viewer already got of them, so only this run's agent is shown.
        for t in TARGETS:
            for topic in (self.topics.release(t.product), self.topics.job(t.name),
                          self.topics.state(t.name)):
                self.viewer.publish_wait(topic, b"", retain=True)
        assert self.board is not None
        self.board.forget()
        self.svc.start()
        self.stack.callback(self.svc.stop)
        if not self.svc.client.wait_connected(CONNECT_TIMEOUT):
            raise UsageError("the agent could not connect to the broker", code="broker_unreachable")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
