"""A disk that loses power: what survives is only what was made durable before the cut.

`kill -9` cannot show this (the page cache survives the process), so the state store is run on
a `PowerLossDisk` that performs every operation for real while keeping a journal; at operation
`cut_at` it raises `PowerCut`, and `after_power_loss()` rebuilds what the medium would hold:

- file data counts only once fsync'ed (an un-fsync'ed write is lost; a file created and never
  fsync'ed is empty);
- directory changes (create, rename, unlink) count once the folder was fsync'ed; of those not
  yet made durable, a journaling file system keeps a prefix in order, of random length.

    disk = PowerLossDisk(cut_at=7)
    store = StateStore(root, disk)   ... raises PowerCut somewhere
    files = disk.after_power_loss(initial, random.Random(1))   # {path: bytes}
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Optional

from agent.flasher.target import Target, UartSettings
from agent.ota.jobs import (IN_PROGRESS, QUEUED, SUCCEEDED, TEMP_GLOB, Disk, Job, JobStore,
                            StateStore)
from agent.ota.pipeline import FlashTarget, Policy
from agent.ota.updater import Updater


class PowerCut(BaseException):
    """The power went before this operation (BaseException: nothing in the code may catch it)."""


class PowerLossDisk(Disk):
    """Performs every operation and journals it; raises PowerCut at operation `cut_at`."""

    def __init__(self, cut_at: int | None = None) -> None:
        self.cut_at = cut_at
        self.ops = 0
        self.journal: list[tuple] = []
        self.paths: dict[int, str] = {}
        self.dead = False

    def _tick(self) -> None:
        if self.dead or (self.cut_at is not None and self.ops >= self.cut_at):
            self.dead = True
            raise PowerCut()
        self.ops += 1

    def create_temp(self, folder: Path, prefix: str) -> tuple[int, str]:
        self._tick()
        fd, path = super().create_temp(folder, prefix)
        self.paths[fd] = path
        self.journal.append(("create", path))
        return fd, path

    def write(self, fd: int, data: bytes) -> None:
        self._tick()
        super().write(fd, data)
        self.journal.append(("write", self.paths[fd], bytes(data)))

    def fsync(self, fd: int) -> None:
        self._tick()
        super().fsync(fd)
        self.journal.append(("fsync", self.paths[fd]))

    def close(self, fd: int) -> None:
        if self.dead:  # the process is gone: closing is not an operation on the medium
            return
        super().close(fd)
        self.paths.pop(fd, None)

    def replace(self, src: str, dst: Path) -> None:
        self._tick()
        super().replace(src, dst)
        self.journal.append(("replace", src, str(dst)))

    def fsync_dir(self, folder: Path) -> None:
        self._tick()
        super().fsync_dir(folder)
        self.journal.append(("fsync_dir", str(folder)))

    def unlink(self, path: str) -> None:
        self._tick()
        super().unlink(path)
        self.journal.append(("unlink", path))

    def after_power_loss(self, initial: dict[str, bytes], rng: random.Random) -> dict[str, bytes]:
        """What the medium holds after the cut, from the durable `initial` files and the journal."""
        inode = iter(range(1 << 30))
        durable = {p: next(inode) for p in initial}  # path -> inode, as on the medium
        live = dict(durable)  # path -> inode, as the process saw it
        data = {durable[p]: initial[p] for p in initial}  # inode -> durable bytes
        cache = dict(data)  # inode -> bytes the process wrote
        pending: dict[str, list[tuple]] = {}
        for op in self.journal:
            kind, path = op[0], op[1]
            folder = os.path.dirname(path) if kind != "fsync_dir" else path
            if kind == "create":
                live[path] = n = next(inode)
                data[n], cache[n] = b"", b""
                pending.setdefault(folder, []).append(("link", path, n))
            elif kind == "write":
                cache[live[path]] += op[2]
            elif kind == "fsync":
                data[live[path]] = cache[live[path]]
            elif kind == "replace":
                live[op[2]] = live.pop(path)
                pending.setdefault(folder, []).append(("rename", path, op[2]))
            elif kind == "unlink":
                live.pop(path, None)
                pending.setdefault(folder, []).append(("unlink", path))
            elif kind == "fsync_dir":
                _apply(durable, pending.pop(folder, []))
        for ops in pending.values():  # what the journal happened to commit before the cut
            _apply(durable, ops[:rng.randint(0, len(ops))])
        return {p: data[n] for p, n in durable.items()}


def _apply(entries: dict[str, int], ops: list[tuple]) -> None:
    for op in ops:
        if op[0] == "link":
            entries[op[1]] = op[2]
        elif op[0] == "rename" and op[1] in entries:
            entries[op[2]] = entries.pop(op[1])
        elif op[0] == "unlink":
            entries.pop(op[1], None)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (absolute path -> bytes)."""
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def materialize(files: dict[str, bytes], old_root: Path, new_root: Path) -> None:
    """Write `files` (paths under old_root) under new_root, with the state's folders."""
    for sub in ("jobs", "installed", "releases"):
        (new_root / sub).mkdir(parents=True, exist_ok=True)
    for path, body in files.items():
        target = new_root / Path(path).relative_to(old_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)


# ----- one install's worth of state changes, cut anywhere ------------------------------------

PHASES = ("download", "verify_image", "enter_bootloader", "erase", "write", "verify", "start")
MANIFEST = {"product": "pump-ctrl", "version": "1.1.0", "url": "http://127.0.0.1:9/fw.bin",
            "size": 4, "sha256": "ab" * 32, "format": "bin", "address": 0x08000000}


def _steps(jobs: JobStore) -> list[Callable[[], Optional[Job]]]:
    """The saves an install makes, in order; each returns the job it left on disk (or None)."""
    job = Job(target="pump", to_version="1.1.0", from_version="1.0.0", manifest=MANIFEST,
              job_id="new")
    out: list[Callable[[], Optional[Job]]] = [
        lambda: jobs.state.set_release("pump-ctrl", MANIFEST),
        lambda: jobs.save(job)]
    for phase in PHASES:
        out.append(lambda phase=phase: jobs.save(job.advance(status=IN_PROGRESS, phase=phase)))
    out.append(lambda: jobs.succeed(job.advance(status=IN_PROGRESS, phase="start"), "1.1.0",
                                    MANIFEST["sha256"]))
    return out


def prepare(root: Path) -> None:
    """The state before the install: 1.0.0 installed by an earlier job that succeeded."""
    store = StateStore(root)
    store.set_installed("pump", "1.0.0", "cd" * 32)
    store.save_job(Job(target="pump", job_id="old", status=SUCCEEDED, phase="done",
                       percent=100, to_version="1.0.0"))


def count_ops(work: Path) -> int:
    """How many disk operations a whole install makes (cut points are 0..this)."""
    root = work / "count"
    prepare(root)
    disk = PowerLossDisk()
    jobs = JobStore(StateStore(root, disk), lambda *a: None)
    for step in _steps(jobs):
        step()
    return disk.ops


def trial(work: Path, cut_at: int, seed: int) -> list[str]:
    """Cut the power at operation `cut_at`, rebuild the medium, recover; what went wrong."""
    root, after = work / "state", work / "after"
    prepare(root)
    initial = snapshot(root)
    disk = PowerLossDisk(cut_at)
    jobs = JobStore(StateStore(root, disk), lambda *a: None)
    acked: Optional[Job] = jobs.load("pump")
    try:
        for step in _steps(jobs):
            saved = step()
            if isinstance(saved, Job):
                acked = saved
    except PowerCut:
        pass
    files = disk.after_power_loss(initial, random.Random(seed))
    materialize(files, root, after)
    return check_recovered(after, acked)


def _rank(job: Job) -> int:
    """How far the install had come: a save that was acknowledged may never be undone."""
    if job.job_id == "old":
        return 0
    if job.status == IN_PROGRESS:
        return 2 + PHASES.index(job.phase)
    return 1 if job.status == QUEUED else 100


def check_recovered(root: Path, acked: Optional[Job]) -> list[str]:
    """The state loads, holds at least what was acknowledged, and recovery holds."""
    problems = []
    store = StateStore(root)
    job = store.load_job("pump")
    if job is None:
        return ["the job record is gone"]
    if acked is not None and _rank(job) < _rank(acked):
        problems.append(f"went back from acknowledged {acked.status}/{acked.phase} to "
                        f"{job.job_id} {job.status}/{job.phase}")
    installed = store.installed("pump")
    if installed is None:
        problems.append("the installed record is gone")
    elif job.job_id == "new" and job.status == SUCCEEDED and installed["version"] != "1.1.0":
        problems.append("SUCCEEDED but the installed record says " + installed["version"])
    seen: list[Job] = []
    target = FlashTarget(name="pump", product="pump-ctrl",
                         target=Target(link=UartSettings(port="/dev/null")))
    updater = Updater("gw", [target], JobStore(store, lambda n, j, r: seen.append(j)),
                      Policy(allow_unsigned=True, cache_dir=str(root / "cache")))
    updater.recover()
    again = store.load_job("pump")
    if job.terminal and again != job:
        problems.append(f"recovery changed the finished job {job.status}")
    if not job.terminal and (again.status, again.attempt, again.job_id) != (
            QUEUED, job.attempt + 1, job.job_id):
        problems.append(f"recovery did not queue the open job again: {again}")
    left = [p.name for p in root.rglob(TEMP_GLOB)]
    if left:
        problems.append(f"temporary files left after recovery: {left}")
    return problems
