"""fetch() against a real HTTP server on loopback: resume, retries, caps, hashing, cache,
time limits, redirects, and URLs that never show their secrets."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from httpserver import Behaviour, FileServer

from agent.errors import Aborted, DownloadFailed, ImageRejected
from agent.ota.download import Limits, fetch, prune_cache
from agent.ota.jobs import FAILED, IN_PROGRESS, Job, JobStore, StateStore
from agent.ota.manifest import parse_manifest, redact_url
from agent.ota.pipeline import FlashTarget, Pipeline, Policy, tidy_cache
from agent.ota.transfer import Guard, same_origin
from agent.ota.updater import Updater

DATA = bytes((i * 7 + i // 251) & 0xFF for i in range(300_000))
SHA = hashlib.sha256(DATA).hexdigest()
MAX = 1 << 20


@pytest.fixture
def srv():
    with FileServer({"/fw.bin": DATA}) as s:
        yield s


class FakeSleep:
    """Records the delays instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def get(srv: FileServer, tmp_path: Path, **kw):
    kw.setdefault("sleep", FakeSleep())
    return fetch(srv.url("/fw.bin"), len(DATA), SHA, tmp_path, max_size=MAX, **kw)


def retry_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The backoff delays the downloader announced, in order (it sleeps them in slices)."""
    return [float(m) for m in re.findall(r"retrying in ([\d.]+)s", caplog.text)]


def cache_names(tmp_path: Path) -> set[str]:
    return {p.name for p in tmp_path.iterdir()}


def test_happy_path_lands_in_cache_named_by_sha256_and_reports_progress(srv, tmp_path):
    seen = []
    path = get(srv, tmp_path, progress=lambda *a: seen.append(a))
    assert path == tmp_path / SHA
    assert path.read_bytes() == DATA
    assert cache_names(tmp_path) == {SHA}
    assert seen[0] == ("download", 0, len(DATA)) and seen[-1] == ("download", len(DATA), len(DATA))
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)
    assert "Range" not in srv.requests[0].headers


def test_manifest_source_takes_url_size_and_sha_from_it(srv, tmp_path):
    m = parse_manifest({"product": "p", "version": "1.0.0", "url": srv.url("/fw.bin"),
                        "size": len(DATA), "sha256": SHA, "format": "bin", "address": 0})
    assert fetch(m, cache_dir=tmp_path, max_size=MAX).read_bytes() == DATA


def test_resumes_with_range_after_the_connection_drops(srv, tmp_path, caplog):
    srv.queue(Behaviour(truncate_after=196_000))  # just short of a 64 KiB boundary
    sleep = FakeSleep()
    path = get(srv, tmp_path, sleep=sleep)
    assert path.read_bytes() == DATA
    assert len(srv.requests) == 2
    rng = srv.requests[1].headers["Range"]
    start = int(rng.removeprefix("bytes=").rstrip("-"))
    assert 196_000 - 8 * 1024 < start <= 196_000  # what arrived is kept, give or take 8 KiB
    assert retry_delays(caplog) == [1.0] and sum(sleep.calls) == pytest.approx(1.0)
    assert cache_names(tmp_path) == {SHA}


def test_server_ignoring_range_starts_over_and_still_gets_it_right(srv, tmp_path):
    srv.queue(Behaviour(truncate_after=150_000), Behaviour(honour_range=False))
    path = get(srv, tmp_path)
    assert path.read_bytes() == DATA
    assert "Range" in srv.requests[1].headers  # asked, got a 200 with everything


def test_wrong_content_range_is_never_spliced(srv, tmp_path):
    srv.queue(Behaviour(truncate_after=150_000), Behaviour(content_range_start=0))
    path = get(srv, tmp_path)
    assert path.read_bytes() == DATA
    assert len(srv.requests) == 3 and "Range" not in srv.requests[2].headers


def test_404_fails_at_once_naming_the_status(srv, tmp_path):
    srv.default = Behaviour(status=404)
    sleep = FakeSleep()
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path, sleep=sleep)
    assert e.value.code == "download_failed" and "404" in str(e.value)
    assert len(srv.requests) == 1 and sleep.calls == []


def test_500_is_retried_with_exponential_backoff(srv, tmp_path, caplog):
    srv.queue(Behaviour(status=500), Behaviour(status=503))
    sleep = FakeSleep()
    assert get(srv, tmp_path, sleep=sleep, limits=Limits(backoff=0.5)).read_bytes() == DATA
    assert retry_delays(caplog) == [0.5, 1.0] and sum(sleep.calls) == pytest.approx(1.5)


def test_retries_are_bounded(srv, tmp_path, caplog):
    srv.default = Behaviour(status=500)
    with pytest.raises(DownloadFailed, match="3 attempts.*500"):
        get(srv, tmp_path, limits=Limits(retries=2))
    assert len(srv.requests) == 3 and retry_delays(caplog) == [1.0, 2.0]


def test_read_timeout_on_a_stalled_server_is_retried(srv, tmp_path):
    srv.queue(Behaviour(delay=2.0))
    assert get(srv, tmp_path, limits=Limits(timeout=0.3)).read_bytes() == DATA
    assert len(srv.requests) == 2


@pytest.mark.parametrize("send_length", [True, False])
def test_body_longer_than_manifest_size_is_refused_and_not_kept(srv, tmp_path, send_length):
    srv.default = Behaviour(extra=b"\0" * 5000, send_length=send_length)
    with pytest.raises(ImageRejected) as e:
        get(srv, tmp_path)
    assert e.value.code == "too_large"
    assert cache_names(tmp_path) == set()


def test_size_above_max_size_is_refused_before_any_request(srv, tmp_path):
    with pytest.raises(ImageRejected) as e:
        fetch(srv.url("/fw.bin"), len(DATA), SHA, tmp_path, max_size=1000)
    assert e.value.code == "too_large" and srv.requests == []


def test_sha256_mismatch_deletes_the_file_and_does_not_retry(srv, tmp_path):
    srv.files["/fw.bin"] = DATA[:-1] + b"\x00"
    with pytest.raises(ImageRejected) as e:
        get(srv, tmp_path)
    assert e.value.code == "sha256_mismatch"
    assert cache_names(tmp_path) == set() and len(srv.requests) == 1


def test_short_file_on_server_ends_in_a_bounded_failure(srv, tmp_path):
    srv.files["/fw.bin"] = DATA[:1000]
    (tmp_path / f"{SHA}.part").write_bytes(b"x" * 2000)  # longer than the server's file: 416
    with pytest.raises(DownloadFailed):
        get(srv, tmp_path, limits=Limits(retries=3))
    assert len(srv.requests) == 4


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/fw.bin"


def test_cached_image_needs_no_network(tmp_path):
    (tmp_path / SHA).write_bytes(DATA)
    path = fetch(closed_port_url(), len(DATA), SHA, tmp_path, max_size=MAX,
                 limits=Limits(retries=0))
    assert path.read_bytes() == DATA


def test_corrupt_cache_entry_is_downloaded_again(srv, tmp_path):
    (tmp_path / SHA).write_bytes(b"rotten")
    assert get(srv, tmp_path).read_bytes() == DATA and len(srv.requests) == 1


def test_server_down_exhausts_retries_with_download_failed(tmp_path, caplog):
    with pytest.raises(DownloadFailed, match="ConnectionRefused"):
        fetch(closed_port_url(), len(DATA), SHA, tmp_path, max_size=MAX,
              limits=Limits(retries=2), sleep=FakeSleep())
    assert retry_delays(caplog) == [1.0, 2.0]


def test_cancel_before_start_makes_no_request(srv, tmp_path):
    ev = threading.Event()
    ev.set()
    with pytest.raises(Aborted):
        get(srv, tmp_path, cancel=ev)
    assert srv.requests == []


def test_cancel_mid_download_stops_and_a_later_fetch_resumes(srv, tmp_path):
    ev = threading.Event()

    def progress(phase: str, done: int, total: int) -> None:
        if done >= 100_000:
            ev.set()

    with pytest.raises(Aborted):
        get(srv, tmp_path, cancel=ev, progress=progress)
    kept = (tmp_path / f"{SHA}.part").stat().st_size
    assert 100_000 <= kept < len(DATA)
    assert get(srv, tmp_path).read_bytes() == DATA
    assert srv.requests[-1].headers["Range"] == f"bytes={kept}-"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/x", "http://user:pw@h/x", "gopher://h"])
def test_only_plain_http_and_https_urls(tmp_path, url):
    with pytest.raises(ImageRejected) as e:
        fetch(url, 10, SHA, tmp_path, max_size=MAX)
    assert e.value.code == "bad_url"


@pytest.mark.parametrize("sha", ["../../etc/passwd", SHA.upper(), SHA[:-1], ""])
def test_hostile_sha256_never_becomes_a_path(tmp_path, sha):
    with pytest.raises(ImageRejected):
        fetch("http://127.0.0.1:1/x", 10, sha, tmp_path / "cache", max_size=MAX)
    assert not (tmp_path / "cache").exists()


def test_prune_cache_keeps_wanted_images_and_drops_oldest_first(tmp_path):
    names = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
    for i, n in enumerate(names):
        (tmp_path / n).write_bytes(b"x" * 100)
        os.utime(tmp_path / n, (1000 + i, 1000 + i))
    (tmp_path / f"{names[3]}.part").write_bytes(b"p")
    (tmp_path / "notes.txt").write_bytes(b"not ours")
    removed = prune_cache(tmp_path, keep={names[0]}, max_bytes=250)
    assert {p.name for p in removed} == {names[1], names[2], f"{names[3]}.part"}
    assert cache_names(tmp_path) == {names[0], names[3], "notes.txt"}


def test_not_enough_disk_space_fails_before_downloading(srv, tmp_path):
    import shutil
    too_big = shutil.disk_usage(tmp_path).free + (1 << 30)
    with pytest.raises(DownloadFailed) as e:
        fetch(srv.url("/fw.bin"), too_big, SHA, tmp_path, max_size=too_big)
    assert e.value.code == "no_space" and srv.requests == []


# ------------------------------------------------------------------ time limits (issue 9, defect 2)

def fetch_in_thread(fn) -> tuple[threading.Thread, dict]:
    """Run fn() in a thread; the dict gets its exception (or result) and when it ended."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            out["error"] = err
        out["ended"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_for(pred, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def test_slow_loris_fails_on_the_minimum_rate_and_retries_are_bounded(srv, tmp_path):
    srv.default = Behaviour(chunk=1, delay=0.05)  # 20 bytes/s, every read well within timeout
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path, limits=Limits(timeout=0.5, min_rate=1000, retries=1))
    assert e.value.code == "download_too_slow" and "below the minimum" in str(e.value)
    assert len(srv.requests) == 2


def test_a_server_that_never_answers_fails_as_stalled(srv, tmp_path):
    srv.default = Behaviour(hang=True)
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path, limits=Limits(timeout=0.4, retries=1))
    assert e.value.code == "download_too_slow" and "no data" in str(e.value)
    assert len(srv.requests) == 2


def test_whole_download_deadline_ends_a_fast_enough_but_endless_transfer(srv, tmp_path):
    srv.default = Behaviour(chunk=2000, delay=0.05)  # 40 kB/s: 300 kB would take 7.5 s
    start = time.monotonic()
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path, limits=Limits(deadline=1.0, min_rate=0))
    assert e.value.code == "download_deadline"
    assert time.monotonic() - start < 5  # the deadline, not the transfer, ended it


def test_deadline_counts_the_waits_between_attempts(srv, tmp_path):
    srv.default = Behaviour(status=503)
    start = time.monotonic()
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path, sleep=time.sleep, limits=Limits(deadline=0.6, backoff=5, retries=9))
    assert e.value.code == "download_deadline" and time.monotonic() - start < 3


@pytest.mark.parametrize("behaviour", [Behaviour(chunk=1, delay=10), Behaviour(hang=True)],
                         ids=["slow_loris_read", "no_answer"])
def test_abort_ends_a_blocked_read_within_a_second(srv, tmp_path, behaviour):
    srv.default = behaviour
    ev = threading.Event()
    t, out = fetch_in_thread(lambda: get(srv, tmp_path, cancel=ev))  # default 30 s timeout
    wait_for(lambda: srv.requests)
    time.sleep(0.5)  # let the read block
    asked = time.monotonic()
    ev.set()
    t.join(10)
    assert isinstance(out.get("error"), Aborted)
    assert out["ended"] - asked < 1.5  # "within a second", with room for a busy machine


def test_abort_ends_the_wait_between_attempts(srv, tmp_path):
    srv.default = Behaviour(status=503)
    ev = threading.Event()
    t, out = fetch_in_thread(lambda: get(srv, tmp_path, sleep=time.sleep, cancel=ev,
                                         limits=Limits(backoff=60)))
    wait_for(lambda: srv.requests)
    time.sleep(0.3)
    asked = time.monotonic()
    ev.set()
    t.join(10)
    assert isinstance(out.get("error"), Aborted) and out["ended"] - asked < 1.5


def test_guard_window_on_a_fake_clock():
    now = [100.0]
    g = Guard(lambda: None, timeout=10, min_rate=100, clock=lambda: now[0])
    g.received = 5
    now[0] = 109.9
    assert g.check() is None  # the first window is not over
    g.received = 1000
    now[0] = 110.0
    assert g.check() is None  # 1000 bytes in 10 s: exactly 100 bytes/s
    g.received = 1999
    now[0] = 120.0
    err = g.check()
    assert err is not None and err.code == "download_too_slow" and "999 bytes" in str(err)


def test_min_rate_zero_still_fails_a_stall():
    now = [0.0]
    g = Guard(lambda: None, timeout=5, min_rate=0, clock=lambda: now[0])
    now[0] = 5.0
    err = g.check()
    assert err is not None and "no data for 5 s" in str(err)


# ------------------------------------------------------------------ redirects (defect 9)

def test_a_redirect_on_the_same_host_is_followed(srv, tmp_path):
    srv.files["/old.bin"] = b""
    srv.queue(Behaviour(redirect="/fw.bin", redirect_status=301))
    path = fetch(srv.url("/old.bin"), len(DATA), SHA, tmp_path, max_size=MAX)
    assert path.read_bytes() == DATA and [r.path for r in srv.requests] == ["/old.bin", "/fw.bin"]


@pytest.fixture
def other():
    with FileServer({"/fw.bin": DATA}) as s:
        yield s


def test_a_redirect_to_another_port_is_refused_by_default(srv, other, tmp_path):
    srv.default = Behaviour(redirect=other.url("/fw.bin?sig=SECRET"))
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path)
    assert e.value.code == "redirect_refused" and "allow_redirects" in str(e.value)
    assert "SECRET" not in str(e.value) and other.requests == [] and cache_names(tmp_path) == set()


def test_allow_redirects_any_follows_another_host(srv, other, tmp_path):
    srv.default = Behaviour(redirect=other.url("/fw.bin"))
    assert get(srv, tmp_path, limits=Limits(redirects="any")).read_bytes() == DATA
    assert len(other.requests) == 1


def test_a_redirect_loop_ends_with_too_many_redirects(srv, tmp_path):
    srv.default = Behaviour(redirect="/fw.bin")
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path)
    assert e.value.code == "too_many_redirects" and len(srv.requests) == 6


def test_a_redirect_to_a_url_with_credentials_is_refused(srv, tmp_path):
    srv.default = Behaviour(redirect=f"http://u:hunter2@127.0.0.1:{srv.port}/fw.bin")
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path)
    assert e.value.code == "redirect_refused" and "hunter2" not in str(e.value)


@pytest.mark.parametrize("old,new,ok", [
    ("http://h/a", "http://h:80/b", True),
    ("http://h/a", "https://h/b", True),  # an upgrade to TLS on the default ports
    ("https://h/a", "http://h/b", False),  # a downgrade
    ("http://h/a", "http://h:8080/b", False),
    ("http://H/a", "http://h/b", True),
    ("http://h/a", "http://evil/a", False),
    ("http://h:8080/a", "https://h:8443/b", False),
])
def test_same_origin(old, new, ok):
    assert same_origin(old, new) is ok


# ------------------------------------------------------------------ URLs never show secrets (9)

@pytest.mark.parametrize("url,shown", [
    ("https://h/fw.bin?token=abc&x=1", "https://h/fw.bin?***"),
    ("https://user:pw@h:8443/fw.bin", "https://***@h:8443/fw.bin"),
    ("http://h/fw.bin#frag", "http://h/fw.bin#***"),
    ("http://h/fw.bin", "http://h/fw.bin"),
    ("http://h:99999/x", "<unparsable URL>"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_a_token_in_the_query_is_in_no_message_or_log(srv, tmp_path, caplog):
    caplog.set_level("DEBUG")
    srv.queue(Behaviour(truncate_after=1000), Behaviour(honour_range=False, truncate_after=10))
    srv.default = Behaviour(status=404)
    with pytest.raises(DownloadFailed) as e:
        fetch(srv.url("/fw.bin?token=SECRET"), len(DATA), SHA, tmp_path, max_size=MAX,
              sleep=FakeSleep())
    assert "404" in str(e.value) and "token=***" not in str(e.value) and "?***" in str(e.value)
    assert "SECRET" not in str(e.value) and "SECRET" not in caplog.text


def test_a_bad_url_message_does_not_repeat_the_url(tmp_path):
    with pytest.raises(ImageRejected) as e:
        fetch("http://u:SECRET@h/x", 10, SHA, tmp_path, max_size=MAX)
    assert "SECRET" not in str(e.value)


# ------------------------------------------------------------------ hostile bodies

def test_a_compressed_body_is_refused_never_expanded(srv, tmp_path):
    bomb = gzip.compress(b"\0" * (20 << 20))  # 20 MiB of zeros in about 20 KiB
    srv.default = Behaviour(body=bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(DownloadFailed) as e:
        get(srv, tmp_path)
    assert e.value.code == "content_encoding" and cache_names(tmp_path) == set()
    assert len(srv.requests) == 1


def test_the_wrong_image_is_refused_and_nothing_stays(srv, tmp_path):
    srv.files["/fw.bin"] = bytes(len(DATA))
    with pytest.raises(ImageRejected) as e:
        get(srv, tmp_path)
    assert e.value.code == "sha256_mismatch" and cache_names(tmp_path) == set()


# ------------------------------------------------------------------ the cache limit (defect 5)

def _store(tmp_path: Path) -> JobStore:
    return JobStore(StateStore(tmp_path / "state"), lambda *a: None)


def _manifest(url: str, data: bytes = DATA) -> dict:
    return {"product": "p", "version": "1.0.0", "url": url, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "format": "bin", "address": 0}


def _cut_download(srv: FileServer, cache: Path) -> Path:
    """A download cut at 50 % with no retries left: its .part stays behind."""
    srv.queue(Behaviour(truncate_after=len(DATA) // 2))
    with pytest.raises(DownloadFailed):
        get(srv, cache, limits=Limits(retries=0))
    part = cache / f"{SHA}.part"
    assert part.stat().st_size == len(DATA) // 2
    return part


def test_part_of_an_open_job_stays_and_goes_once_the_job_ended(srv, tmp_path):
    cache, jobs = tmp_path / "cache", _store(tmp_path)
    part = _cut_download(srv, cache)
    job = jobs.save(Job(target="a", status=IN_PROGRESS, phase="download",
                        manifest=_manifest(srv.url("/fw.bin"))))
    policy = Policy(cache_dir=str(cache), cache_max=1)
    tidy_cache(jobs, policy)
    assert part.exists()  # the open job resumes it
    jobs.finish(job, FAILED, {"code": "download_failed", "message": "x"})
    tidy_cache(jobs, policy)
    assert not part.exists()


def test_cache_max_drops_the_oldest_images_but_never_an_open_jobs(srv, tmp_path):
    cache, jobs = tmp_path / "cache", _store(tmp_path)
    images = [DATA[:1000 * (i + 1)] for i in range(3)]
    for i, data in enumerate(images):
        srv.files[f"/{i}.bin"] = data
        path = fetch(srv.url(f"/{i}.bin"), len(data), hashlib.sha256(data).hexdigest(), cache,
                     max_size=MAX)
        os.utime(path, (1000 + i, 1000 + i))
    jobs.save(Job(target="a", manifest=_manifest(srv.url("/0.bin"), images[0])))  # QUEUED
    tidy_cache(jobs, Policy(cache_dir=str(cache), cache_max=4000))
    left = {p.name for p in cache.iterdir()}
    assert left == {hashlib.sha256(images[i]).hexdigest() for i in (0, 2)}  # 1000 + 3000 kept


def test_prune_never_deletes_the_part_a_download_is_writing(srv, tmp_path):
    srv.default = Behaviour(chunk=20_000, delay=0.05)
    part = tmp_path / f"{SHA}.part"
    t, out = fetch_in_thread(lambda: get(srv, tmp_path))
    wait_for(part.exists)
    assert prune_cache(tmp_path, keep=set(), max_bytes=0) == []
    t.join(30)
    assert out["result"].read_bytes() == DATA


def test_a_failed_job_leaves_no_part_file_behind(srv, tmp_path):
    cache, jobs = tmp_path / "cache", _store(tmp_path)
    srv.default = Behaviour(truncate_after=100_000)
    release = parse_manifest(_manifest(srv.url("/fw.bin")))
    job = jobs.save(Job(target="a", manifest=release.to_dict()))
    policy = Policy(cache_dir=str(cache), download_retries=0)
    pipeline = Pipeline(SimpleNamespace(name="a"), job, release, jobs=jobs,  # type: ignore[arg-type]
                        policy=policy, cancel=threading.Event(), stopping=threading.Event())
    end = pipeline.run()
    assert end.status == FAILED and end.error["code"] == "download_failed"
    assert cache_names(cache) == set()


def test_the_agent_tidies_the_cache_when_it_starts(srv, tmp_path):
    cache, jobs = tmp_path / "cache", _store(tmp_path)
    part = _cut_download(srv, cache)
    (cache / "notes.txt").write_text("not ours")
    updater = Updater("gw", [], jobs, Policy(cache_dir=str(cache)))
    updater.start()
    updater.stop()
    assert not part.exists() and cache_names(cache) == {"notes.txt"}


def test_stopping_the_agent_ends_a_stalled_download_within_a_second_and_keeps_the_job(
        srv, tmp_path):
    """What SIGTERM does (service.stop -> Updater.stop) to a job stuck in a slow-loris read."""
    cache, jobs = tmp_path / "cache", _store(tmp_path)
    srv.default = Behaviour(chunk=1, delay=10)
    release = parse_manifest(_manifest(srv.url("/fw.bin")))
    target = FlashTarget("a", "p", SimpleNamespace(link_key="link"))  # type: ignore[arg-type]
    updater = Updater("gw", [target], jobs, Policy(cache_dir=str(cache), allow_unsigned=True))
    jobs.save(Job(target="a", manifest=release.to_dict()))
    updater.start()  # recover() queues the open job
    wait_for(lambda: srv.requests)
    time.sleep(0.5)
    asked = time.monotonic()
    updater.stop(timeout=10)
    assert time.monotonic() - asked < 1.5
    job = jobs.load("a")
    assert job is not None and not job.terminal and job.phase == "download"  # resumed next start
