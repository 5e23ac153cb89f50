"""fetch() against a real HTTP server on loopback: resume, retries, caps, hashing, cache,
time limits, redirects, and URLs that never show their secrets."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from pathlib import Path

import pytest
from httpserver import Behaviour, FileServer

from agent.errors import Aborted, DownloadFailed, ImageRejected
from agent.ota.download import Limits, fetch, prune_cache
from agent.ota.manifest import parse_manifest

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
