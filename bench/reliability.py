#!/usr/bin/env python3
"""The reliability proof: hostile conditions by category, each case ending in one clean outcome.

    python bench/reliability.py                 # every category, full size
    python bench/reliability.py --quick         # the short variant (tests/test_reliability.py)
    python bench/reliability.py --only http     # one category (repeatable)

Prints one table, a row per category: cases tried, handled cleanly, tracebacks, terminal
outcomes expected / delivered, bytes written outside the state and cache directories, flash
changed without a signed install ("n/a" where a category never reaches a chip), and figures
of its own. Exits 1 if any case was not handled cleanly.

A category is a function `(quick: bool) -> Row` registered with `@category("name")`; add one
by writing it below (or in a module imported here) and it joins the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the hostile HTTP server lives with the tests

from httpserver import Behaviour, FileServer  # noqa: E402

from agent.errors import Stm32OtaError  # noqa: E402
from agent.ota.download import Limits, fetch, prune_cache  # noqa: E402

SECRET = "s3cr3t-token"  # put in every download URL: it must appear in no message or log line


@dataclasses.dataclass
class Row:
    """The figures of one category."""

    category: str
    tried: int = 0
    clean: int = 0
    tracebacks: int = 0
    expected: int = 0  # terminal outcomes expected (one per case)
    delivered: int = 0  # cases that ended in exactly the one expected outcome
    outside_bytes: int = 0  # written outside the state and cache directories
    flash_changed: Optional[int] = None  # flash changed without a signed install; None: n/a
    figures: dict[str, str] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every case clean, no traceback, nothing written outside, no unsigned flash change."""
        return (self.clean == self.tried and self.tracebacks == 0 and self.outside_bytes == 0
                and self.delivered == self.expected and not self.flash_changed)


CATEGORIES: dict[str, Callable[[bool], Row]] = {}


def category(name: str) -> Callable[[Callable[[bool], Row]], Callable[[bool], Row]]:
    """Register a category of the proof under `name`."""
    def register(fn: Callable[[bool], Row]) -> Callable[[bool], Row]:
        CATEGORIES[name] = fn
        return fn
    return register


class LogWatch(logging.Handler):
    """Collects every log line of the agent while a category runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        if record.exc_info:
            self.tracebacks += 1

    def __enter__(self) -> "LogWatch":
        logger = logging.getLogger("agent")
        logger.addHandler(self)
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("agent")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def bytes_outside(root: Path, allowed: Path) -> int:
    """Total size of files under `root` that are not under `allowed`."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        if Path(dirpath).is_relative_to(allowed):
            continue
        total += sum((Path(dirpath) / f).stat().st_size for f in files)
    return total


# ------------------------------------------------------------------------------------ HTTP

DATA = bytes((i * 7 + i // 251) & 0xFF for i in range(200_000))
SHA = hashlib.sha256(DATA).hexdigest()


@dataclasses.dataclass(frozen=True)
class HttpCase:
    """One hostile server and the one outcome the download must end in."""

    name: str
    behaviours: tuple[Behaviour, ...]  # for the first requests; then `default`
    expect: str  # "ok" (byte-exact in the cache) or the reason code
    default: Behaviour = dataclasses.field(default_factory=Behaviour)
    limits: Limits = Limits()
    path: str = "/fw.bin"
    abort_after: Optional[float] = None  # abort this long after the first request


def http_cases(quick: bool) -> list[HttpCase]:
    """The HTTP category's cases; the full run cuts at every 10 % and repeats them."""
    fast = Limits(timeout=0.3, min_rate=2000, retries=1, backoff=0.01, deadline=20)
    resume = dataclasses.replace(fast, retries=3)  # a lie about the range costs one attempt
    cuts = (10, 50, 99) if quick else tuple(range(10, 100, 10)) + (99,)
    cases = [HttpCase(f"cut at {p} %", (Behaviour(truncate_after=len(DATA) * p // 100),), "ok",
                      limits=resume) for p in cuts]
    cases += [
        HttpCase("ignores Range", (Behaviour(truncate_after=len(DATA) // 2),
                                   Behaviour(honour_range=False)), "ok", limits=resume),
        HttpCase("wrong Content-Range", (Behaviour(truncate_after=len(DATA) // 2),
                                         Behaviour(content_range_start=0)), "ok", limits=resume),
        HttpCase("slow-loris", (), "download_too_slow", Behaviour(chunk=1, delay=0.05),
                 limits=fast),
        HttpCase("never answers", (), "download_too_slow", Behaviour(hang=True), limits=fast),
        HttpCase("endless but fast enough", (), "download_deadline",
                 Behaviour(chunk=1000, delay=0.05), Limits(deadline=0.8, min_rate=0)),
        HttpCase("wrong image", (), "sha256_mismatch", Behaviour(body=bytes(len(DATA))),
                 limits=fast),
        HttpCase("longer than the manifest", (), "too_large", Behaviour(extra=b"x" * 100),
                 limits=fast),
        HttpCase("gzip bomb", (), "content_encoding", Behaviour(
            body=_gzip_bomb(), headers={"Content-Encoding": "gzip"}), limits=fast),
        HttpCase("redirect loop", (), "too_many_redirects", Behaviour(redirect="/fw.bin"),
                 limits=fast),
        HttpCase("redirect to another port", (), "redirect_refused",
                 Behaviour(redirect="http://127.0.0.1:9/fw.bin"), limits=fast),
        HttpCase("redirect on the same host", (Behaviour(redirect="/fw.bin"),), "ok",
                 limits=fast, path="/old.bin"),
        HttpCase("404", (), "download_failed", Behaviour(status=404), limits=fast),
        HttpCase("500 forever", (), "download_failed", Behaviour(status=500), limits=fast),
        HttpCase("abort in a slow-loris read", (), "aborted", Behaviour(chunk=1, delay=10),
                 abort_after=0.3),
        HttpCase("abort while no answer comes", (), "aborted", Behaviour(hang=True),
                 abort_after=0.3),
    ]
    return cases if quick else cases * 3


def _gzip_bomb() -> bytes:
    import gzip
    return gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MiB of zeros in ~64 KiB


def run_http_case(case: HttpCase, work: Path) -> tuple[str, Optional[float]]:
    """Run one case in `work`; returns its outcome ("ok" or a code) and the abort latency."""
    cache = work / "cache"
    cancel = threading.Event()
    asked: list[float] = []
    with FileServer({"/fw.bin": DATA, "/old.bin": b""}) as srv:
        srv.queue(*case.behaviours)
        srv.default = case.default
        if case.abort_after is not None:
            def abort() -> None:
                while not srv.requests:
                    time.sleep(0.01)
                time.sleep(case.abort_after or 0)
                asked.append(time.monotonic())
                cancel.set()
            threading.Thread(target=abort, daemon=True).start()
        try:
            path = fetch(srv.url(f"{case.path}?token={SECRET}"), len(DATA), SHA, cache,
                         max_size=1 << 20, limits=case.limits, cancel=cancel)
            outcome = "ok" if path.read_bytes() == DATA else "corrupt"
        except Stm32OtaError as err:
            if SECRET in str(err):
                raise AssertionError(f"the token shows in: {err}") from None
            outcome = err.code
    latency = time.monotonic() - asked[0] if asked else None
    prune_cache(cache, keep=set(), max_bytes=1 << 30)  # what the agent does when the job ends
    left = {p.name for p in cache.iterdir()} if cache.exists() else set()
    if left - {SHA}:
        outcome = f"{outcome}, left {sorted(left - {SHA})}"
    return outcome, latency


@category("HTTP")
def http_category(quick: bool) -> Row:
    """Hostile servers on 127.0.0.1: cuts, Range lies, stalls, bombs, redirects, aborts."""
    row = Row("HTTP")
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="stm32ota-rel-") as tmp, LogWatch() as logs:
        for i, case in enumerate(http_cases(quick)):
            work = Path(tmp) / f"case{i}"
            work.mkdir()
            row.tried += 1
            row.expected += 1
            try:
                outcome, latency = run_http_case(case, work)
            except Exception:  # noqa: BLE001 - a traceback is a figure of the proof
                row.tracebacks += 1
                row.failures.append(f"{case.name}: {traceback.format_exc(limit=3)}")
                continue
            row.outside_bytes += bytes_outside(work, work / "cache")
            if latency is not None:
                latencies.append(latency)
            if outcome == case.expect:
                row.clean += 1
                row.delivered += 1
            else:
                row.failures.append(f"{case.name}: expected {case.expect}, got {outcome}")
        row.tracebacks += logs.tracebacks
        leaks = [line for line in logs.lines if SECRET in line]
        if leaks:
            row.failures.append(f"token in {len(leaks)} log lines, e.g. {leaks[0]}")
            row.clean -= min(row.clean, len(leaks))
    if latencies:
        row.figures["abort latency max"] = f"{max(latencies):.2f} s"
    return row


# ------------------------------------------------------------- categories in their own modules

# They import `category` and `Row` from here: make that this module even when it runs as a
# script, so they register into this CATEGORIES and not a second copy.
sys.modules.setdefault("reliability", sys.modules[__name__])
import reliability_config  # noqa: E402,F401
import reliability_kill  # noqa: E402,F401
import reliability_power  # noqa: E402,F401

# ------------------------------------------------------------------------------------ table

COLUMNS = ("category", "cases", "clean", "tracebacks", "outcomes exp/got", "written outside",
           "flash changed", "figures")


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width table."""
    cells = [COLUMNS] + [(
        r.category, str(r.tried), str(r.clean), str(r.tracebacks), f"{r.expected}/{r.delivered}",
        f"{r.outside_bytes} B", "n/a" if r.flash_changed is None else str(r.flash_changed),
        ", ".join(f"{k} {v}" for k, v in r.figures.items()) or "-") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in cells)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the chosen categories and print the table; 1 if any case was not clean."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the short variant the suite runs")
    ap.add_argument("--only", action="append", metavar="CATEGORY",
                    choices=sorted(CATEGORIES), type=str.upper, help="run only this category")
    args = ap.parse_args(argv)
    rows = []
    for name in args.only or CATEGORIES:
        start = time.monotonic()
        row = CATEGORIES[name](args.quick)
        row.figures["time"] = f"{time.monotonic() - start:.1f} s"
        rows.append(row)
    print(table(rows))
    for row in rows:
        for failure in row.failures:
            print(f"{row.category}: {failure}", file=sys.stderr)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
