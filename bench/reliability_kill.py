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
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from agentkit import FLASH_START, TERMINAL, AgentKit, SimTarget
from reliability import Row, category

from agent.ota.jobs import TEMP_GLOB
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
                Trial("phase download", kill_phase="download"),
                Trial("block 5, 2 stacked", kill_block=5, stacked=2)]
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


def run_trial(kit: AgentKit, t: SimTarget, trial: Trial, n: int, rng: random.Random) -> list[str]:
    """One install with its kills and restarts; what went wrong (empty: clean)."""
    data = kit.image(IMAGE_SIZE, seed=100 + n)
    path = f"/fw-{n}.bin"
    m = kit.release("pump-ctrl", f"2.0.{n}", data, path=path)
    t.sim.reset(boot0=True)  # no reset pins: the chip is put in its bootloader by hand
    t.sim.faults = trial.faults or Faults()
    t.sim.realtime = True  # real line time, so a kill lands where it is aimed
    kit.start_process()
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
        kit.start_process(wait_online=False)
        time.sleep(rng.uniform(0.3, 2.0))
        _kill(kit)
    t.sim.realtime = False
    t.sim.faults = Faults()
    if t.sim.mode == "application":  # killed after the start command: by hand again
        t.sim.reset(boot0=True)
    kit.start_process()
    problems = _judge(kit, t, job["job_id"], data, cached, gets, path)
    kit.stop_process()
    return problems


def _judge(kit: AgentKit, t: SimTarget, job_id: str, data: bytes, cached: bool, gets: int,
           path: str) -> list[str]:
    problems = []
    try:
        done = kit.obs.wait_topic(kit.topics.job("pump"), lambda m: bool(m.payload) and
                                  m.json()["job_id"] == job_id and m.json()["status"] in TERMINAL,
                                  timeout=60).json()
    except TimeoutError:
        return ["no terminal status after the restart: " + kit.agent_log()[-500:]]
    if done["status"] != "SUCCEEDED":
        problems.append(f"ended {done['status']}: {done.get('error')}")
    if t.flash_bytes(FLASH_START, len(data)) != data:
        problems.append("flash differs from the image")
    time.sleep(0.3)  # a duplicate would follow at once
    ends = _terminal_events(kit, job_id)
    if len(ends) != 1:
        problems.append(f"terminal events {ends}")
    if cached and _gets(kit, path) != gets:
        problems.append("a verified cached image was downloaded again")
    left = [p.name for d in (kit.state_dir, kit.cache_dir) if d.exists()
            for p in list(d.rglob(TEMP_GLOB)) + list(d.rglob("*.part"))]
    if left:
        problems.append(f"temporary files left: {left}")
    return problems


@category("KILL")
def kill_category(quick: bool) -> Row:
    """SIGKILL a real agent process at every phase, at block indexes, stacked, with faults."""
    row = Row("Kill anywhere")
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="stm32ota-rel-kill-") as tmp:
        with AgentKit(Path(tmp)) as kit:
            t = kit.uart_target("pump", pins="none")
            kills = 0
            for n, trial in enumerate(trials(quick, rng)):
                row.tried += 1
                row.expected += 1
                kills += 1 + trial.stacked
                found = run_trial(kit, t, trial, n, rng)
                if found:
                    row.failures.append(f"{trial.name}: {'; '.join(found)}")
                else:
                    row.clean += 1
                    row.delivered += 1
            row.tracebacks += kit.agent_log().count("Traceback")
            kit_files = {kit.config_path, kit.key, kit.pub, kit.dir / "agent.log"}
            row.outside_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir()
                                    if p.is_file() and p not in kit_files)
    row.figures["kills"] = str(kills)
    return row
