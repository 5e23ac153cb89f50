#!/usr/bin/env python3
"""Benchmark: the fleet at scale. N real agents and one fleet install; the fleet view alone
at 20,000 targets; what one agent costs.

1. View alone: 20,000 synthetic targets (discovery, availability and state, made by the
   agents' own payload builders: 50,000 retained messages) on a private mosquitto with
   `max_queued_messages 200000`. Times the read of the whole retained state as
   `stm32ota fleet --once` does it (Fleet + Watcher, until the sync marker is back), then
   runs `--wait-for` while every target reports the new version at --rate messages/s and
   says how long after the last message it returned (it keeps up if that is well under 1 s).
2. N agents (`python -m agent run`, one simulated L432 each on a pty, default settings but a
   unique id) on one mosquitto (default settings), one `stm32ota publish --fleet` install of a
   4 KiB image from a local HTTP server: time until every job is SUCCEEDED, the messages the
   broker delivered per target for that update (seen by one `#` subscriber), broker CPU
   during the update and idle, the fleet view compared with the truth, agent RSS idle and
   its peak (VmHWM, so during the flash), agent CPU idle.
3. Start-up: wall time of `python -m agent run --help` against a bare interpreter.

Usage: python bench/fleet.py [--agents 200] [--targets 20000] [--rate 5000] [--skip-agents]
Runs in about 3-4 minutes at the defaults on a 2-core machine (most of it starting agents).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import paho.mqtt.client as paho  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.cli import main as cli  # noqa: E402
from agent.mqtt import contract as ha  # noqa: E402
from agent.mqtt.client import MqttClient  # noqa: E402
from agent.mqtt.fleet import Fleet  # noqa: E402
from agent.mqtt.topics import Topics  # noqa: E402
from agent.mqtt.watcher import Watcher, wait_for  # noqa: E402
from agent.ota.keys import build_manifest, keygen  # noqa: E402
from agent.sim import PtySim, SimChip  # noqa: E402
from agent.stm32.chips import CHIPS  # noqa: E402
from httpserver import FileServer  # noqa: E402
from mosquitto import Mosquitto  # noqa: E402

BASE, PRODUCT, L432 = "stm32ota", "bench-product", 0x435
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def status_kib(pid: int, key: str) -> int:
    """A kB figure from /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Counter:
    """A plain paho subscriber that counts what the broker delivers and keeps the latest job."""

    def __init__(self, port: int, topics: tuple[str, ...]) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.kinds: dict[str, int] = {}
        self.latest: dict[str, bytes] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"count-{os.getpid()}",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *a: [c.subscribe(t, 0) for t in topics]
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.count += 1
            kind = msg.topic.rsplit("/", 1)[-1]
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            self.latest[msg.topic] = bytes(msg.payload)

    def reset(self) -> None:
        """Start counting afresh."""
        with self.lock:
            self.count, self.kinds = 0, {}

    def wait(self, predicate: Callable[[dict[str, bytes]], bool], timeout: float) -> bool:
        """Poll the latest payloads until predicate holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self.latest):
                    return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


# ----- 1. the fleet view alone ---------------------------------------------------------------


def publisher(port: int, name: str) -> paho.Client:
    """A plain paho client for the synthetic fleet."""
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    return pub


def state_of(version: str) -> str:
    """A target's state payload, installed and latest `version`."""
    return json.dumps(ha.state_payload(installed_version=version, latest_version=version,
                                       title="t", release_summary="", release_url=None,
                                       in_progress=False, update_percentage=None))


def synthetic(port: int, targets: int, version: str) -> None:
    """Retained discovery, availability and state of `targets` targets, two per agent."""
    pub, state = publisher(port, "synthetic"), state_of(version)
    for i in range(0, targets, 2):
        agent = f"gw{i // 2:05d}"
        t = Topics(BASE, agent)
        pub.publish(t.availability, "online", qos=0, retain=True)
        for name in ("t0", "t1")[:targets - i]:
            doc = ha.discovery_payload(agent, name, base_topic=BASE, device_info={}, product=PRODUCT)
            pub.publish(t.discovery(name), json.dumps(doc), qos=0, retain=True)
            pub.publish(t.state(name), state, qos=0, retain=True)
    pub.publish("bench/done", b"", qos=1).wait_for_publish(120)  # in order after the rest
    pub.disconnect()
    pub.loop_stop()


def paced_updates(port: int, targets: int, version: str, rate: float) -> float:
    """Every target reports `version`, at `rate` messages/s; returns when the last one left."""
    pub, state = publisher(port, "updates"), state_of(version)
    start = time.monotonic()
    for i in range(targets):
        pub.publish(Topics(BASE, f"gw{i // 2:05d}").state(f"t{i % 2}"), state, qos=0, retain=True)
        if i % 50 == 49:
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    pub.publish("bench/done", b"", qos=1).wait_for_publish(60)
    last = time.monotonic()
    pub.disconnect()
    pub.loop_stop()
    print(f"  updates sent at          {targets / (last - start):,.0f} msg/s "
          f"({targets:,} in {last - start:.1f} s)")
    return last


def view_alone(targets: int, rate: float) -> None:
    """Part 1: ingest time of the retained state and --wait-for under a stream of updates."""
    print(f"fleet view alone, {targets:,} targets")
    with Mosquitto(extra_config="max_queued_messages 200000") as broker:
        t0 = time.monotonic()
        synthetic(broker.port, targets, "1.0.0")
        print(f"  retained messages made   {time.monotonic() - t0:.1f} s")
        fleet = Fleet(BASE)
        watcher = Watcher(fleet, lambda **kw: MqttClient(broker.host, broker.port, **kw))
        t0 = time.monotonic()
        assert watcher.start(10)
        complete = watcher.settle(30.0, 120.0)
        ingest = time.monotonic() - t0
        rows = fleet.snapshot()
        print(f"  full retained ingest     {ingest:.2f} s, {len(rows):,} rows, marker back: "
              f"{complete}, exact: {len(rows) == targets and all(r.product for r in rows)}")
        result: dict[str, Any] = {}

        def wait() -> None:
            result["rows"] = wait_for(watcher, "2.0.0", PRODUCT, timeout=300, quiet=1.0)
            result["at"] = time.monotonic()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        time.sleep(0.5)
        last = paced_updates(broker.port, targets, "2.0.0", rate)
        waiter.join(300)
        watcher.stop()
        lag = result["at"] - last if "at" in result else float("nan")
        print(f"  --wait-for returned      {lag:+.2f} s after the last update "
              f"({len(result.get('rows', [])):,} targets)")


# ----- 2. N agents, one fleet install -----------------------------------------------------------


def agent_config(folder: Path, i: int, port: int, pty: str, pub: Path) -> Path:
    """Default settings, a unique id, one UART target on a simulator's pty."""
    cfg = {"agent": {"id": f"gw{i:03d}", "state_dir": str(folder / "state"),
                     "cache_dir": str(folder / "cache")},
           "mqtt": {"host": "127.0.0.1", "port": port},
           "trust": {"keys": [str(pub)]},
           "targets": [{"name": "t0", "product": PRODUCT, "pins": {"backend": "none"},
                        "link": {"type": "uart", "port": pty, "baud": 115200, "parity": "none"}}]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_agents(tmp: Path, n: int, port: int, pub: Path, counter: Counter,
                 sims: list[PtySim]) -> list[subprocess.Popen]:
    """Start the agents in waves of 20 and wait until every one is online."""
    procs = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    for i in range(n):
        cfg = agent_config(tmp / f"a{i}", i, port, sims[i].path, pub)
        log = open(tmp / f"a{i}" / "agent.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                                      cwd=ROOT, stdout=log, stderr=log, env=env))
        if i % 20 == 19:
            counter.wait(lambda latest: sum(v == b"online" for k, v in latest.items()
                                            if k.endswith("/availability")) >= i - 10, 120)
    ok = counter.wait(lambda latest: sum(v == b"online" for k, v in latest.items()
                                         if k.endswith("/availability")) >= n, 300)
    print(f"  {n} agents online        {ok} after {time.monotonic() - t0:.0f} s")
    return procs


def fleet_install(args: argparse.Namespace, tmp: Path) -> None:
    """Part 2."""
    n = args.agents
    print(f"{n} agents, one fleet install")
    key, pub = keygen(tmp / "release")
    fw = os.urandom(4096)
    (tmp / "fw.bin").write_bytes(fw)
    with Mosquitto() as broker, FileServer({"/fw.bin": fw}) as http:
        # paho waits in select(), which cannot watch descriptors numbered 1024 or above, and
        # every simulated chip holds four: the counter connects first, and low numbers are
        # kept free for the publish and the fleet view that connect later
        counter = Counter(broker.port, (f"{BASE}/#", "homeassistant/#"))
        spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(64)]
        sims = [PtySim(SimChip(CHIPS[L432], realtime=False)).start() for _ in range(n)]
        for fd in spare:
            os.close(fd)
        procs = start_agents(tmp, n, broker.port, pub, counter, sims)
        try:
            time.sleep(3)
            m = build_manifest(tmp / "fw.bin", key=key, product=PRODUCT, version="2.0.0",
                               url=http.url("/fw.bin"), chip=L432)
            (tmp / "m.json").write_text(json.dumps(m))
            counter.reset()
            b0, t0 = cpu_s(broker._proc.pid), time.monotonic()
            assert cli(["-q", "publish", str(tmp / "m.json"), "--broker",
                        f"127.0.0.1:{broker.port}", "--fleet"]) == 0
            done = counter.wait(lambda latest: sum(
                b'"SUCCEEDED"' in v for k, v in latest.items() if k.endswith("/job")) >= n, 600)
            span = time.monotonic() - t0
            busy = cpu_s(broker._proc.pid) - b0
            time.sleep(2)  # the last state and event messages
            with counter.lock:
                total, kinds = counter.count, dict(counter.kinds)
            print(f"  all SUCCEEDED            {done} in {span:.1f} s")
            print(f"  messages per target      {total / n:.1f} ("
                  + ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(kinds.items())) + ")")
            print(f"  broker CPU, update       {busy / span * 100:.1f} % of a core")
            report_view(broker, n)
            idle_figures(broker, procs, n)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(30)
            counter.close()
            for s in sims:
                s.stop()


def report_view(broker: Mosquitto, n: int) -> None:
    """The fleet view after the install, against the truth."""
    fleet = Fleet(BASE)
    watcher = Watcher(fleet, lambda **kw: MqttClient(broker.host, broker.port, **kw))
    watcher.start(10)
    complete = watcher.settle(1.0, 30.0)
    watcher.stop()
    rows = fleet.snapshot()
    exact = (len(rows) == n and all(r.installed == "2.0.0" and r.status == "SUCCEEDED"
                                    and r.online and r.product == PRODUCT for r in rows))
    print(f"  fleet view               {len(rows)} rows, marker back: {complete}, exact: {exact}")


def idle_figures(broker: Mosquitto, procs: list[subprocess.Popen], n: int) -> None:
    """Broker and agents idle for 10 s; agent RSS now and at its peak (the flash)."""
    pids = [p.pid for p in procs if p.poll() is None]
    b0, a0, t0 = cpu_s(broker._proc.pid), sum(cpu_s(p) for p in pids), time.monotonic()
    time.sleep(10)
    span = time.monotonic() - t0
    b1, a1 = cpu_s(broker._proc.pid), sum(cpu_s(p) for p in pids)
    rss = [status_kib(p, "VmRSS") / 1024 for p in pids]
    hwm = [status_kib(p, "VmHWM") / 1024 for p in pids]
    print(f"  broker CPU, idle         {(b1 - b0) / span * 100:.2f} % of a core")
    print(f"  agent CPU, idle          {(a1 - a0) / span / len(pids) * 100:.3f} % of a core each "
          f"(10 ms ticks over {span:.0f} s; bench/idle.py has the ns figure)")
    print(f"  agent RSS idle           {sum(rss) / len(rss):.1f} MiB mean, {max(rss):.1f} max")
    print(f"  agent RSS peak (flash)   {sum(hwm) / len(hwm):.1f} MiB mean, {max(hwm):.1f} max")
    print(f"  agents still running     {len(pids)} of {n}")


# ----- 3. start-up ---------------------------------------------------------------------------


def startup() -> None:
    """Best of 5 wall times: `run --help` (imports what `run` needs) and a bare interpreter."""
    def best(argv: list[str]) -> float:
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            subprocess.run(argv, cwd=ROOT, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            times.append(time.monotonic() - t0)
        return min(times)

    run = best([sys.executable, "-m", "agent", "run", "--help"])
    bare = best([sys.executable, "-c", "pass"])
    print(f"start-up: `run --help` {run * 1000:.0f} ms, bare interpreter {bare * 1000:.0f} ms, "
          f"imports {(run - bare) * 1000:.0f} ms")


def main() -> int:
    """Parse arguments and run the parts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=200, help="real agents (default 200)")
    ap.add_argument("--targets", type=int, default=20000, help="synthetic targets (default 20000)")
    ap.add_argument("--rate", type=float, default=5000, help="updates/s for --wait-for (default 5000)")
    ap.add_argument("--skip-agents", action="store_true", help="only parts 1 and 3")
    args = ap.parse_args()
    startup()
    view_alone(args.targets, args.rate)
    if not args.skip_agents:
        with tempfile.TemporaryDirectory(prefix="stm32ota-fleet-") as tmp:
            fleet_install(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
