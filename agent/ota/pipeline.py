"""One job, step by step: download, verify image, enter bootloader, flash, verify, start.

Safety rule 1: nothing touches the MCU before the whole image is downloaded and has passed
size, sha256 and signature checks. Rule 3: chip PID and flash size are checked against the
manifest and the image's addresses before the first erase. The job is persisted before every
phase, so a kill at any instant is recovered by `Updater.recover()`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Optional

from agent.ota import download

from agent.flasher import image as firmware
from agent.ota import manifest as mf
from agent.errors import Aborted, Stm32OtaError
from agent.flasher import ops
from agent.flasher.target import Devices
from agent.ota.jobs import CANCELED, FAILED, IN_PROGRESS, SUCCEEDED, TOUCHES_FLASH, Job, overall_percent

if TYPE_CHECKING:
    from agent.ota.updater import FlashTarget, Updater

log = logging.getLogger(__name__)

PUBLISH_INTERVAL = 1.0  # progress inside a phase is reported at most about once a second


class Pipeline:
    """Runs one job of one target to its terminal status."""

    def __init__(self, updater: "Updater", target: "FlashTarget", job: Job,
                 cancel: threading.Event, devices: Devices = Devices()) -> None:
        self.u = updater
        self.t = target
        self.job = job
        self.cancel = cancel
        self.devices = devices  # what stands in for the target's devices (the demo's sims)
        self._last_report = 0.0

    def _step(self, phase: str, percent: Optional[int] = None) -> None:
        """Persist and report the start of a phase (before the phase does anything)."""
        if self.cancel.is_set():
            raise Aborted(f"aborted before {phase}")
        if percent is None:
            percent = overall_percent(phase)
        self.job = self.u._save(self.job.advance(status=IN_PROGRESS, phase=phase, percent=percent))
        self._last_report = self.u.clock()  # the next in-phase report waits a full interval

    def progress(self, phase: str, done: int, total: int) -> None:
        """Progress callback for download and flash: persist phase changes, throttle the rest."""
        if phase == "read":
            return
        percent = overall_percent(phase, done, total)
        if phase != self.job.phase:
            self._step(phase, percent)
            return
        now = self.u.clock()
        if percent != self.job.percent and (now - self._last_report >= PUBLISH_INTERVAL
                                            or done >= total):
            self._last_report = now
            self.job = self.job.advance(percent=percent)
            self.u.notify(self.t.name, self.job, True)  # progress need not hit the disk

    def run(self) -> Job:
        """Carry the job to exactly one terminal status and return it."""
        try:
            manifest = mf.parse_manifest(self.job.manifest)
            # Checked again here: the job may come from a state file after a restart.
            mf.verify_manifest(manifest, self.u.policy.trusted_keys,
                               allow_unsigned=self.u.policy.allow_unsigned)
            self._install(manifest)
        except Aborted as err:
            return self._aborted(err)
        except Stm32OtaError as err:
            log.error("%s: job %s failed in %s: [%s] %s", self.t.name, self.job.job_id,
                      self.job.phase, err.code, err)
            return self.u._finish(self.job, FAILED, self._error(err), self._flash_note())
        self.u.store.set_installed(self.t.name, manifest.version, manifest.sha256)
        log.info("%s: %s installed and verified", self.t.name, manifest.version)
        return self.u._finish(self.job, SUCCEEDED, None, None)

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
        if self.u.stopping:
            # The agent is shutting down, not the job: leave it open so recover() repeats it.
            log.warning("%s: agent stopping during %s; job %s resumes at the next start",
                        self.t.name, self.job.phase, self.job.job_id)
            return self.job
        log.warning("%s: job %s aborted in %s", self.t.name, self.job.job_id, self.job.phase)
        err = Aborted(f"aborted during {self.job.phase}")
        return self.u._finish(self.job, CANCELED, self._error(err), self._flash_note())

    def _install(self, m: "mf.Manifest") -> None:
        p = self.u.policy
        self._step("download")
        path = download.fetch(m.url, m.size, m.sha256, p.cache_dir, max_size=p.max_image_size,
                              timeout=p.download_timeout, retries=p.download_retries,
                              backoff=p.download_backoff, sleep=self.u.sleep,
                              progress=self.progress, cancel=self.cancel)
        self._step("verify_image")
        image = firmware.load(str(path), fmt=m.format, address=m.address)
        ops.flash(self.t.target, image, built_for=m.chip, start_app=True,
                  progress=self.progress, on_step=self._step, cancel=self.cancel,
                  sleep=self.u.sleep, i2c_bus=self.devices.i2c_bus,
                  pin_backend=self.devices.pin_backend())
