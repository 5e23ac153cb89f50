"""The update pipeline: accept releases and commands, queue jobs, run them on per-link workers.

    command/release -> validate -> Job(QUEUED) -> worker of the target's link ->
      download -> verify image -> enter bootloader -> identify -> erase -> write -> verify
      -> start application -> SUCCEEDED (or exactly one of FAILED / REJECTED / CANCELED)

Nothing here knows MQTT: every change goes to the `notify(target, job)` callback, and the
service turns it into retained state/job messages and events. Each job is persisted before
each step (`jobs.StateStore`), so `recover()` after a kill finishes or repeats the job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from agent.ota import manifest as mf
from agent.errors import ImageRejected, Stm32OtaError
from agent.ota.jobs import (CANCELED, FAILED, QUEUED, REJECTED, SUCCEEDED, TOUCHES_FLASH, Job,
                        StateStore)
from agent.flasher.target import Devices, Target

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job interrupted by a crash is repeated at most this many times in all


@dataclass(frozen=True)
class FlashTarget:
    """One configured target as the updater sees it: its OTA policy around a flasher Target."""

    name: str
    product: str
    target: Target
    groups: tuple[str, ...] = ()
    auto_install: bool = False
    allow_downgrade: bool = False


@dataclass(frozen=True)
class Policy:
    """Trust and download settings shared by all targets."""

    trusted_keys: tuple = ()
    allow_unsigned: bool = False
    cache_dir: str = "/var/cache/stm32ota"
    max_image_size: int = 4 * 1024 * 1024
    download_timeout: float = 30.0
    download_retries: int = 5
    download_backoff: float = 1.0


Notify = Callable[[str, Job, bool], None]  # (target, job, retain)


class Updater:
    """Owns the job queue and workers; thread-safe entry points for the service."""

    def __init__(self, agent_id: str, targets: list[FlashTarget], store: StateStore,
                 policy: Policy, notify: Notify, *, devices: Optional[Mapping[str, Devices]] = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent_id = agent_id
        self.targets = {t.name: t for t in targets}
        self.devices = dict(devices or {})  # per target name: what stands in for its devices
        self.store = store
        self.policy = policy
        self.notify = notify
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

    def stop(self, timeout: float = 5.0) -> None:
        """Ask workers to stop after their current step and wait a little for them."""
        self._stopping.set()
        for ev in list(self._cancel.values()):
            ev.set()
        for q in self._queues.values():
            q.put(None)
        for w in self._workers:
            w.join(timeout)

    @property
    def stopping(self) -> bool:
        """True once stop() was called: an interrupted job is left for the next start."""
        return self._stopping.is_set()

    def recover(self) -> None:
        """Safety rule 5/6: every unfinished job is repeated (bounded) or ends FAILED."""
        for name in self.store.job_targets():
            job = self.store.load_job(name)
            if name not in self.targets and job is not None and not job.terminal:
                # no topics to report on any more: close the record so it never lingers open
                log.warning("%s: job %s was open but the target is no longer configured",
                            name, job.job_id)
                self.store.save_job(job.advance(status=FAILED, error={
                    "code": "target_removed",
                    "message": f"target {name} was removed from the config before the job ended"}))
        for name in self.targets:
            job = self.store.load_job(name)
            if job is None or job.terminal:
                continue
            if job.attempt >= MAX_ATTEMPTS:
                self._finish(job, FAILED, {"code": "too_many_attempts", "message":
                             f"interrupted {job.attempt} times; giving up. The target may be in "
                             "the bootloader: install again to repair it"})
                continue
            note = None
            if job.phase in TOUCHES_FLASH:
                note = ("the agent stopped while flashing; repeating the flash from the verified "
                        "cached image")
            job = job.advance(status=QUEUED, phase="queued", percent=0, attempt=job.attempt + 1,
                              note=note)
            self._save(job)
            log.warning("%s: resuming interrupted job %s (attempt %d)", name, job.job_id, job.attempt)
            self._queue_for(name).put(job.job_id)

    # ----- inbound ---------------------------------------------------------------------------

    def latest(self, product: str) -> Optional[dict]:
        """The latest accepted release manifest of a product."""
        return self.store.release(product)

    def installed_version(self, target: str) -> Optional[str]:
        """What the target last verified, or None."""
        rec = self.store.installed(target)
        return rec["version"] if rec else None

    def handle_release(self, product: str, raw: bytes) -> list[str]:
        """A release announcement: validate, remember, auto-install where allowed.

        Returns the names of targets whose view changed; raises ImageRejected when refused.
        """
        m = mf.parse_manifest(raw)
        if m.product != product:
            raise ImageRejected(f"manifest for product {m.product!r} published on the topic of "
                                f"{product!r}", code="bad_field")
        mf.verify_manifest(m, self.policy.trusted_keys, allow_unsigned=self.policy.allow_unsigned)
        current = self.store.release(product)
        if current and current.get("sha256") == m.sha256 and current.get("version") == m.version:
            affected = []
        else:
            self.store.set_release(product, m.to_dict())
            affected = [t.name for t in self.targets.values() if t.product == product]
        for name in [t.name for t in self.targets.values() if t.product == product]:
            t = self.targets[name]
            if t.auto_install and mf.rollout_selected(m, self.agent_id, name):
                self._try_install(name, m, source="auto_install", quiet=True)
        return affected

    def handle_command(self, names: list[str], payload: dict, *, direct: bool) -> None:
        """An already-parsed command for these targets (see service.parse_command)."""
        op = payload["op"]
        for name in names:
            if op == "abort":
                self.abort(name)
            elif op == "install":
                self._install_command(name, payload.get("manifest"), direct=direct)

    def _install_command(self, name: str, raw_manifest: Optional[dict], *, direct: bool) -> None:
        t = self.targets[name]
        try:
            if raw_manifest is not None:
                m = mf.parse_manifest(raw_manifest)
                mf.verify_manifest(m, self.policy.trusted_keys,
                                   allow_unsigned=self.policy.allow_unsigned)
            else:
                stored = self.store.release(t.product)
                if stored is None:
                    raise ImageRejected(f"no release of {t.product!r} has been announced on "
                                        f"the release topic yet", code="no_release")
                m = mf.parse_manifest(stored)
            if m.product != t.product:
                if not direct:  # a group/fleet install of another product is not for this target
                    log.debug("%s: ignoring a %s install for product %s", name, m.product, t.product)
                    return
                raise ImageRejected(f"the release is for product {m.product!r} but target {name} "
                                    f"runs {t.product!r}", code="wrong_product")
            if not direct and not mf.rollout_selected(m, self.agent_id, name):
                log.info("%s: not in the %s%% rollout of %s", name, m.rollout, m.version)
                return
        except Stm32OtaError as err:
            self.reject(name, err, to_version=None)
            return
        self._try_install(name, m, source="command")

    def _try_install(self, name: str, m: Any, *, source: str, quiet: bool = False) -> None:
        t = self.targets[name]
        installed = self.installed_version(name)
        try:
            mf.check_install(m, installed, allow_downgrade=t.allow_downgrade)
        except Stm32OtaError as err:
            if not quiet:
                self.reject(name, err, to_version=m.version)
            else:
                log.info("%s: not auto-installing %s: %s", name, m.version, err)
            return
        with self._lock:
            current = self.store.load_job(name)
            if current is not None and not current.terminal:
                if current.to_version == m.version:
                    log.info("%s: %s is already queued or running", name, m.version)
                    return
                self.reject(name, Stm32OtaError(
                    f"target {name} is busy with job {current.job_id} ({current.to_version}); "
                    "abort it first", code="busy"), to_version=m.version, retain=False)
                return
            job = Job(target=name, from_version=installed, to_version=m.version,
                      manifest=m.to_dict())
            self._save(job)
        log.info("%s: queued %s -> %s (%s)", name, installed, m.version, source)
        self._queue_for(name).put(job.job_id)

    def abort(self, name: str) -> None:
        """Cancel a queued job at once, or ask a running one to stop at the next block."""
        with self._lock:
            job = self.store.load_job(name)
            if job is None or job.terminal:
                log.info("%s: nothing to abort", name)
                return
            if job.status == QUEUED and name not in self._cancel:
                self._finish(job, CANCELED, {"code": "aborted", "message": "aborted before it started"})
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
            job_id = q.get()
            if job_id is None:
                return
            name = self._target_of(job_id)
            if name is None:
                continue
            try:
                self.run_job(name)
            except Exception:  # a bug must not kill the worker or leave the job open
                log.exception("%s: unexpected failure", name)
                job = self.store.load_job(name)
                if job is not None and not job.terminal:
                    self._finish(job, FAILED, {"code": "internal_error",
                                               "message": "unexpected error; see the agent's log"})

    def _target_of(self, job_id: str) -> Optional[str]:
        for name in self.targets:
            job = self.store.load_job(name)
            if job is not None and job.job_id == job_id and not job.terminal:
                return name
        return None

    def run_job(self, name: str) -> Job:
        """Carry out the target's queued job to its one terminal status."""
        from agent.ota.pipeline import Pipeline

        with self._lock:
            job = self.store.load_job(name)
            if job is None:
                raise RuntimeError(f"no job for {name}")
            if job.terminal:  # e.g. aborted while it waited in the queue
                log.info("%s: job %s is already %s", name, job.job_id, job.status)
                return job
            cancel = self._cancel[name] = threading.Event()
        pipeline = Pipeline(self, self.targets[name], job, cancel,
                            self.devices.get(name, Devices()))
        try:
            return pipeline.run()
        finally:
            with self._lock:
                self._cancel.pop(name, None)

    # ----- reporting -------------------------------------------------------------------------

    def _save(self, job: Job) -> Job:
        self.store.save_job(job)
        self.notify(job.target, job, True)
        return job

    def _finish(self, job: Job, status: str, error: Optional[dict], note: Optional[str] = None) -> Job:
        percent = 100 if status == SUCCEEDED else job.percent
        phase = "done" if status == SUCCEEDED else job.phase
        return self._save(job.advance(status=status, error=error, percent=percent, phase=phase,
                                      note=note or job.note))

    def reject(self, name: str, err: Stm32OtaError, *, to_version: Optional[str],
                retain: bool = True) -> None:
        """Report a refused request as a REJECTED job (not retained while another job runs)."""
        log.warning("%s: rejected: [%s] %s", name, err.code, err)
        job = Job(target=name, status=REJECTED, phase="queued", error=err.as_dict(),
                  from_version=self.installed_version(name), to_version=to_version)
        job = job.advance()
        if retain:
            self._save(job)
        else:  # another job is running: do not overwrite its retained record
            self.notify(name, job, False)

