#!/usr/bin/env python3
"""Benchmark: what an idle `stm32ota run` costs (CPU, memory, threads, wakeups).

Starts a private mosquitto on a free loopback port, two simulated STM32s on ptys (owned by
this process, so their threads are not counted), a signing key and a config with two UART
targets, then `python -m agent run --config ...` as a subprocess. It waits for the agent's
retained availability `online`, lets the start-up traffic settle, and samples the agent
process over a window:

- CPU: utime+stime of all threads from /proc/PID/stat (10 ms ticks), and the nanosecond
  run time summed over /proc/PID/task/*/schedstat where the kernel has it;
- RSS (VmRSS) and thread count from /proc/PID/status;
- wakeups: voluntary + involuntary context switches summed over /proc/PID/task/*/status,
  also per thread, which names the threads that poll.

Usage: python bench/idle.py [--seconds 30] [--settle 3] [--keepalive 60]

Example output on a 2-core x86 VM (AMD EPYC, Python 3.11, paho-mqtt 2.2, mosquitto 2.0.11).
This is not a Pi: a Raspberry Pi Zero 2 W (Cortex-A53) is roughly 5-10x slower per core, so
read the CPU figures times 5-10 there; wakeups and threads are the same, RSS similar on a 64-bit OS.

  before (paho's network thread woke from select() every second; --seconds 30):
    start to online          0.56 s
    CPU                      0.0133 % of one core (8.0 ms/min; ticks 40 ms/min)
    RSS                      35.1 MiB, 5 threads
    context switches         1.03 /s
      tid 31058    pselect6     1.03/s        (paho; main, dispatcher, 2 workers: 0.00/s)

  after (it sleeps a quarter of the keepalive, 15 s at the default 60 s; --seconds 60):
    start to online          0.41 s
    CPU                      0.0013 % of one core (0.8 ms/min; ticks 0 ms/min)
    RSS                      35.1 MiB, 5 threads
    context switches         0.08 /s
      tid 31734    pselect6     0.08/s        (4 timeouts + 1 PINGREQ/PINGRESP a minute)

Start-to-online varies with the machine's load (0.3-0.6 s here) and is mostly the interpreter
and imports (importing the run path alone takes ~0.4 s here, so expect 2-4 s on the Pi). Of
the RSS, paho (with ssl) is ~11 MiB and cryptography ~7 MiB over a bare interpreter's 11 MiB,
the agent's own modules ~5 MiB: nothing there is loaded that a run does not need.
Under systemd (WatchdogSec=60) the main thread adds 2 wakeups a minute for the watchdog.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import paho.mqtt.client as paho  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.ota.keys import keygen  # noqa: E402
from agent.stm32.chips import CHIPS  # noqa: E402
from agent.sim import PtySim, SimChip  # noqa: E402
from mosquitto import Mosquitto  # noqa: E402

AGENT_ID = "bench"
BASE = "stm32ota"
L432 = 0x435
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# Python 3.11 does not name OS threads, so a thread is told by the system call it waits in
SYSCALLS = {
    "x86_64": {0: "read", 7: "poll", 23: "select", 35: "nanosleep", 202: "futex",
               230: "clock_nanosleep", 232: "epoll_wait", 270: "pselect6", 271: "ppoll"},
    "aarch64": {63: "read", 72: "pselect6", 73: "ppoll", 98: "futex", 101: "nanosleep",
                115: "clock_nanosleep", 22: "epoll_pwait"},
}.get(platform.machine(), {})


@dataclass(frozen=True)
class ThreadStat:
    """One thread of the agent: its name and context switches so far."""

    name: str
    switches: int
    waits_in: str  # the system call it is blocked in ("select" for a poller, "futex" for a lock)


@dataclass(frozen=True)
class Sample:
    """The agent process at one moment."""

    pid: int
    at: float
    cpu_s: float  # utime + stime of all threads, from /proc/PID/stat
    run_ns: int | None  # sum of /proc/PID/task/*/schedstat run times, if the kernel has them
    rss_kib: int
    threads: dict[int, ThreadStat]


def _status(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _syscall(task: Path) -> str:
    try:
        nr = (task / "syscall").read_text().split()[0]
    except (OSError, IndexError):  # not readable without ptrace rights on some systems
        return "?"
    if not nr.lstrip("-").isdigit():
        return nr  # "running"
    return SYSCALLS.get(int(nr), f"syscall {nr}")


def _read_threads(pid: int) -> tuple[dict[int, ThreadStat], int | None]:
    threads, run_ns = {}, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            st = _status(task / "status")
            switches = int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
            threads[int(task.name)] = ThreadStat((task / "comm").read_text().strip(), switches,
                                                 _syscall(task))
            schedstat = task / "schedstat"
            if run_ns is not None and schedstat.exists():
                run_ns += int(schedstat.read_text().split()[0])
            else:
                run_ns = None
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
    return threads, run_ns


def sample(pid: int) -> Sample:
    """Read the process's CPU time, RSS and per-thread context switches now."""
    at = time.monotonic()
    # comm may contain spaces and parentheses: fields start after the last ")"
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu_s = (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14, 15)
    rss_kib = int(_status(Path(f"/proc/{pid}/status"))["VmRSS"].split()[0])
    threads, run_ns = _read_threads(pid)
    return Sample(pid, at, cpu_s, run_ns, rss_kib, threads)


def report(start_s: float, a: Sample, b: Sample) -> list[str]:
    """The comparison of two samples as printable lines."""
    span = b.at - a.at
    cpu = b.cpu_s - a.cpu_s
    # the ns run time is the real figure; 10 ms ticks often read 0 over an idle minute
    cpu_ms_min = f"ticks {cpu * 1000 / span * 60:.0f} ms/min"
    if a.run_ns is not None and b.run_ns is not None:
        cpu = (b.run_ns - a.run_ns) / 1e9
        cpu_ms_min = f"{cpu * 1000 / span * 60:.1f} ms/min; {cpu_ms_min}"
    total = 0
    per_thread = []
    for tid, t in sorted(b.threads.items()):
        d = t.switches - a.threads[tid].switches if tid in a.threads else t.switches
        total += d
        role = "main" if tid == b.pid else t.waits_in
        per_thread.append(f"  tid {tid:<8} {role:<10} {d / span:6.2f}/s")
    return [
        f"window                   {span:.1f} s",
        f"start to online          {start_s:.2f} s",
        f"CPU                      {cpu / span * 100:.4f} % of one core ({cpu_ms_min})",
        f"RSS                      {b.rss_kib / 1024:.1f} MiB, {len(b.threads)} threads",
        f"context switches         {total / span:.2f} /s",
        *per_thread,
    ]


def write_config(folder: Path, port: int, ptys: list[str], keepalive: int) -> Path:
    """config.yaml with two UART targets on the simulators' ptys."""
    _, pub = keygen(folder / "release")
    targets = [{"name": f"t{i}", "product": "bench-product", "pins": {"backend": "none"},
                "link": {"type": "uart", "port": p, "baud": 115200, "parity": "none"}}
               for i, p in enumerate(ptys)]
    cfg = {
        "agent": {"id": AGENT_ID, "state_dir": str(folder / "state"),
                  "cache_dir": str(folder / "cache")},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": f"{keepalive}s"},
        "trust": {"keys": [str(pub)]},
        "targets": targets,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def wait_online(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Block until the agent's retained availability says `online`."""
    online = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"idle-bench-{os.getpid()}")
    client.on_connect = lambda c, *a: c.subscribe(f"{BASE}/{AGENT_ID}/availability", 1)
    client.on_message = lambda c, u, m: online.set() if m.payload == b"online" else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not online.wait(0.05):
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited with {proc.returncode} before it was online")
            if time.monotonic() > deadline:
                raise SystemExit(f"the agent was not online within {timeout:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()


def measure(args: argparse.Namespace, folder: Path, broker: Mosquitto) -> list[str]:
    """Run the agent, wait for online, sample the window, stop it; return the report."""
    sims = [PtySim(SimChip(CHIPS[L432], realtime=False)).start() for _ in range(2)]
    config = write_config(folder, broker.port, [s.path for s in sims], args.keepalive)
    log_path = folder / "agent.log"
    with open(log_path, "wb") as logf:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                cwd=ROOT, stdout=logf, stderr=logf,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_online(broker.port, proc)
        start_s = time.monotonic() - t0
        time.sleep(args.settle)  # start-up publishing and subscription acks are not idle
        first = sample(proc.pid)
        time.sleep(args.seconds)
        last = sample(proc.pid)
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited with {proc.returncode} during the window")
        lines = report(start_s, first, last)
    except BaseException:
        sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        for s in sims:
            s.stop()
    lines.append(f"agent exit code          {rc} (SIGTERM)")
    return lines


def main() -> int:
    """Parse arguments, run the measurement, print the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="sampling window (default 30)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="wait after online before sampling (default 3)")
    ap.add_argument("--keepalive", type=int, default=60,
                    help="mqtt.keepalive in seconds (default 60, the config default)")
    args = ap.parse_args()
    if not Path("/proc/self/task").is_dir():
        raise SystemExit("this benchmark reads /proc: Linux only")
    with tempfile.TemporaryDirectory(prefix="stm32ota-idle-") as tmp, Mosquitto() as broker:
        for line in measure(args, Path(tmp), broker):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
