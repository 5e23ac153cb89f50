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
import base64
import dataclasses
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the hostile HTTP server lives with the tests

from agentkit import FLASH_START, AgentKit, Observer  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from httpserver import Behaviour, FileServer  # noqa: E402
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hyp_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mosquitto import CertAuthority, Mosquitto  # noqa: E402

from agent.demo.parts import HOST  # noqa: E402
from agent.errors import Stm32OtaError  # noqa: E402
from agent.mqtt.client import MqttClient  # noqa: E402
from agent.mqtt.tls import TlsOptions  # noqa: E402
from agent.ota.download import Limits, fetch, prune_cache  # noqa: E402
from agent.ota.keys import key_id, load_private_key, verify_manifest  # noqa: E402
from agent.ota.manifest import canonical_bytes, parse_manifest  # noqa: E402
from agent.mqtt.commands import COMMAND_OPS, parse_command  # noqa: E402

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


# ---------------------------------------------------------------------------------- Broker


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll `predicate` until it is truthy or `timeout` passes; its last truthiness."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def broker_flap_job(work: Path, restarts: int, seed: int) -> tuple[int, str]:
    """One install while the broker restarts `restarts` times (the agent reconnected after
    each); returns (restarts done, outcome): "ok" when the job SUCCEEDED byte-exact with one
    terminal event and the retained job says so, else what went wrong."""
    with AgentKit(work) as kit:
        pump = kit.uart_target("pump")
        data = kit.image(48 * 1024, seed)  # the job outlasts the restarts (about 5 s of line)
        m = kit.release("pump-ctrl", f"1.{seed}.0", data)
        svc = kit.start_service()
        pump.sim.realtime, pump.sim.baud = True, 115200  # real line time: the job lasts seconds
        kit.command("pump", {"op": "install", "manifest": m})
        job_id = kit.wait_job("pump", "IN_PROGRESS")["job_id"]
        done = 0
        while done < restarts and not svc.store.load_job("pump").terminal:
            kit.broker.restart()
            done += 1
            if not _wait(svc.client.connected.is_set, 10):
                return done, "the agent did not reconnect"
        pump.sim.realtime = False
        if not _wait(lambda: svc.store.load_job("pump").terminal, 60):
            return done, "no terminal status"
        final = svc.store.load_job("pump")
        _wait(lambda: kit.obs._client.is_connected(), 10)
        topic = kit.topics.job("pump")
        kit.obs.wait_topic(topic, lambda msg: bool(msg.payload)
                           and msg.json().get("status") == final.status)
        time.sleep(0.3)  # a duplicate terminal event would follow at once
        ends = [e["status"] for e in kit.events("pump")
                if e.get("job_id") == job_id and e["status"] in ("SUCCEEDED", "FAILED",
                                                                 "REJECTED", "CANCELED")]
        retained = kit.retained(topic).json()
        if final.status != "SUCCEEDED" or pump.flash_bytes(FLASH_START, len(data)) != data:
            return done, f"{final.status} {final.error}"
        if ends != ["SUCCEEDED"] or retained["job_id"] != job_id:
            return done, f"terminal events {ends}, retained {retained['status']}"
        return done, "ok"


def tls_never_downgrades(work: Path, case: str, wait: float) -> str:
    """An agent's MQTT client whose TLS check fails must never connect, nor speak plain MQTT
    to a plain listener on the port it was given; "ok" when it did neither."""
    other = CertAuthority(work, "someone else")
    plain = case == "plain listener behind the TLS port"
    broker = Mosquitto() if plain else Mosquitto(
        tls=True, server_names=("broker.example",) if case == "certificate for another name"
        else (HOST,))
    with broker:
        ca = other.cert if case == "untrusted CA" else (broker.ca or other.cert)
        client_id = f"rel-{case.split()[0]}"
        c = MqttClient(broker.host, broker.port, client_id=client_id, tls=TlsOptions(ca=str(ca)),
                       reconnect_min=0.1, reconnect_max=0.2)
        c.start()
        try:
            connected = c.wait_connected(wait)
        finally:
            c.stop()
        if connected:
            return "connected"
        return "spoke plain MQTT" if client_id in broker.log() else "ok"


TLS_CASES = ("untrusted CA", "certificate for another name", "plain listener behind the TLS port")


@category("BROKER")
def broker_category(quick: bool) -> Row:
    """Broker restarts during installs; TLS failures that must never connect or go plain."""
    row = Row("Broker", flash_changed=0)
    jobs, restarts = (1, 5) if quick else (3, 6)
    flaps = 0
    with tempfile.TemporaryDirectory(prefix="stm32ota-rel-") as tmp, LogWatch() as logs:
        cases = [("flap", i) for i in range(jobs)] + [("tls", c) for c in TLS_CASES]
        for i, (kind, arg) in enumerate(cases):
            work = Path(tmp) / f"case{i}"
            work.mkdir()
            row.tried += 1
            row.expected += 1
            try:
                if kind == "flap":
                    n, outcome = broker_flap_job(work, restarts, 10 + int(arg))
                    flaps += n
                    outcome = outcome if n >= restarts else f"only {n} restarts: {outcome}"
                else:
                    outcome = tls_never_downgrades(work, str(arg), 1.5 if quick else 4.0)
            except Exception:  # noqa: BLE001 - a traceback is a figure of the proof
                row.tracebacks += 1
                row.failures.append(f"{kind} {arg}: {traceback.format_exc(limit=4)}")
                continue
            row.outside_bytes += _outside_kit(work)
            if outcome == "ok":
                row.clean += 1
                row.delivered += 1
            else:
                row.failures.append(f"{kind} {arg}: {outcome}")
        row.tracebacks += logs.tracebacks
    row.figures["restarts survived"] = f"{flaps}"
    row.figures["TLS refusals"] = f"{len(TLS_CASES)}"
    return row


def _outside_kit(work: Path) -> int:
    """Bytes an agent wrote in its kit folder outside state/ and cache/: the kit's own files
    (config, keys, the log of a subprocess agent, certificates) are not the agent's writing."""
    own = {"config.yaml", "agent.log", "release.key", "release.pub"}
    total = 0
    for dirpath, _dirs, files in os.walk(work):
        here = Path(dirpath)
        if here.is_relative_to(work / "state") or here.is_relative_to(work / "cache"):
            continue
        total += sum((here / f).stat().st_size for f in files
                     if f not in own and not f.endswith((".pem", ".crt", ".key")))
    return total


# ---------------------------------------------------------------------- Hostile MQTT input

MANIFEST_KEYS = ("product", "version", "url", "size", "sha256", "format", "address", "chip",
                 "title", "release_summary", "release_url", "min_version", "expires", "rollout",
                 "signature")


def _json_values() -> "st.SearchStrategy":
    scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
               | st.text(max_size=40))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def _manifests() -> "st.SearchStrategy":
    """Manifest-shaped dicts: the real keys (and some others) with any values."""
    keys = st.sampled_from(MANIFEST_KEYS) | st.text(max_size=8)
    return st.dictionaries(keys, _json_values(), max_size=len(MANIFEST_KEYS))


def _dumps(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def _payloads() -> "st.SearchStrategy":
    return (st.binary(max_size=300)
            | st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))
            | _json_values().map(_dumps)
            | st.builds(lambda op, m: _dumps({"op": op, "manifest": m}),
                        st.sampled_from(["install", "abort", "check", "INSTALL", ""]) | _json_values(),
                        _manifests() | _json_values())
            | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n))


def hypothesis_run(cases: int) -> tuple[int, int, list[str]]:
    """Property: each parser returns a well-formed result or raises a reason-coded rejection;
    returns (cases tried, rejected with a reason code, failures)."""
    key = Ed25519PrivateKey.generate()
    tried = [0, 0]
    failures: list[str] = []

    def check(fn: Callable[[], object]) -> None:
        tried[0] += 1
        try:
            fn()
        except Stm32OtaError as err:
            if isinstance(err.code, str) and err.code and str(err):
                tried[1] += 1
            else:
                failures.append(f"rejection without a code or message: {err!r}")
        except Exception:  # noqa: BLE001 - a traceback is a figure of the proof
            failures.append(traceback.format_exc(limit=3))

    def command(payload: bytes) -> None:
        cmd = parse_command(payload)
        assert cmd["op"] in COMMAND_OPS, cmd

    def manifest(raw: object) -> None:
        verify_manifest(parse_manifest(raw), (key.public_key(),))

    settings = hyp_settings(max_examples=cases, deadline=None, database=None,
                            derandomize=True, suppress_health_check=[
                                HealthCheck.too_slow, HealthCheck.data_too_large,
                                HealthCheck.filter_too_much])

    @settings
    @given(_payloads())
    def commands(payload: bytes) -> None:
        check(lambda: command(payload))

    @settings
    @given(_manifests() | _payloads())
    def manifests(raw: object) -> None:
        check(lambda: manifest(raw))

    commands()
    manifests()
    return tried[0], tried[1], failures


def sign_anything(fields: dict, key: Ed25519PrivateKey) -> dict:
    """A valid signature over any fields, even ones `sign` refuses: a hostile signer's work."""
    body = {k: v for k, v in fields.items() if k != "signature"}
    sig = key.sign(canonical_bytes(body))
    return {**body, "signature": {"key_id": key_id(key.public_key()),
                                  "ed25519": base64.b64encode(sig).decode()}}


def hostile_payloads(kit: AgentKit, n: int, seed: int) -> Iterator[tuple[str, bytes, bool]]:
    """n hostile (topic, payload, retain) messages of every kind the issue lists."""
    rnd = random.Random(seed)
    key = load_private_key(kit.key)
    t = kit.topics
    own, fleet, release = t.cmd("pump"), t.fleet_cmd, t.release("pump-ctrl")
    elsewhere = [f"stm32ota/{kit.agent_id}/../cmd", "stm32ota/release/..", "stm32ota/x/y/z/cmd"]
    good = kit.release("pump-ctrl", "9.9.9", kit.image(1024, seed=99), path="/never.bin")
    urls = ["file:///etc/passwd", "http://user:pw@127.0.0.1/x.bin", "ftp://127.0.0.1/x.bin",
            "http://[::1", "javascript:alert(1)", "http://127.0.0.1:1/../../etc/passwd",
            "http://127.0.0.1/\u202egnp.bin", "http://%00/x", "http://" + "a" * 3000]
    names = ["../pump-ctrl", "pump-ctrl/#", "+", "pump\u200bctrl", "ｐｕｍｐ", "#", "../../etc"]
    makers: list[Callable[[], bytes]] = [
        lambda: rnd.randbytes(rnd.randint(0, 400)),
        lambda: (b"[" * rnd.randint(900, 20000))[:30000],
        lambda: b'{"op": "install", "manifest": ' + b'{"a": ' * rnd.randint(500, 4000),
        lambda: b"x" * rnd.randint(32 * 1024, 70 * 1024),  # past the 32 KiB limit
        lambda: _dumps({"op": rnd.choice([1, None, [], {}, True, "install\x00", 1e308])}),
        lambda: _dumps({"op": "install", "manifest": {k: rnd.choice([None, -1, 2**70, [], "x"])
                                                      for k in MANIFEST_KEYS}}),
        lambda: b'{"op": "install", "op": "abort"}',
        lambda: b'{"op": "install", "manifest": {"size": NaN, "address": Infinity}}',
        lambda: rnd.choice(["ins\u200btall", "\ufeffinstall", "ｉｎｓｔａｌｌ", "install\u202e",
                            "abort\u0000", "ch\u0435ck"]).encode(),
        lambda: rnd.choice([b"\xc0\xafinstall", b"\xed\xa0\x80", b'"\\ud800"', b"\xff\xfe"]),
        lambda: _dumps({"op": "install", "manifest": {**good, rnd.choice(
            ["version", "size", "sha256", "address"]): rnd.choice(["9.9.10", 1, "0" * 64, 0])}}),
        lambda: _dumps({"op": "install", "manifest": sign_anything({**good, "url": rnd.choice(urls)}, key)}),
        lambda: _dumps({"op": "install", "manifest": sign_anything(
            {**good, "product": rnd.choice(names)}, key)}),
        lambda: _dumps(sign_anything({**good, "version": rnd.choice(names + ["1.0", "v1", ""])},
                                     key)),
    ]
    for i in range(n):
        payload = rnd.choice(makers)()
        where = rnd.random()
        topic = own if where < 0.5 else fleet if where < 0.75 else release if where < 0.9 \
            else rnd.choice(elsewhere)
        yield topic, payload, rnd.random() < 0.02


def live_fuzz(work: Path, n: int, every: int) -> dict[str, int]:
    """Fuzz a running agent (a subprocess) with n payloads, asking `check` every `every`."""
    with AgentKit(work) as kit:
        pump = kit.uart_target("pump", pins="none")
        before = hashlib.sha256(bytes(pump.sim.flash)).hexdigest()
        kit.start_process()
        sender = Observer(kit.broker.host, kit.broker.port, topics=("unused/x",))
        asked = answered = retained = 0
        try:
            for i, (topic, payload, retain) in enumerate(hostile_payloads(kit, n, seed=n)):
                sender.publish(topic, payload, retain=retain)
                retained += retain
                if retain:
                    sender.publish(topic, b"", retain=True)  # leave nothing behind
                if (i + 1) % every == 0:
                    asked += 1
                    mark = kit.obs.mark()
                    kit.command("pump", "check")
                    try:
                        kit.obs.wait_topic(kit.topics.state("pump"), after=mark, timeout=30)
                        answered += 1
                    except TimeoutError:
                        pass
        finally:
            sender.close()
            alive = kit.proc is not None and kit.proc.poll() is None
            kit.stop_process()
        log_text = kit.agent_log()
        reported = sum(1 for e in kit.events("pump") if e.get("status") == "REJECTED")
        jobs = [json.loads(p.read_text()) for p in (work / "state" / "jobs").glob("*.json")]
        return {"asked": asked, "answered": answered, "alive": int(alive),
                "tracebacks": log_text.count("Traceback"),
                "drops": log_text.count("inbox full"), "retained": retained,
                "refusals on disk": sum(j.get("status") == "REJECTED" for j in jobs),
                "flash changed": int(hashlib.sha256(bytes(pump.sim.flash)).hexdigest() != before),
                "outside": _outside_kit(work), "reported": reported,
                "rejected in log": log_text.count("rejected")}


@category("MQTT")
def hostile_mqtt_category(quick: bool) -> Row:
    """Hypothesis over the command and manifest parsers; a live fuzz of a running agent."""
    row = Row("Hostile MQTT input", flash_changed=0)
    cases, payloads = (300, 600) if quick else (5000, 10000)
    tried, rejected, failures = hypothesis_run(cases)
    row.tried += tried
    row.clean += tried - len(failures)  # accepted as valid, or rejected with a reason code
    row.tracebacks += len(failures)
    row.failures += failures[:5]
    with tempfile.TemporaryDirectory(prefix="stm32ota-rel-") as tmp:
        f = live_fuzz(Path(tmp), payloads, 100 if quick else 250)
    row.tried += payloads
    row.clean += payloads - f["drops"] if f["tracebacks"] == 0 else 0
    row.tracebacks += f["tracebacks"]
    row.expected, row.delivered = f["asked"], f["answered"]
    row.outside_bytes += f["outside"]
    row.flash_changed = f["flash changed"]
    if not f["alive"] or f["refusals on disk"] or f["drops"]:
        row.failures.append(f"live fuzz: {f}")
        row.clean = min(row.clean, row.tried - 1)
    row.figures["parser cases"] = f"{tried} ({rejected} rejected)"
    row.figures["live payloads"] = f"{payloads}"
    row.figures["check answered"] = f"{f['answered']}/{f['asked']}"
    row.figures["refusals reported (rate-limited)"] = f"{f['reported']}"
    row.figures["log lines 'rejected'"] = f"{f['rejected in log']}"
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
