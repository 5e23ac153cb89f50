"""Robustness of the updater (safety rules 5, 6, 8): crashes, aborts, stops, concurrency.

These drive `Updater` directly against non-realtime simulators on SimI2CBus objects, with a
real HTTP server for the image; MQTT-level and subprocess tests live in test_agent_process.py.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from httpserver import FileServer

from agent.ota import download
from agent.ota.jobs import (CANCELED, FAILED, IN_PROGRESS, QUEUED, SUCCEEDED, TERMINAL, Job,
                            JobStore, StateStore)
from agent.ota.keys import sign_manifest
from agent.flasher.target import Devices, I2cSettings, PinsSettings, Target
from agent.pins import PinSpec
from agent.pins.mock import MockBackend
from agent.stm32.chips import CHIPS
from agent.sim import Faults, SimChip, SimI2CBus
from agent.ota.pipeline import FlashTarget, Policy
from agent.ota.updater import MAX_ATTEMPTS, Updater

DEADLINE = 20.0
IMAGE = bytes((i * 7 + 3) & 0xFF for i in range(6000))
VECTORS = bytes.fromhex("0030002009000008")  # a plausible SP and reset handler


def running_sim(faults: Optional[Faults] = None) -> SimChip:
    """A non-realtime L432 running its application (flash not empty, BOOT0 low)."""
    sim = SimChip(CHIPS[0x435], realtime=False, boot0=False, faults=faults)
    sim.flash[:8] = VECTORS
    sim.power_cycle()  # the L4 empty check is latched at power-on
    assert sim.mode == "application"
    return sim


@dataclass
class Rig:
    """An updater with targets on simulated I2C buses and a release on a real HTTP server."""

    tmp: Path
    server: FileServer
    key: Ed25519PrivateKey
    sims: dict[str, SimChip] = field(default_factory=dict)
    lines: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    targets: list[FlashTarget] = field(default_factory=list)
    buses: list[SimI2CBus] = field(default_factory=list)  # bus number N stands for /dev/i2c-N
    devices: dict[str, Devices] = field(default_factory=dict)
    seen: list[tuple[float, str, Job, bool]] = field(default_factory=list)
    hook: Optional[Callable[[str, Job], None]] = None
    updaters: list[Updater] = field(default_factory=list)

    def add_target(self, name: str, bus: SimI2CBus, address: int = 0x48,
                   faults: Optional[Faults] = None, **target: Any) -> SimChip:
        """A target `name` whose mock NRST/BOOT0 lines drive a fresh running simulator."""
        sim = running_sim(faults)
        bus.attach(address, sim)
        self.sims[name] = sim
        self.lines[name] = []

        def listener(line: str, high: bool, _n: str = name, _s: SimChip = sim) -> None:
            self.lines[_n].append((line, high))
            _s.set_line(line, high)

        if bus not in self.buses:
            self.buses.append(bus)
        pins = PinsSettings(backend="mock", nrst=PinSpec(1), boot0=PinSpec(2))
        link = I2cSettings(bus=self.buses.index(bus), address=address)
        self.targets.append(FlashTarget(name=name, product="fw",
                                        target=Target(link, pins, **target)))
        self.devices[name] = Devices(i2c_bus=bus, pins=lambda: MockBackend(listener))
        return sim

    def manifest(self, version: str = "1.0.0") -> dict:
        """A signed manifest of IMAGE at the server's /fw.bin."""
        return sign_manifest({"product": "fw", "version": version, "url": self.server.url("/fw.bin"),
                              "size": len(IMAGE), "sha256": hashlib.sha256(IMAGE).hexdigest(),
                              "format": "bin", "address": 0x08000000}, self.key)

    def policy(self) -> Policy:
        """Trust the rig's key; cache under tmp; no real backoff sleeps."""
        return Policy(trusted_keys=(self.key.public_key(),), cache_dir=str(self.tmp / "cache"),
                      download_timeout=5.0, download_backoff=0.01)

    def store(self) -> StateStore:
        """The persistent state, shared by every updater of this rig (as across restarts)."""
        return StateStore(self.tmp / "state")

    def updater(self, sleep: Callable[[float], None] = time.sleep) -> Updater:
        """A fresh updater on the same state dir (a restarted agent)."""
        def notify(name: str, job: Job, retain: bool) -> None:
            self.seen.append((time.monotonic(), name, job, retain))
            if self.hook is not None:
                self.hook(name, job)

        u = Updater("gw", list(self.targets), JobStore(self.store(), notify), self.policy(),
                    devices=self.devices, sleep=sleep)
        self.updaters.append(u)
        return u

    def install(self, u: Updater, name: str, version: str = "1.0.0") -> None:
        """Send a direct install command with a signed manifest."""
        u.handle_command([name], {"op": "install", "manifest": self.manifest(version)}, direct=True)

    def wait_terminal(self, name: str, job_id: Optional[str] = None) -> Job:
        """Poll until the target's job (or `job_id`) is terminal in the state file and reported."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            job = self.store().load_job(name)
            if (job is not None and job.terminal and (job_id is None or job.job_id == job_id)
                    and self.terminal_reports(name, job.job_id)):  # saved, then reported
                return job
            time.sleep(0.01)
        raise AssertionError(f"{name}: no terminal job within {DEADLINE}s: {self.store().load_job(name)}")

    def terminal_reports(self, name: str, job_id: str) -> list[Job]:
        """Distinct terminal status changes reported for one job."""
        out: list[Job] = []
        for _, n, job, _ in list(self.seen):
            if n == name and job.job_id == job_id and job.terminal:
                if not out or out[-1].status != job.status:
                    out.append(job)
        return out

    def flashed(self, name: str) -> bool:
        """True when the target's flash starts with IMAGE."""
        return bytes(self.sims[name].flash[:len(IMAGE)]) == IMAGE

    def resets(self, name: str) -> int:
        """How many times NRST was asserted (driven low) on the target."""
        return sum(1 for line, high in self.lines[name] if line == "nrst" and not high)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A rig with an HTTP server holding IMAGE; every updater is stopped afterwards."""
    with FileServer({"/fw.bin": IMAGE}) as server:
        r = Rig(tmp_path, server, Ed25519PrivateKey.generate())
        try:
            yield r
        finally:
            r.hook = None
            for u in r.updaters:
                u.stop(timeout=5)


def _gets(rig: Rig) -> int:
    return sum(1 for r in rig.server.requests if r.method == "GET")


def _cache(rig: Rig) -> None:
    """Put the verified image in the cache, as a finished download phase leaves it."""
    download.fetch(rig.server.url("/fw.bin"), len(IMAGE), hashlib.sha256(IMAGE).hexdigest(),
                   rig.tmp / "cache", max_size=1 << 20)


# ----- recovery after a crash (rule 6) --------------------------------------------------------

@pytest.mark.parametrize("phase", ["queued", "download", "verify_image", "enter_bootloader",
                                   "erase", "write", "verify", "start"])
def test_a_job_left_open_in_any_phase_is_finished_after_a_restart(rig: Rig, phase: str) -> None:
    rig.add_target("a", SimI2CBus())
    if phase not in ("queued", "download"):
        _cache(rig)
    if phase in ("erase", "write", "verify", "start"):  # the crash left a half-written flash
        rig.sims["a"].flash[:len(IMAGE) // 2] = IMAGE[:len(IMAGE) // 2]
    status = QUEUED if phase == "queued" else IN_PROGRESS
    crashed = Job(target="a", status=status, phase=phase, percent=40, to_version="1.0.0",
                  manifest=rig.manifest())
    rig.store().save_job(crashed)
    gets = _gets(rig)

    rig.updater().start()
    job = rig.wait_terminal("a")

    assert job.job_id == crashed.job_id and job.status == SUCCEEDED, job
    assert job.attempt == 2
    assert rig.flashed("a")
    assert [j.status for j in rig.terminal_reports("a", job.job_id)] == [SUCCEEDED]
    assert rig.store().installed("a")["version"] == "1.0.0"
    if phase not in ("queued", "download"):
        assert _gets(rig) == gets, "the verified cached image must be reused, not downloaded again"


def test_a_job_interrupted_max_attempts_times_ends_failed(rig: Rig) -> None:
    rig.add_target("a", SimI2CBus())
    crashed = Job(target="a", status=IN_PROGRESS, phase="write", to_version="1.0.0",
                  manifest=rig.manifest())
    store = rig.store()
    store.save_job(crashed)
    for attempt in range(2, MAX_ATTEMPTS + 1):  # each restart crashes again before it runs
        Updater("gw", rig.targets, JobStore(store, lambda *a: None), rig.policy()).recover()
        job = store.load_job("a")
        assert (job.status, job.attempt) == (QUEUED, attempt)
        store.save_job(job.advance(status=IN_PROGRESS, phase="write"))

    rig.updater().start()
    job = rig.wait_terminal("a")
    assert job.status == FAILED and job.error["code"] == "too_many_attempts"
    assert "bootloader" in job.error["message"] and "install again" in job.error["message"]
    assert rig.resets("a") == 0, "a job that gives up must not touch the target"
    assert [j.status for j in rig.terminal_reports("a", crashed.job_id)] == [FAILED]


def test_an_open_job_of_a_target_removed_from_the_config_is_closed(rig: Rig) -> None:
    rig.add_target("a", SimI2CBus())
    store = rig.store()
    store.save_job(Job(target="gone", status=IN_PROGRESS, phase="write", to_version="1.0.0",
                       manifest=rig.manifest()))
    rig.updater().recover()
    job = store.load_job("gone")
    assert job.status == FAILED and job.error["code"] == "target_removed"
    assert not [s for s in rig.seen if s[1] == "gone"], "no topics exist for it any more"


def test_a_stopped_agent_leaves_the_job_open_and_the_next_start_finishes_it(rig: Rig) -> None:
    rig.add_target("a", SimI2CBus())
    first = rig.updater()
    stopper: list[threading.Thread] = []

    def stop_in_write(name: str, job: Job) -> None:
        if job.phase == "write" and not stopper:  # stop() joins the workers: not from one
            stopper.append(threading.Thread(target=first.stop))
            stopper[0].start()

    rig.hook = stop_in_write
    first.start()
    rig.install(first, "a")
    deadline = time.monotonic() + DEADLINE
    while not (stopper and not stopper[0].is_alive()) and time.monotonic() < deadline:
        time.sleep(0.01)
    rig.hook = None
    left = rig.store().load_job("a")
    assert left.status == IN_PROGRESS and left.phase == "write", left
    assert not rig.flashed("a")
    assert rig.store().installed("a") == {**rig.store().installed("a"), "version": None}

    rig.updater().start()
    job = rig.wait_terminal("a")
    assert job.job_id == left.job_id and job.status == SUCCEEDED
    assert rig.flashed("a")
    assert [j.status for j in rig.terminal_reports("a", job.job_id)] == [SUCCEEDED]


# ----- abort ----------------------------------------------------------------------------------

def test_abort_of_a_queued_job_cancels_it_at_once_without_touching_the_target(rig: Rig) -> None:
    rig.add_target("a", SimI2CBus())
    u = rig.updater()  # not started: the job stays queued
    rig.install(u, "a")
    assert rig.store().load_job("a").status == QUEUED
    u.abort("a")
    job = rig.store().load_job("a")
    assert job.status == CANCELED and job.error["code"] == "aborted"
    u.start()
    time.sleep(0.2)  # give a (wrong) worker the chance to pick the canceled job up
    assert rig.store().load_job("a").status == CANCELED
    assert rig.lines["a"] == [] and rig.sims["a"].mode == "application"
    assert _gets(rig) == 0


def test_abort_during_write_cancels_and_the_next_install_repairs_the_target(rig: Rig) -> None:
    rig.add_target("a", SimI2CBus())
    rig.store().set_installed("a", "0.9.0", "0" * 64)  # what the chip held before
    u = rig.updater()
    rig.hook = lambda name, job: u.abort(name) if job.phase == "write" else None
    u.start()
    rig.install(u, "a")
    job = rig.wait_terminal("a")
    rig.hook = None
    assert job.status == CANCELED and job.phase == "write"
    assert job.error["code"] == "aborted"
    assert "stays in the bootloader" in job.error["message"]
    assert not rig.flashed("a") and rig.sims["a"].mode == "bootloader"
    # the chip holds neither 0.9.0 nor 1.0.0 now: the state must not claim 0.9.0 (issue 11)
    assert rig.store().installed_version("a") is None
    assert rig.store().installed("a")["interrupted_to"] == "1.0.0"

    rig.install(u, "a")
    repaired = rig.wait_terminal("a")
    assert repaired.job_id != job.job_id and repaired.status == SUCCEEDED
    assert rig.flashed("a")
    assert [j.status for j in rig.terminal_reports("a", job.job_id)] == [CANCELED]


def test_abort_with_nothing_running_changes_nothing(rig: Rig) -> None:
    rig.add_target("a", SimI2CBus())
    u = rig.updater()
    u.start()
    u.abort("a")
    assert rig.store().load_job("a") is None and rig.seen == []
    rig.install(u, "a")
    done = rig.wait_terminal("a")
    reports = len(rig.seen)
    u.abort("a")
    assert rig.store().load_job("a") == done and len(rig.seen) == reports


# ----- concurrency ------------------------------------------------------------------------------

def _windows(rig: Rig) -> dict[str, tuple[float, float]]:
    """Per target: when its job first was IN_PROGRESS and when it became terminal."""
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    for t, name, job, _ in rig.seen:
        if job.status == IN_PROGRESS:
            start.setdefault(name, t)
        if job.status in TERMINAL:
            end[name] = t
    return {n: (start[n], end[n]) for n in start}


def _writing_gate(rig: Rig, names: set[str], timeout: float) -> None:
    """Hold each target in its write phase until all of `names` are writing (or `timeout`)."""
    writing: set[str] = set()
    cond = threading.Condition()

    def hook(name: str, job: Job) -> None:
        if job.phase != "write" or name in writing:
            return
        with cond:
            writing.add(name)
            cond.notify_all()
            cond.wait_for(lambda: writing >= names, timeout)

    rig.hook = hook


def test_targets_on_different_links_flash_at_the_same_time(rig: Rig) -> None:
    rig.add_target("a", SimI2CBus())
    rig.add_target("b", SimI2CBus())
    _writing_gate(rig, {"a", "b"}, timeout=DEADLINE)
    u = rig.updater()
    u.start()
    rig.install(u, "a")
    rig.install(u, "b")
    assert rig.wait_terminal("a").status == SUCCEEDED
    assert rig.wait_terminal("b").status == SUCCEEDED
    (a0, a1), (b0, b1) = _windows(rig)["a"], _windows(rig)["b"]
    assert a0 < b1 and b0 < a1, "the two links must be worked on concurrently"
    assert rig.flashed("a") and rig.flashed("b")


def test_targets_on_one_i2c_bus_are_flashed_one_at_a_time(rig: Rig) -> None:
    bus = SimI2CBus()
    rig.add_target("a", bus, 0x48)
    rig.add_target("b", bus, 0x49)
    _writing_gate(rig, {"a", "b"}, timeout=1.0)  # would meet if the bus were shared
    u = rig.updater()
    u.start()
    rig.install(u, "a")
    rig.install(u, "b")
    assert rig.wait_terminal("a").status == SUCCEEDED
    assert rig.wait_terminal("b").status == SUCCEEDED
    (a0, a1), (b0, b1) = sorted(_windows(rig).values())
    assert a1 <= b0, "two targets on one bus must not be flashed at the same time"
    assert rig.flashed("a") and rig.flashed("b")


# ----- safety rule 8 ---------------------------------------------------------------------------

@pytest.mark.parametrize("last", [None, SUCCEEDED, FAILED, CANCELED])
def test_starting_the_updater_never_resets_a_running_mcu(rig: Rig, last: Optional[str]) -> None:
    rig.add_target("a", SimI2CBus())
    if last is not None:
        rig.store().save_job(Job(target="a", status=last, phase="write", to_version="1.0.0",
                                 manifest=rig.manifest()))
    before = list(rig.sims["a"].events)
    u = rig.updater()
    u.start()
    u.recover()
    time.sleep(0.2)  # a wrongly queued job would start within this
    assert rig.lines["a"] == [] and rig.resets("a") == 0
    assert rig.sims["a"].mode == "application" and rig.sims["a"].events == before


def test_abort_racing_the_worker_that_claimed_the_job_gives_one_terminal_status(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.ota import pipeline

    rig.add_target("a", SimI2CBus())
    claimed, go = threading.Event(), threading.Event()
    original = pipeline.Pipeline.run

    def run_after_abort(self: pipeline.Pipeline) -> Job:
        claimed.set()  # the worker owns the job, but has not saved IN_PROGRESS yet
        go.wait(DEADLINE)
        return original(self)

    monkeypatch.setattr(pipeline.Pipeline, "run", run_after_abort)
    u = rig.updater()
    u.start()
    rig.install(u, "a")
    assert claimed.wait(DEADLINE)
    assert rig.store().load_job("a").status == QUEUED
    u.abort("a")
    go.set()
    job = rig.wait_terminal("a")
    time.sleep(0.2)  # a second terminal status would follow within this
    assert job.status == CANCELED
    assert [j.status for j in rig.terminal_reports("a", job.job_id)] == [CANCELED]
    assert rig.store().load_job("a").status == CANCELED and rig.resets("a") == 0


# ----- link failures under load (issue 9 defect 10) -------------------------------------------


class Pauses:
    """A deterministic sleep: records every pause, waits for none."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _notes(rig: Rig, name: str) -> list[str]:
    return sorted({job.note for _, n, job, _ in rig.seen if n == name and job.note})


def test_a_nack_to_a_read_after_connect_is_noise_not_read_protection(rig: Rig) -> None:
    """Every 3rd READ_MEMORY is NACKed (the read-back of verify and of write recovery): only
    the check at connect may say read_protected; the retry loop cures the rest."""
    job, _ = _one_job(rig, faults=Faults(nack_every_read=3))
    assert (job.status, job.error) == (SUCCEEDED, None)
    assert rig.flashed("a")


def _one_job(rig: Rig, **target: Any) -> tuple[Job, Pauses]:
    """Install on a new target `a` (add_target's options) with a recording sleep."""
    rig.add_target("a", SimI2CBus(), **target)
    pauses = Pauses()
    u = rig.updater(sleep=pauses)
    u.start()
    rig.install(u, "a")
    return rig.wait_terminal("a"), pauses


def test_a_failed_link_is_flashed_again_after_a_pause_from_the_cached_image(rig: Rig) -> None:
    """Silent resets use up the first flash's connect attempts (no_bootloader): the job is
    flashed again after the first pause of the back-off, without a second download."""
    job, pauses = _one_job(rig, faults=Faults(silent_resets=3))
    assert job.status == SUCCEEDED and rig.flashed("a")
    assert job.note == "link retry 1 of 2 after [no_bootloader] in enter_bootloader"
    assert sum(pauses.calls) >= rig.policy().link_backoff[0]
    assert _gets(rig) == 1


def test_link_retries_are_bounded_then_the_job_fails_once(rig: Rig) -> None:
    job, pauses = _one_job(rig, faults=Faults(silent_resets=1000))
    assert (job.status, job.error["code"]) == (FAILED, "no_bootloader")
    assert _notes(rig, "a") == ["link retry 1 of 2 after [no_bootloader] in enter_bootloader",
                                "link retry 2 of 2 after [no_bootloader] in enter_bootloader"]
    assert sum(pauses.calls) >= sum(rig.policy().link_backoff)
    assert [j.status for j in rig.terminal_reports("a", job.job_id)] == [FAILED]


@pytest.mark.parametrize("case", ["wrong_chip", "read_protected"])
def test_what_a_retry_cannot_cure_is_never_retried(rig: Rig, case: str) -> None:
    job, _ = _one_job(rig, **({"expect_chip": 0x415} if case == "wrong_chip"
                              else {"faults": Faults(read_protected=True)}))
    assert (job.status, job.error["code"]) == (FAILED, case)
    assert _notes(rig, "a") == [] and rig.resets("a") == 1
