"""One job, step by step: download, verify image, enter bootloader, flash, verify, start.

Safety rule 1: nothing touches the MCU before the whole image is downloaded and has passed
size, sha256 and signature checks (the signature was checked when the job was queued, and
again when it was recovered from disk). Rule 3: chip PID and flash size are checked against
the manifest and the image's addresses before the first erase. The job store persists the job
before every phase, so a kill at any instant is recovered by `Updater.recover()`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from agent.errors import (Aborted, LinkError, PinError, ProtocolError, Stm32OtaError,
                          Unsupported)
from agent.flasher import image as firmware
from agent.flasher import ops
from agent.flasher.target import Devices, Target
from agent.ota import download, transfer
from agent.ota.jobs import (CANCELED, FAILED, IN_PROGRESS, TOUCHES_FLASH, Job, JobStore,
                            overall_percent)
from agent.ota.manifest import Manifest
from agent.progress import Throttled

log = logging.getLogger(__name__)

# Progress inside a phase: at most every `Policy.progress_interval` seconds AND only after
# another PROGRESS_STEP percent of the job, not retained; phase changes and the terminal
# status are retained at once (docs/mqtt.md, "Job"). 100,000 targets at once a second would be
# 100,000 retained writes a second on the broker.
PROGRESS_STEP = 10
# A link that failed (no answer, a timeout, a garbled or NACKed exchange after the bootloader
# answered) is worth another try from the verified image; a refused image, a wrong chip, read
# protection, an ignored BOOT0, a pin that cannot be driven or a missing command are not.
LINK_FAILURES = (LinkError, ProtocolError)
NOT_CURED_BY_RETRY = (PinError, Unsupported)
PAUSE_STEP = 0.2  # s; a pause between link retries notices an abort this quickly


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
    cache_max: int = 64 * 1024 * 1024
    download_timeout: float = 30.0
    download_retries: int = 5
    download_backoff: float = 1.0
    download_deadline: float = 1800.0
    download_min_rate: int = 1024
    download_redirects: str = transfer.SAME_HOST
    progress_interval: float = 5.0  # seconds between progress messages inside a phase, at least
    link_retries: int = 2  # a job whose link failed is flashed again this many times ...
    link_backoff: tuple[float, ...] = (2.0, 8.0)  # ... after these pauses (the last repeats)

    def limits(self) -> download.Limits:
        """The download settings as download.fetch() takes them."""
        return download.Limits(timeout=self.download_timeout, deadline=self.download_deadline,
                               min_rate=self.download_min_rate, retries=self.download_retries,
                               backoff=self.download_backoff, redirects=self.download_redirects)


def tidy_cache(jobs: JobStore, policy: Policy) -> None:
    """Keep agent.cache_max and drop .part files, never touching what an open job needs."""
    try:
        removed = download.prune_cache(policy.cache_dir, jobs.open_images(), policy.cache_max)
    except OSError as err:  # a cache we cannot tidy must not fail a job or the start
        log.warning("could not tidy the cache %s: %s", policy.cache_dir, err)
        return
    for path in removed:
        log.info("cache: removed %s", path.name)


class Pipeline:
    """Runs one job of one target to its terminal status."""

    def __init__(self, target: FlashTarget, job: Job, release: Manifest, *, jobs: JobStore,
                 policy: Policy, cancel: threading.Event, stopping: threading.Event,
                 devices: Devices = Devices(), sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.t = target
        self.job = job
        self.release = release  # parsed and verified once, when the job was queued
        self.jobs = jobs
        self.policy = policy
        self.cancel = cancel
        self.stopping = stopping  # set when the agent stops: the job is left for recover()
        self.sleep = sleep
        self.devices = devices  # what stands in for the target's devices (the demo's sims)
        self._throttled = Throttled(self._report, policy.progress_interval, clock)
        self._shown = job.percent  # the percent last published

    def _step(self, phase: str) -> None:
        """Start a phase that reports no progress of its own (like any phase change)."""
        self.progress(phase, 0, 0)

    def progress(self, phase: str, done: int, total: int) -> None:
        """Progress callback for download and flash: phase changes at once, the rest throttled."""
        if phase != "read":  # the read-back inside verify is not a phase of the job
            self._throttled(phase, done, total)

    def _report(self, phase: str, done: int, total: int) -> None:
        percent = overall_percent(phase, done, total)
        if phase != self.job.phase:
            self._begin(phase, percent)
        elif percent >= self._shown + PROGRESS_STEP:
            self._shown = percent
            self.job = self.jobs.report(self.job.advance(percent=percent))  # not worth a disk write

    def _begin(self, phase: str, percent: int) -> None:
        """Persist and report the start of a phase (before the phase does anything)."""
        if self.cancel.is_set():
            raise Aborted(f"aborted before {phase}")
        self.job = self.jobs.save(self.job.advance(status=IN_PROGRESS, phase=phase,
                                                   percent=percent))
        self._shown = percent

    def run(self) -> Job:
        """Carry the job to exactly one terminal status and return it, then tidy the cache."""
        try:
            return self._run()
        finally:
            tidy_cache(self.jobs, self.policy)

    def _run(self) -> Job:
        m = self.release
        try:
            self._install(m)
        except Aborted as err:
            return self._aborted(err)
        except Stm32OtaError as err:
            log.error("%s: job %s failed in %s: [%s] %s", self.t.name, self.job.job_id,
                      self.job.phase, err.code, err)
            return self.jobs.finish(self.job, FAILED, self._error(err), self._flash_note())
        log.info("%s: %s installed and verified", self.t.name, m.version)
        return self.jobs.succeed(self.job, m.version, m.sha256)

    def _flash_note(self) -> Optional[str]:
        if self.job.phase in TOUCHES_FLASH:
            return ("the flash was being changed, so the target stays in the bootloader; the "
                    "next install repairs it")
        return None

    def _error(self, err: Stm32OtaError) -> dict:
        note = self._flash_note()
        d = err.as_dict()
        if note:
            d["message"] = f"{d['message']} ({note})"
        return d

    def _aborted(self, err: Aborted) -> Job:
        if self.stopping.is_set():
            # The agent is shutting down, not the job: leave it open so recover() repeats it.
            log.warning("%s: agent stopping during %s; job %s resumes at the next start",
                        self.t.name, self.job.phase, self.job.job_id)
            return self.job
        log.warning("%s: job %s aborted in %s", self.t.name, self.job.job_id, self.job.phase)
        err = Aborted(f"aborted during {self.job.phase}")
        return self.jobs.finish(self.job, CANCELED, self._error(err), self._flash_note())

    def _install(self, m: Manifest) -> None:
        p = self.policy
        self._step("download")
        path = download.fetch(m.url, m.size, m.sha256, p.cache_dir, max_size=p.max_image_size,
                              limits=p.limits(), sleep=self.sleep, progress=self.progress,
                              cancel=self.cancel)
        self._step("verify_image")
        image = firmware.load(str(path), fmt=m.format, address=m.address)
        self._flash(m, image)

    def _flash(self, m: Manifest, image: firmware.Image) -> None:
        """Flash the verified image; a failed link is tried again (bounded, with pauses)."""
        p = self.policy
        pauses = [p.link_backoff[min(i, len(p.link_backoff) - 1)]
                  for i in range(p.link_retries)] if p.link_backoff else []
        for retry, pause in enumerate([*pauses, None], start=1):
            self._step("enter_bootloader")
            try:
                ops.flash(self.t.target, image, built_for=m.chip, start_app=True,
                          progress=self.progress, on_step=self._step, cancel=self.cancel,
                          sleep=self.sleep, i2c_bus=self.devices.i2c_bus,
                          pin_backend=self.devices.pin_backend())
                return
            except LINK_FAILURES as err:
                if pause is None or isinstance(err, NOT_CURED_BY_RETRY):
                    raise
                log.warning("%s: job %s: the link failed in %s ([%s] %s); flashing again from "
                            "the verified image in %g s (retry %d of %d)", self.t.name,
                            self.job.job_id, self.job.phase, err.code, err, pause, retry,
                            len(pauses))
                self.job = self.jobs.save(self.job.advance(
                    note=f"link retry {retry} of {len(pauses)} after [{err.code}] in "
                         f"{self.job.phase}"))
                self._pause(pause)

    def _pause(self, seconds: float) -> None:
        """Wait between link retries, ending early (Aborted) on abort or agent stop."""
        left = seconds
        while not (self.cancel.is_set() or self.stopping.is_set()):
            if left <= 0:
                return
            self.sleep(min(PAUSE_STEP, left))
            left -= PAUSE_STEP
        raise Aborted("aborted while waiting to retry the link")
