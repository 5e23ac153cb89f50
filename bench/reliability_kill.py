"""The "Kill anywhere" category of bench/reliability.py: SIGKILL a real agent at any moment.

The agent runs as `python -m agent run` against a real mosquitto, a real HTTP server and the
simulator on a pty (tests/agentkit.py). Each trial installs a new release and SIGKILLs the
agent: once a phase was persisted (queued ... start), as the chip receives block k of the image
(the simulator kills from inside its write handler, so the index is exact), at random moments
of the restart too (stacked kills), and with the simulator's faults on. Then the agent starts
again and must end the job with exactly one terminal status, the flash byte-exact, no second
download of an image it had verified, and no temporary files in its state or cache.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from agentkit import FLASH_START, TERMINAL, AgentKit, SimTarget
from reliability import ROOT, Row, category

from agent.ota.jobs import TEMP_GLOB
from agent.ota.updater import MAX_ATTEMPTS
from agent.sim import Faults

IMAGE_SIZE = 12 * 1024  # 48 write blocks of 256 bytes
PHASES = ("queued", "download", "verify_image", "enter_bootloader", "erase", "write", "verify",
          "start")
AFTER_DOWNLOAD = PHASES[2:]


class Trial:
    """One install with kills; `kill_phase` or `kill_block` says where the first one lands."""

    def __init__(self, name: str, *, kill_phase: Optional[str] = None,
                 kill_block: Optional[int] = None, stacked: int = 0,
                 faults: Optional[Faults] = None) -> None:
        self.name, self.kill_phase, self.kill_block = name, kill_phase, kill_block
        self.stacked, self.faults = stacked, faults


def trials(quick: bool, rng: random.Random) -> list[Trial]:
    """Every persisted phase, block indexes across the image, stacked kills, kills with faults."""
    if quick:
        return [Trial("phase write", kill_phase="write"), Trial("block 20", kill_block=20),
                Trial("block 5, 1 stacked", kill_block=5, stacked=1)]
    out = [Trial(f"phase {p}", kill_phase=p) for p in PHASES]
    out += [Trial(f"block {k}", kill_block=k) for k in (0, 1, 7, 16, 24, 32, 40, 47)]
    out += [Trial(f"block {k}, {n} stacked", kill_block=k, stacked=n)
            for k, n in ((rng.randrange(48), rng.randint(1, 3)) for _ in range(6))]
    out += [Trial("block 10, NACK every 7th write", kill_block=10,
                  faults=Faults(nack_every_write=7)),
            Trial("phase erase, slow erase", kill_phase="erase", faults=Faults(erase_factor=4)),
            Trial("block 30, drop every 5000th byte", kill_block=30, faults=Faults(drop_every=5000)),
            Trial("phase verify, corrupt every 3000th byte", kill_phase="verify",
                  faults=Faults(corrupt_every=3000))]
    return out


class PinWire:
    """The simulator's end of bench/agent_with_pins.py's socket: applies each pin change."""

    def __init__(self, sim_target: SimTarget, path: Path) -> None:
        self.target, self.path = sim_target, path
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._apply, args=(conn,), daemon=True).start()

    def _apply(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:  # ends when the agent dies
                name, level = line.decode().split()
                self.target.sim.set_line(name, level == "1")
                conn.sendall(b"k")

    def start_agent(self, kit: AgentKit, wait_online: bool = True) -> None:
        """Like kit.start_process(), with the pins on this wire."""
        mark = kit.obs.mark()
        path = kit.write_config()
        kit.log_path = kit.dir / "agent.log"
        with open(kit.log_path, "ab") as logf:
            kit.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "agent_with_pins.py"), str(path),
                 str(self.path)], stdout=logf, stderr=logf, cwd=str(ROOT),
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        if wait_online:
            kit._wait_started(mark)


def _start(kit: AgentKit, wire: Optional[PinWire], wait_online: bool = True) -> None:
    if wire is None:
        kit.start_process(wait_online=wait_online)
    else:
        wire.start_agent(kit, wait_online)


def _kill(kit: AgentKit) -> None:
    proc = kit.proc
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    kit.proc = None


def _arm_block_kill(kit: AgentKit, t: SimTarget, block: int) -> threading.Event:
    """SIGKILL the agent from inside the simulator when it programs write block `block`."""
    done, seen, note = threading.Event(), [0], t.sim.note

    def counting(kind: str, *details: object) -> None:
        note(kind, *details)
        if kind == "write" and not done.is_set():
            if seen[0] >= block:
                _kill(kit)
                done.set()
            seen[0] += 1
    t.sim.note = counting  # type: ignore[method-assign]
    return done


def _terminal_events(kit: AgentKit, job_id: str) -> list[str]:
    return [e["status"] for e in kit.events("pump")
            if e.get("job_id") == job_id and e.get("status") in TERMINAL]


def _gets(kit: AgentKit, path: str) -> int:
    return sum(1 for r in kit.http.requests if r.method == "GET" and r.path == path)


def run_trial(kit: AgentKit, t: SimTarget, trial: Trial, n: int, rng: random.Random,
              wire: Optional[PinWire]) -> list[str]:
    """One install with its kills and restarts; what went wrong (empty: clean).
    Without a pin `wire` the chip is put in its bootloader by hand, as a person would."""
    data = kit.image(IMAGE_SIZE, seed=100 + n)
    path = f"/fw-{n}.bin"
    m = kit.release("pump-ctrl", f"2.0.{n}", data, path=path)
    if wire is None:
        t.sim.reset(boot0=True)
    t.sim.faults = trial.faults or Faults()
    t.sim.realtime = True  # real line time, so a kill lands where it is aimed
    _start(kit, wire)
    mark = kit.obs.mark()
    armed = _arm_block_kill(kit, t, trial.kill_block) if trial.kill_block is not None else None
    kit.command("pump", {"op": "install", "manifest": m})
    job = kit.obs.wait_topic(kit.topics.job("pump"), lambda msg: bool(msg.payload) and
                             msg.json().get("to_version") == f"2.0.{n}", after=mark).json()
    phase = None
    if armed is not None:
        armed.wait(60)
        del t.sim.note  # the class's own method again
    else:
        phase = kit.obs.wait_topic(kit.topics.job("pump"), lambda msg: bool(msg.payload) and
                                   msg.json().get("phase") == trial.kill_phase, after=mark,
                                   timeout=60).json()
        _kill(kit)
    cached = phase is not None and phase["phase"] in AFTER_DOWNLOAD or armed is not None
    gets = _gets(kit, path)
    for _ in range(trial.stacked):  # die again while recovering
        _start(kit, wire, wait_online=False)
        time.sleep(rng.uniform(0.3, 2.0))
        _kill(kit)
    t.sim.realtime = False
    t.sim.faults = Faults()
    if wire is None and t.sim.mode == "application":  # killed after the start command
        t.sim.reset(boot0=True)
    _start(kit, wire)
    problems = _judge(kit, t, job["job_id"], data, cached, gets, path, trial.stacked, m,
                      by_hand=wire is None)
    kit.stop_process()
    return problems


def _judge(kit: AgentKit, t: SimTarget, job_id: str, data: bytes, cached: bool, gets: int,
           path: str, stacked: int, manifest: dict, by_hand: bool = False) -> list[str]:
    problems = []
    try:
        done = kit.obs.wait_topic(kit.topics.job("pump"), lambda m: bool(m.payload) and
                                  m.json()["job_id"] == job_id and m.json()["status"] in TERMINAL,
                                  timeout=60).json()
    except TimeoutError:
        return ["no terminal status after the restart: " + kit.agent_log()[-500:]]
    code = (done.get("error") or {}).get("code")
    gave_up = done["status"] == "FAILED" and code == "too_many_attempts"
    # Without pins, a kill between an ACK and the frame that should follow it leaves the ROM
    # waiting for up to 258 bytes of a WRITE that never come (AN3155 has no timeout), and
    # bytes sent to end it could complete it as a valid command: the agent says so
    # (no_bootloader, put it in its bootloader by hand) and the person's repair is a reset,
    # then the install again.
    lost = by_hand and done["status"] == "FAILED" and code == "no_bootloader"
    if lost:
        t.sim.reset(boot0=True)
    if (gave_up and stacked + 1 >= MAX_ATTEMPTS) or lost:
        # the bound on restarts did its job (or the chip needed a hand): install again
        mark = kit.obs.mark()
        kit.command("pump", {"op": "install", "manifest": manifest})
        again = kit.obs.wait_topic(kit.topics.job("pump"), lambda m: bool(m.payload) and
                                   m.json()["job_id"] != job_id and
                                   m.json()["status"] in TERMINAL, after=mark, timeout=60).json()
        if again["status"] != "SUCCEEDED":
            problems.append(f"the repair install ended {again['status']}: {again.get('error')}")
    elif done["status"] != "SUCCEEDED":
        problems.append(f"ended {done['status']}: {done.get('error')}")
    if t.flash_bytes(FLASH_START, len(data)) != data:
        problems.append("flash differs from the image")
    time.sleep(0.3)  # a duplicate would follow at once
    ends = _terminal_events(kit, job_id)
    if len(ends) != 1:
        problems.append(f"terminal events {ends}")
    if cached and not (gave_up or lost) and _gets(kit, path) != gets:
        problems.append("a verified cached image was downloaded again")
    left = [p.name for d in (kit.state_dir, kit.cache_dir) if d.exists()
            for p in list(d.rglob(TEMP_GLOB)) + list(d.rglob("*.part"))]
    if left:
        problems.append(f"temporary files left: {left}")
    return problems


def _half(quick: bool, pins: bool, row: Row, rng: random.Random) -> int:
    """Every trial on one kit, with or without reset pins; returns the number of kills."""
    kills = 0
    with tempfile.TemporaryDirectory(prefix="stm32ota-rel-kill-") as tmp:
        with AgentKit(Path(tmp)) as kit:
            t = kit.uart_target("pump", pins="mock" if pins else "none")
            wire = PinWire(t, Path(tmp) / "pins.sock") if pins else None
            for n, trial in enumerate(trials(quick, rng)):
                row.tried += 1
                row.expected += 1
                kills += 1 + trial.stacked
                found = run_trial(kit, t, trial, n, rng, wire)
                if found:
                    row.failures.append(f"{'pins' if pins else 'no pins'}, {trial.name}: "
                                        f"{'; '.join(found)}")
                else:
                    row.clean += 1
                    row.delivered += 1
            row.tracebacks += kit.agent_log().count("Traceback")
            kit_files = {kit.config_path, kit.key, kit.pub, kit.dir / "agent.log",
                         Path(tmp) / "pins.sock"}
            row.outside_bytes += sum(p.stat().st_size for p in Path(tmp).iterdir()
                                     if p.is_file() and p not in kit_files)
    return kills


@category("KILL")
def kill_category(quick: bool) -> Row:
    """SIGKILL a real agent process at every phase, at block indexes, stacked, with faults,
    with and without reset pins."""
    row = Row("Kill anywhere")
    rng = random.Random(7)
    kills = _half(quick, False, row, rng) + _half(quick, True, row, rng)
    row.figures["kills"] = str(kills)
    return row
