"""Firmware download: resumable, size-capped, sha256-checked, bounded in time, cached by hash.

The cache holds `<cache_dir>/<sha256>` (complete, verified images) and `<sha256>.part`
(an interrupted download, resumed with an HTTP Range request). Remote file names are never
used for paths, so a hostile URL cannot write outside the cache. A download ends by its
deadline whatever the server does, and an abort ends it within a second (see transfer.py).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from agent.errors import Aborted, DownloadFailed, DownloadRetry, ImageRejected, Stm32OtaError
from agent.ota import transfer
from agent.ota.manifest import SHA256_RE, Manifest, check_url, redact_url

log = logging.getLogger(__name__)

CHUNK = 64 * 1024  # hashing a cached file
NET_CHUNK = 8 * 1024  # from the network: a dropped connection loses at most this much of a resume
MAX_BACKOFF = 60.0
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RETRY_STATUS = {408, 425, 429}

Progress = Callable[[str, int, int], None]
Cancel = Union[threading.Event, Callable[[], bool]]


@dataclass(frozen=True)
class Limits:
    """How a download may go (config `trust.download`)."""

    timeout: float = 30.0  # connect; and each window in which min_rate must be met
    deadline: float = 1800.0  # the whole download, every attempt and wait included
    min_rate: int = 1024  # bytes per second, averaged over `timeout`; 0 = only "no data"
    retries: int = 5
    backoff: float = 1.0
    redirects: str = transfer.SAME_HOST  # or transfer.ANY_HOST


def _cancelled(cancel: Optional[Cancel]) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fetch(source: Union[Manifest, str], size: Optional[int] = None, sha256: Optional[str] = None,
          cache_dir: Union[str, Path, None] = None, *, max_size: int, limits: Limits = Limits(),
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
          progress: Optional[Progress] = None, cancel: Optional[Cancel] = None) -> Path:
    """Download to `<cache_dir>/<sha256>` and return that path once size and sha256 match.

    `source` is a Manifest (size and sha256 default to its own) or a URL. Connection errors,
    stalls, a rate below `limits.min_rate` and 5xx are retried `limits.retries` times with
    exponential backoff; other HTTP errors fail at once with DownloadFailed, and so does
    passing `limits.deadline`. A body longer than `size` or a sha256 mismatch raises
    ImageRejected (`too_large`, `sha256_mismatch`) and leaves no partial file behind.
    """
    url = source.url if isinstance(source, Manifest) else source
    if isinstance(source, Manifest):
        size = source.size if size is None else size
        sha256 = source.sha256 if sha256 is None else sha256
        if (size, sha256) != (source.size, source.sha256):
            raise ValueError("size/sha256 given disagree with the manifest")
    if cache_dir is None or size is None or sha256 is None:
        raise TypeError("fetch() needs size, sha256 and cache_dir (or a Manifest)")
    check_url(url)
    if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
        raise ImageRejected("sha256 must be 64 lowercase hex digits", code="bad_field")
    if size <= 0 or size > max_size:
        raise ImageRejected(f"image of {size} bytes exceeds the limit of {max_size} bytes",
                            code="too_large")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / sha256
    report = progress or (lambda phase, done, total: None)
    with _lock_for(final):  # two workers fetching one image must not share the .part file
        if _cached_ok(final, size, sha256):
            log.info("using cached image %s", final)
            report("download", size, size)
            return final
        job = _Job(url, size, final.with_name(sha256 + ".part"), limits, report, cancel, clock)
        _check_space(cache, size - job.have())
        _run_attempts(job, sleep)
        _verify_and_commit(job.part, final, size, sha256)
    return final


_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(final: Path) -> threading.Lock:
    """One lock per cached image path, shared by every thread of this process."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(final.resolve(), threading.Lock())


def _check_space(cache: Path, needed: int) -> None:
    free = shutil.disk_usage(cache).free
    if free < needed:
        raise DownloadFailed(f"{cache} has {free} bytes free but the image needs {needed} more; "
                             "free some space or point agent.cache_dir elsewhere", code="no_space")


def _cached_ok(final: Path, size: int, sha256: str) -> bool:
    if not final.exists():
        return False
    if _hash_file(final) == (size, sha256):
        return True
    log.warning("cached %s is corrupt; downloading it again", final)
    final.unlink()
    return False


class _Job:
    """The state of one download across attempts."""

    def __init__(self, url: str, size: int, part: Path, limits: Limits, report: Progress,
                 cancel: Optional[Cancel], clock: Callable[[], float]) -> None:
        self.url, self.shown, self.size, self.part = url, redact_url(url), size, part
        self.limits, self.report, self.cancel, self.clock = limits, report, cancel, clock
        self.deadline = clock() + limits.deadline

    def have(self) -> int:
        """Bytes already in the .part file (a bogus oversize one is discarded)."""
        try:
            n = self.part.stat().st_size
        except FileNotFoundError:
            return 0
        if n > self.size:
            self.part.unlink()
            return 0
        return n

    def stopped(self) -> Optional[Stm32OtaError]:
        """Why the download must end now: aborted (the .part is kept) or past its deadline."""
        if _cancelled(self.cancel):
            return Aborted(f"download of {self.shown} canceled")
        if self.clock() >= self.deadline:
            return DownloadFailed(
                f"download of {self.shown} did not finish within {self.limits.deadline:g} s "
                f"({self.have()} of {self.size} bytes); raise trust.download.deadline or fix the "
                "server", code="download_deadline")
        return None

    def check_stop(self) -> None:
        """Raise if the download must end now."""
        why = self.stopped()
        if why is not None:
            raise why


def _run_attempts(job: _Job, sleep: Callable[[float], None]) -> None:
    attempt = 0
    while True:
        job.check_stop()
        try:
            if job.have() < job.size:
                _attempt(job)
            if job.have() == job.size:
                return
            raise DownloadRetry(f"connection closed after {job.have()} of {job.size} bytes")
        except DownloadRetry as e:
            failure = e
        attempt += 1
        if attempt > job.limits.retries:
            raise DownloadFailed(f"download of {job.shown} failed after {attempt} attempts: "
                                 f"{failure}", code=failure.code)
        delay = min(job.limits.backoff * 2 ** (attempt - 1), MAX_BACKOFF)
        log.warning("download attempt %d failed (%s); retrying in %.1fs", attempt, failure, delay)
        _wait(job, delay, sleep)


def _wait(job: _Job, delay: float, sleep: Callable[[float], None]) -> None:
    """Sleep `delay` in slices, so an abort or the deadline ends the wait within a slice."""
    slices = max(1, int(delay / transfer.POLL + 0.999))
    for _ in range(slices):
        job.check_stop()
        sleep(delay / slices)


def _attempt(job: _Job) -> None:
    offset = job.have()
    headers = {"Accept-Encoding": "identity"}  # sizes and ranges are about the stored bytes
    if offset:
        headers["Range"] = f"bytes={offset}-"
    lim = job.limits
    with transfer.Guard(job.stopped, lim.timeout, lim.min_rate, job.clock) as guard:
        conn: Optional[http.client.HTTPConnection] = None
        try:
            # the socket timeout is a backstop: the guard ends a stall after lim.timeout
            conn, r = transfer.open_get(job.url, headers, guard, timeout=lim.timeout + 1,
                                        redirects=lim.redirects)
            offset = _start_offset(job, r, offset)
            _check_body(job, r, offset)
            _stream(job, r, offset, guard)
            guard.raise_if_stopped()
        except Stm32OtaError:
            raise
        except (OSError, http.client.HTTPException) as e:
            guard.raise_if_stopped()  # the guard cut it: say why, not how the read noticed
            raise DownloadRetry(f"{type(e).__name__}: {e}") from None
        finally:
            if conn is not None:
                conn.close()


def _check_body(job: _Job, r: http.client.HTTPResponse, offset: int) -> None:
    """Refuse a body that is encoded, or announced longer than the image."""
    encoding = (r.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise DownloadFailed(f"GET {job.shown} answered with Content-Encoding {encoding!r} though "
                             "only identity was accepted; serve the file as it is (turn "
                             "compression off for it)", code="content_encoding")
    length = r.getheader("Content-Length")
    if length and length.isdigit() and offset + int(length) > job.size:
        _too_large(job, f"server announces {offset + int(length)} bytes")


def _start_offset(job: _Job, r: http.client.HTTPResponse, offset: int) -> int:
    """Where the body of `r` starts in the file, after judging its status."""
    if r.status == 206:
        m = _CONTENT_RANGE_RE.fullmatch(r.getheader("Content-Range") or "")
        total_ok = m is not None and m.group(3) in ("*", str(job.size))
        if m and int(m.group(1)) == offset and total_ok:
            log.info("resuming %s at byte %d", job.shown, offset)
            return offset
        job.part.unlink(missing_ok=True)  # never splice a range we did not ask for
        raise DownloadRetry(f"server answered Range {offset}- with Content-Range "
                            f"{r.getheader('Content-Range')!r}; starting over")
    if r.status == 200:
        if offset:
            log.warning("server ignored the Range request; downloading %s from the start",
                        job.shown)
        return 0
    if r.status == 416:
        job.part.unlink(missing_ok=True)
        raise DownloadRetry("server refused the resume range (416); starting over")
    if r.status >= 500 or r.status in _RETRY_STATUS:
        raise DownloadRetry(f"HTTP {r.status} {r.reason}")
    raise DownloadFailed(f"GET {job.shown} answered HTTP {r.status} {r.reason}; "
                         "check the manifest's url")


def _stream(job: _Job, r: http.client.HTTPResponse, offset: int, guard: transfer.Guard) -> None:
    done = offset
    job.report("download", done, job.size)
    with job.part.open("r+b" if offset else "wb") as f:
        f.seek(offset)
        f.truncate()
        # read1: whatever has arrived, so the guard counts bytes as they come
        for chunk in iter(lambda: r.read1(NET_CHUNK), b""):
            guard.received += len(chunk)
            job.check_stop()  # the guard looks 5 times a second; a fast server needs this too
            if done + len(chunk) > job.size:
                f.close()
                _too_large(job, f"server sent more than {job.size} bytes")
            f.write(chunk)
            done += len(chunk)
            job.report("download", done, job.size)
        f.flush()
        os.fsync(f.fileno())


def _too_large(job: _Job, why: str) -> None:
    job.part.unlink(missing_ok=True)
    raise ImageRejected(f"{job.shown}: {why}, but the manifest says {job.size}; refusing it",
                        code="too_large")


def _verify_and_commit(part: Path, final: Path, size: int, sha256: str) -> None:
    got_size, got_sha = _hash_file(part)
    if (got_size, got_sha) != (size, sha256):
        part.unlink()
        raise ImageRejected(f"downloaded image has sha256 {got_sha} ({got_size} bytes) but the "
                            f"manifest says {sha256} ({size} bytes); the file on the server "
                            "does not match the release", code="sha256_mismatch")
    os.replace(part, final)  # atomic: the cache never holds an unverified <sha256>
    _fsync_dir(final.parent)
    log.info("downloaded and verified %s", final)


def prune_cache(cache_dir: Union[str, Path], keep: set[str], max_bytes: int) -> list[Path]:
    """Delete cached images not in `keep` (oldest first) until the cache fits `max_bytes`.

    Stale `.part` files not in `keep` always go. Files that are not cache entries are left
    alone, and so is an entry a fetch() of this process is working on. Returns the deleted
    paths.
    """
    cache = Path(cache_dir)
    if not cache.is_dir():
        return []
    removed: list[Path] = []
    entries: list[tuple[float, int, Path]] = []
    total = 0
    for p in cache.iterdir():
        name = p.name[:-5] if p.name.endswith(".part") else p.name
        if not SHA256_RE.fullmatch(name) or not p.is_file():
            continue
        st = p.stat()
        if name not in keep and p.name.endswith(".part"):
            if _unlink_idle(p, cache / name):
                removed.append(p)
            continue
        total += st.st_size
        if name not in keep:
            entries.append((st.st_mtime, st.st_size, p))
    for _mtime, nbytes, p in sorted(entries):
        if total <= max_bytes:
            break
        if _unlink_idle(p, p):
            removed.append(p)
            total -= nbytes
    return removed


def _unlink_idle(path: Path, final: Path) -> bool:
    """Delete `path` unless a fetch() of `final` holds its lock right now."""
    lock = _lock_for(final)
    if not lock.acquire(blocking=False):
        return False
    try:
        path.unlink(missing_ok=True)
        return True
    finally:
        lock.release()
