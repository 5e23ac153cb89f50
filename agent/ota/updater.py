"""The update pipeline: accept releases and commands, queue jobs, run them on per-link workers.

    command/release -> parse + verify manifest -> Job(QUEUED) -> worker of the target's link ->
      download -> verify image -> enter bootloader -> identify -> erase -> write -> verify
      -> start application -> SUCCEEDED (or exactly one of FAILED / REJECTED / CANCELED)

Nothing here knows MQTT: job state belongs to the `JobStore`, which saves each change before
the step it describes and publishes it through its callback. A queue carries the job with its
parsed, verified release, so a manifest is checked once per job (and once more by
`recover()`, for a job read back from disk after a restart).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from agent.errors import ImageRejected, Stm32OtaError
from agent.flasher.target import Devices
from agent.ota.checks import check_install, rollout_selected
from agent.ota.jobs import CANCELED, FAILED, QUEUED, TOUCHES_FLASH, Job, JobStore
from agent.ota.keys import verify_manifest
from agent.ota.manifest import Manifest, parse_manifest
from agent.ota.pipeline import FlashTarget, Pipeline, Policy, tidy_cache

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job interrupted by a crash is repeated at most this many times in all


@dataclass(frozen=True)
class Work:
    """One queued job and its release, parsed and verified when the job was queued."""

    target: str
    job_id: str
    release: Manifest


class Updater:
    """Owns the job queues and workers; thread-safe entry points for the service."""

    def __init__(self, agent_id: str, targets: list[FlashTarget], jobs: JobStore,
                 policy: Policy, *, devices: Optional[Mapping[str, Devices]] = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent_id = agent_id
        self.targets = {t.name: t for t in targets}
        self.devices = dict(devices or {})  # per target name: what stands in for its devices
        self.jobs = jobs
        self.policy = policy
        self.sleep = sleep
        self.clock = clock
        self._lock = threading.RLock()
        self._cancel: dict[str, threading.Event] = {}
        self._queues: dict[str, queue.Queue] = {}
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker per link and requeue what a previous run left unfinished."""
        for key in sorted({t.target.link_key for t in self.targets.values()}):
            q: queue.Queue = queue.Queue()
            self._queues[key] = q
            w = threading.Thread(target=self._work, args=(q,), name=f"worker {key}", daemon=True)
            w.start()
            self._workers.append(w)
        self.recover()
        tidy_cache(self.jobs, self.policy)  # after recover(): it decides which jobs stay open

    def stop(self, timeout: float = 5.0) -> None:
        """Ask workers to stop after their current step and wait a little for them."""
        self._stopping.set()
        for ev in list(self._cancel.values()):
            ev.set()
        for q in self._queues.values():
            q.put(None)
        for w in self._workers:
            w.join(timeout)
        for name in self.targets:  # jobs left open to resume at the next start
            job = self.jobs.load(name)
            if job is not None and not job.terminal:
                self.jobs.flash_touched(job)

    def recover(self) -> None:
        """Safety rule 5/6: every unfinished job is repeated (bounded) or ends FAILED."""
        self.jobs.state.sweep_temps()
        self.jobs.close_orphans(self.targets)
        for name in self.targets:
            job = self.jobs.load(name)
            if job is None or job.terminal:
                continue
            if job.attempt >= MAX_ATTEMPTS:
                self.jobs.finish(job, FAILED, {"code": "too_many_attempts", "message":
                                 f"interrupted {job.attempt} times; giving up. The target may "
                                 "be in the bootloader: install again to repair it"})
                continue
            self._requeue(job)

    def _requeue(self, job: Job) -> None:
        """Queue an interrupted job again; its manifest comes from disk, so check it anew."""
        note = None
        if job.phase in TOUCHES_FLASH:
            note = ("the agent stopped while flashing; repeating the flash from the verified "
                    "cached image")
        job = self.jobs.save(job.advance(status=QUEUED, phase="queued", percent=0,
                                         attempt=job.attempt + 1, note=note))
        log.warning("%s: resuming interrupted job %s (attempt %d)", job.target, job.job_id,
                    job.attempt)
        try:
            release = self._verified(parse_manifest(job.manifest))
        except Stm32OtaError as err:
            log.error("%s: job %s failed in %s: [%s] %s", job.target, job.job_id, job.phase,
                      err.code, err)
            self.jobs.finish(job, FAILED, err.as_dict())
            return
        self._queue_for(job.target).put(Work(job.target, job.job_id, release))

    # ----- inbound ---------------------------------------------------------------------------

    def _verified(self, m: Manifest) -> Manifest:
        """`m` once its signature and expiry pass the trust policy (else ImageRejected)."""
        verify_manifest(m, self.policy.trusted_keys, allow_unsigned=self.policy.allow_unsigned)
        return m

    def handle_release(self, product: str, raw: bytes, origin: Optional[str] = None) -> list[str]:
        """A release announcement: validate, remember, auto-install where allowed.

        Returns the names of targets whose view changed; raises ImageRejected when refused.
        """
        m = parse_manifest(raw)
        if m.product != product:
            raise ImageRejected(f"manifest for product {m.product!r} published on the topic of "
                                f"{product!r}", code="bad_field")
        self._verified(m)
        state = self.jobs.state
        current = state.release(product)
        if current and current.get("sha256") == m.sha256 and current.get("version") == m.version:
            affected = []
        else:
            state.set_release(product, m.to_dict())
            affected = [t.name for t in self.targets.values() if t.product == product]
        for t in self.targets.values():
            if t.product != product or not t.auto_install:
                continue
            if rollout_selected(m, self.agent_id, t.name):
                self._try_install(t.name, m, source="auto_install", quiet=True, origin=origin)
        return affected

    def handle_command(self, names: list[str], payload: dict, *, direct: bool,
                       origin: Optional[str] = None) -> None:
        """An already-parsed command for these targets (see mqtt.commands.parse_command); `origin`
        is the topic it came on (refusals are rate-limited per topic)."""
        op = payload["op"]
        for name in names:
            if op == "abort":
                self.abort(name)
            elif op == "install":
                self._install_command(name, payload.get("manifest"), direct=direct,
                                      origin=origin)

    def _install_command(self, name: str, raw_manifest: Optional[dict], *, direct: bool,
                         origin: Optional[str]) -> None:
        t = self.targets[name]
        try:
            m = self._verified(parse_manifest(self._requested(t, raw_manifest)))
            if m.product != t.product:
                if not direct:  # a group/fleet install of another product is not for this target
                    log.debug("%s: ignoring a %s install for product %s", name, m.product, t.product)
                    return
                raise ImageRejected(f"the release is for product {m.product!r} but target {name} "
                                    f"runs {t.product!r}", code="wrong_product")
            if not direct and not rollout_selected(m, self.agent_id, name):
                log.info("%s: not in the %s%% rollout of %s", name, m.rollout, m.version)
                return
        except Stm32OtaError as err:
            self.jobs.reject(name, err, to_version=None, origin=origin)
            return
        self._try_install(name, m, source="command", origin=origin)

    def _requested(self, t: FlashTarget, raw_manifest: Optional[dict]) -> dict:
        """The manifest an install command names: its own, or the product's latest release."""
        if raw_manifest is not None:
            return raw_manifest
        stored = self.jobs.state.release(t.product)
        if stored is None:
            raise ImageRejected(f"no release of {t.product!r} has been announced on "
                                f"the release topic yet", code="no_release")
        return stored

    def _try_install(self, name: str, m: Manifest, *, source: str, quiet: bool = False,
                     origin: Optional[str] = None) -> None:
        t = self.targets[name]
        installed = self.jobs.state.installed_version(name)
        try:
            check_install(m, installed, allow_downgrade=t.allow_downgrade)
        except Stm32OtaError as err:
            if not quiet:
                self.jobs.reject(name, err, to_version=m.version, origin=origin)
            else:
                log.info("%s: not auto-installing %s: %s", name, m.version, err)
            return
        with self._lock:
            current = self.jobs.load(name)
            if current is not None and not current.terminal:
                if current.to_version == m.version:
                    log.info("%s: %s is already queued or running", name, m.version)
                    return
                self.jobs.reject(name, Stm32OtaError(
                    f"target {name} is busy with job {current.job_id} ({current.to_version}); "
                    "abort it first", code="busy"), to_version=m.version, origin=origin)
                return
            job = self.jobs.save(Job(target=name, from_version=installed, to_version=m.version,
                                     manifest=m.to_dict()))
        log.info("%s: queued %s -> %s (%s)", name, installed or "(nothing installed)", m.version,
                 source)
        self._queue_for(name).put(Work(name, job.job_id, m))

    def abort(self, name: str) -> None:
        """Cancel a queued job at once, or ask a running one to stop at the next block."""
        with self._lock:
            job = self.jobs.load(name)
            if job is None or job.terminal:
                log.info("%s: nothing to abort", name)
                return
            if job.status == QUEUED and name not in self._cancel:
                self.jobs.finish(job, CANCELED, {"code": "aborted",
                                                 "message": "aborted before it started"})
                return
            # A worker has claimed the job (it may still read QUEUED): it ends it as CANCELED,
            # so the job gets one terminal status, not CANCELED here and SUCCEEDED there.
            self._cancel.setdefault(name, threading.Event()).set()

    # ----- worker ----------------------------------------------------------------------------

    def _queue_for(self, name: str) -> queue.Queue:
        key = self.targets[name].target.link_key
        if key not in self._queues:  # not started: a queue that start() will drain
            self._queues[key] = queue.Queue()
        return self._queues[key]

    def _work(self, q: queue.Queue) -> None:
        while not self._stopping.is_set():
            work = q.get()
            if work is None:
                return
            try:
                self._run(work)
            except Exception:  # a bug must not kill the worker or leave the job open
                log.exception("%s: unexpected failure", work.target)
                job = self.jobs.load(work.target)
                if job is not None and not job.terminal:
                    self.jobs.finish(job, FAILED, {
                        "code": "internal_error", "message": "unexpected error; see the agent's log"})

    def _run(self, work: Work) -> None:
        """Carry out a queued job to its one terminal status, unless it ended while it waited."""
        name = work.target
        with self._lock:
            job = self.jobs.load(name)
            if job is None or job.job_id != work.job_id or job.terminal:
                log.info("%s: job %s ended before it ran (e.g. aborted in the queue)", name,
                         work.job_id)
                return
            cancel = self._cancel[name] = threading.Event()
        pipeline = Pipeline(self.targets[name], job, work.release, jobs=self.jobs,
                            policy=self.policy, cancel=cancel, stopping=self._stopping,
                            devices=self.devices.get(name, Devices()), sleep=self.sleep,
                            clock=self.clock)
        try:
            pipeline.run()
        finally:
            with self._lock:
                self._cancel.pop(name, None)
