"""Job records, the state directory, and the job store: the one owner of job state.

`JobStore` is the only code that changes a job: it saves every change (before the step it
describes runs) and then hands it to the `publish` callback it was given; the service turns
that into MQTT messages. `StateStore` is the directory underneath it.

Files under `state_dir` (all JSON, each replaced atomically with write + fsync + rename, so a
kill at any instant leaves either the old or the new content):

    jobs/<target>.json        the current or last job of the target
    installed/<target>.json   {"version", "sha256", "installed_at"} of what was last verified
    releases/<product>.json   the latest accepted release manifest of the product
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Optional

from agent.errors import Stm32OtaError
from agent.ota.ratelimit import RateLimit

log = logging.getLogger(__name__)

QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, CANCELED = (
    "QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "CANCELED")
TERMINAL = frozenset({SUCCEEDED, FAILED, REJECTED, CANCELED})

# One 0-100 figure across all phases: (phase, first percent, last percent).
PHASES: tuple[tuple[str, int, int], ...] = (
    ("queued", 0, 0),
    ("download", 0, 20),
    ("verify_image", 20, 22),
    ("enter_bootloader", 22, 25),
    ("erase", 25, 35),
    ("write", 35, 75),
    ("verify", 75, 97),
    ("start", 97, 100),
    ("done", 100, 100),
)
_PHASE_RANGE = {name: (lo, hi) for name, lo, hi in PHASES}
# Phases after which the flash may hold a mix of old and new image.
TOUCHES_FLASH = frozenset({"erase", "write", "verify"})

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def overall_percent(phase: str, done: int = 0, total: int = 0) -> int:
    """Map progress inside a phase onto the job's single 0-100 figure."""
    lo, hi = _PHASE_RANGE[phase]
    if total <= 0:
        return lo
    return lo + (hi - lo) * min(done, total) // total


def now_iso(clock: float | None = None) -> str:
    """RFC 3339 UTC timestamp with seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if clock is None else clock))


@dataclass(frozen=True)
class Job:
    """One install attempt on one target."""

    target: str
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: str = QUEUED
    phase: str = "queued"
    percent: int = 0
    from_version: Optional[str] = None
    to_version: Optional[str] = None
    error: Optional[dict] = None
    manifest: Optional[dict] = None  # the signed manifest being installed (verified again on recovery)
    attempt: int = 1
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    started: Optional[str] = None
    finished: Optional[str] = None
    note: Optional[str] = None  # extra words for people, e.g. "target left in the bootloader"

    @property
    def terminal(self) -> bool:
        """True once the job has its one terminal status."""
        return self.status in TERMINAL

    def advance(self, **changes: Any) -> "Job":
        """A copy with the changes and a fresh `updated` stamp (and `finished` when terminal)."""
        job = replace(self, updated=now_iso(), **changes)
        if job.status == IN_PROGRESS and job.started is None:
            job = replace(job, started=job.updated)
        if job.status in TERMINAL and job.finished is None:
            job = replace(job, finished=job.updated)
        return job


class Disk:
    """The file operations `write_json_atomic` makes, in one place, so a test can hand in a
    disk that loses power between them (what a kill -9 cannot show: the page cache survives)."""

    def create_temp(self, folder: Path, prefix: str) -> tuple[int, str]:
        """A new empty file in `folder`: (fd, path)."""
        return tempfile.mkstemp(dir=folder, prefix=prefix)

    def write(self, fd: int, data: bytes) -> None:
        """All of `data` at the file's position."""
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def fsync(self, fd: int) -> None:
        """Make the file's data durable."""
        os.fsync(fd)

    def close(self, fd: int) -> None:
        """Close the file."""
        os.close(fd)

    def replace(self, src: str, dst: Path) -> None:
        """Rename over `dst` atomically."""
        os.replace(src, dst)

    def fsync_dir(self, folder: Path) -> None:
        """Make the folder's entries (the rename) durable."""
        dirfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def unlink(self, path: str) -> None:
        """Remove a file if it is there."""
        if os.path.exists(path):
            os.unlink(path)


DISK = Disk()
TEMP_GLOB = ".*.json.*"  # what write_json_atomic's temporary files look like


def write_json_atomic(path: Path, data: Any, disk: Disk = DISK) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
    fd, tmp = disk.create_temp(path.parent, f".{path.name}.")
    try:
        try:
            disk.write(fd, body)
            disk.fsync(fd)
        finally:
            disk.close(fd)
        disk.replace(tmp, path)
        disk.fsync_dir(path.parent)
    except BaseException:
        disk.unlink(tmp)
        raise


class StateStore:
    """The agent's persistent state: jobs, installed versions, latest releases."""

    def __init__(self, state_dir: str | Path, disk: Disk = DISK) -> None:
        self.root = Path(state_dir)
        self.disk = disk
        for sub in ("jobs", "installed", "releases"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def sweep_temps(self) -> None:
        """Remove temporary files a kill or power loss inside write_json_atomic left behind
        (call it at start, before anything writes here)."""
        for sub in ("jobs", "installed", "releases"):
            for stale in (self.root / sub).glob(TEMP_GLOB):
                log.info("removing %s left by an interrupted write", stale)
                stale.unlink(missing_ok=True)

    def _path(self, kind: str, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"refusing unsafe name {name!r} for a state file")
        return self.root / kind / f"{name}.json"

    def _read(self, kind: str, name: str) -> Optional[dict]:
        path = self._path(kind, name)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.error("ignoring unreadable state file %s: %s", path, err)
            return None

    def save_job(self, job: Job) -> None:
        """Persist the job before the step it describes runs."""
        write_json_atomic(self._path("jobs", job.target), asdict(job), self.disk)

    def load_job(self, target: str) -> Optional[Job]:
        """The target's current or last job, if any."""
        d = self._read("jobs", target)
        if d is None:
            return None
        try:
            return Job(**d)
        except TypeError as err:
            log.error("ignoring job file of %s written by another version: %s", target, err)
            return None

    def job_targets(self) -> list[str]:
        """Names of every target with a job file (configured now or not)."""
        return sorted(p.stem for p in (self.root / "jobs").glob("*.json") if _NAME.match(p.stem))

    def installed(self, target: str) -> Optional[dict]:
        """{"version", "sha256", "installed_at"} of the last verified install, or None."""
        return self._read("installed", target)

    def set_installed(self, target: str, version: str, sha256: str) -> None:
        """Record a verified install."""
        write_json_atomic(self._path("installed", target),
                          {"version": version, "sha256": sha256, "installed_at": now_iso()},
                          self.disk)

    def set_flash_unknown(self, target: str, to_version: Optional[str]) -> None:
        """The flash was erased or written but not verified (an abort, a failure, a stop): it
        no longer holds the last verified version, so report none until an install succeeds."""
        write_json_atomic(self._path("installed", target),
                          {"version": None, "interrupted_to": to_version, "installed_at": now_iso()})

    def installed_version(self, target: str) -> Optional[str]:
        """What the target last verified, or None."""
        rec = self.installed(target)
        return rec["version"] if rec else None

    def release(self, product: str) -> Optional[dict]:
        """The latest accepted manifest of a product."""
        return self._read("releases", product)

    def set_release(self, product: str, manifest: dict) -> None:
        """Remember the latest accepted manifest of a product."""
        write_json_atomic(self._path("releases", product), manifest, self.disk)


Publish = Callable[[str, Job, bool], None]
"""publish(target, job, retain): report one job change (retain=False: a notice, such as a
refusal while a job is open, that must not replace the target's retained job record)."""


class JobStore:
    """The one owner of job state: every change is saved first, then published."""

    def __init__(self, state: StateStore, publish: Publish,
                 progress: Optional[Callable[[str, Job], None]] = None,
                 limit: Optional[RateLimit] = None) -> None:
        self.state = state
        self._publish = publish
        self._progress = progress  # how progress inside a phase goes out (default: as publish)
        self.limit = limit  # rejections per origin topic; None: report every one

    def load(self, target: str) -> Optional[Job]:
        """The target's current or last job, if any."""
        return self.state.load_job(target)

    def save(self, job: Job) -> Job:
        """Persist a change (before the step it describes runs), then publish it."""
        self.state.save_job(job)
        self._publish(job.target, job, True)
        return job

    def report(self, job: Job) -> Job:
        """Publish a change that need not survive a restart (progress inside a phase)."""
        if self._progress is not None:
            self._progress(job.target, job)
        else:
            self._publish(job.target, job, True)
        return job

    def finish(self, job: Job, status: str, error: Optional[dict],
               note: Optional[str] = None) -> Job:
        """Give the job its one terminal status (phase done at 100% when it SUCCEEDED)."""
        percent = 100 if status == SUCCEEDED else job.percent
        phase = "done" if status == SUCCEEDED else job.phase
        if status != SUCCEEDED:
            self.flash_touched(job)
        return self.save(job.advance(status=status, error=error, percent=percent, phase=phase,
                                     note=note or job.note))

    def flash_touched(self, job: Job) -> None:
        """An unfinished job that got as far as erasing leaves the old version gone (the chip
        waits in its bootloader): installed becomes unknown, so the state says no more."""
        if job.phase in TOUCHES_FLASH:
            self.state.set_flash_unknown(job.target, job.to_version)

    def succeed(self, job: Job, version: str, sha256: str) -> Job:
        """Record the verified install first, then end the job SUCCEEDED."""
        self.state.set_installed(job.target, version, sha256)
        return self.finish(job, SUCCEEDED, None)

    def reject(self, target: str, err: Stm32OtaError, *, to_version: Optional[str],
               origin: Optional[str] = None) -> Optional[Job]:
        """Report a refused command: an event about it, never a change of the job record.

        Nothing is written to disk. While no job is open the REJECTED document is also the
        retained job message (until the next job, or a restart shows the last job again);
        while one is queued or running it goes out unretained, so that job's record stays.
        Reports from one `origin` (the topic the command came on) are rate-limited: a
        suppressed one is only logged at debug level and returns None.
        """
        if origin is not None and self.limit is not None:
            earlier = self.limit.take(origin)
            if earlier is None:
                log.debug("%s: rejected (not reported: too many from %s): [%s] %s", target,
                          origin, err.code, err)
                return None
            if earlier:
                log.warning("%s: %d more rejections from %s were not reported", target,
                            earlier, origin)
        log.warning("%s: rejected: [%s] %s", target, err.code, err)
        job = Job(target=target, status=REJECTED, phase="queued", error=err.as_dict(),
                  from_version=self.state.installed_version(target), to_version=to_version)
        job = job.advance()
        current = self.load(target)
        self._publish(target, job, current is None or current.terminal)
        return job

    def open_images(self) -> set[str]:
        """sha256 of the image of every job not yet ended: the cache must keep those."""
        keep = set()
        for name in self.state.job_targets():
            job = self.load(name)
            if job is not None and not job.terminal and isinstance(job.manifest, dict):
                sha = job.manifest.get("sha256")
                if isinstance(sha, str):
                    keep.add(sha)
        return keep

    def close_orphans(self, configured: Collection[str]) -> None:
        """End open jobs of targets no longer configured; unpublished, as no topics remain."""
        for name in self.state.job_targets():
            if name in configured:
                continue
            job = self.load(name)
            if job is None or job.terminal:
                continue
            log.warning("%s: job %s was open but the target is no longer configured",
                        name, job.job_id)
            self.state.save_job(job.advance(status=FAILED, error={
                "code": "target_removed",
                "message": f"target {name} was removed from the config before the job ended"}))
