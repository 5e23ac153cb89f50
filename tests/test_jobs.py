"""Job records and the state directory: atomic replacement, unreadable files, safe names;
refusals as notices, their rate limit, and the inbox that keeps room for own commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.ota import jobs
from agent.errors import Stm32OtaError
from agent.mqtt.inbox import Inbox
from agent.ota.ratelimit import RateLimit
from agent.ota.jobs import (CANCELED, IN_PROGRESS, PHASES, REJECTED, SUCCEEDED, Job, JobStore,
                            StateStore, overall_percent, write_json_atomic)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "jobs" / "a.json"
    write_json_atomic(path, {"v": 1})

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(jobs.os, "fsync", crash)  # dies after writing, before the rename
    with pytest.raises(OSError):
        write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_job_round_trips_through_the_store(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    job = Job(target="pump", to_version="1.0.0", manifest={"product": "p"})
    store.save_job(job)
    assert StateStore(tmp_path).load_job("pump") == job
    assert store.load_job("other") is None


def test_unreadable_or_foreign_job_files_are_ignored_not_fatal(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "jobs" / "a.json").write_text("{not json")
    (tmp_path / "jobs" / "b.json").write_text(json.dumps({"target": "b", "future_field": 1}))
    assert store.load_job("a") is None and store.load_job("b") is None


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", "x y"])
def test_state_file_names_cannot_escape_the_state_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        StateStore(tmp_path).save_job(Job(target=name))


def test_advance_stamps_started_and_finished_once() -> None:
    job = Job(target="a")
    assert job.started is None and not job.terminal
    running = job.advance(status=IN_PROGRESS, phase="write")
    assert running.started is not None and running.finished is None
    done = running.advance(status=SUCCEEDED)
    assert done.terminal and done.finished is not None and done.started == running.started
    assert done.advance(status=CANCELED).finished == done.finished


def test_overall_percent_never_goes_backwards_across_phases() -> None:
    seq = []
    for name, lo, hi in PHASES:
        seq += [overall_percent(name), overall_percent(name, 1, 2), overall_percent(name, 5, 5)]
    assert seq == sorted(seq) and seq[0] == 0 and seq[-1] == 100
    assert overall_percent("write", 10, 5) == 75  # more than the total is clamped


def test_the_job_store_saves_each_change_before_it_publishes_it(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    seen: list[tuple[Job, bool]] = []

    def publish(target: str, job: Job, retain: bool) -> None:
        assert state.load_job(target) == job, "published before it was on disk"
        seen.append((job, retain))

    jobs = JobStore(state, publish)
    job = jobs.save(Job(target="a", to_version="1.0.0"))
    done = jobs.succeed(job.advance(status=IN_PROGRESS, phase="start"), "1.0.0", "ab" * 32)
    assert [(j.status, r) for j, r in seen] == [("QUEUED", True), (SUCCEEDED, True)]
    assert (done.phase, done.percent) == ("done", 100)
    assert state.installed_version("a") == "1.0.0"


@pytest.mark.parametrize("code", ["busy", "bad_command", "no_release", "wrong_product"])
def test_a_refusal_while_a_job_is_open_is_published_but_leaves_the_record(tmp_path: Path,
                                                                         code: str) -> None:
    """Issue 9 defect 1: any refusal, not only `busy`, is a notice: file and retained record
    of the running job stay."""
    seen: list[tuple[Job, bool]] = []
    jobs = JobStore(StateStore(tmp_path), lambda target, job, retain: seen.append((job, retain)))
    running = jobs.save(Job(target="a", status=IN_PROGRESS, phase="write"))
    before = (tmp_path / "jobs" / "a.json").stat()
    jobs.reject("a", Stm32OtaError("no", code=code), to_version="2.0.0")
    assert jobs.load("a") == running
    assert (tmp_path / "jobs" / "a.json").stat().st_mtime_ns == before.st_mtime_ns
    assert seen[-1][0].status == REJECTED and seen[-1][1] is False


def test_a_refusal_with_no_job_open_is_retained_but_never_written(tmp_path: Path) -> None:
    seen: list[tuple[Job, bool]] = []
    jobs = JobStore(StateStore(tmp_path), lambda target, job, retain: seen.append((job, retain)))
    done = jobs.save(Job(target="a", status=SUCCEEDED, phase="done"))
    jobs.reject("a", Stm32OtaError("garbage", code="bad_command"), to_version=None)
    jobs.reject("b", Stm32OtaError("garbage", code="bad_command"), to_version=None)
    assert [(j.target, j.status, r) for j, r in seen[1:]] == [("a", REJECTED, True),
                                                               ("b", REJECTED, True)]
    assert jobs.load("a") == done and jobs.load("b") is None


def test_refusals_are_rate_limited_per_origin_topic(tmp_path: Path) -> None:
    now = [0.0]
    seen: list[Job] = []
    jobs = JobStore(StateStore(tmp_path), lambda target, job, retain: seen.append(job),
                    limit=RateLimit(rate=1.0, burst=3, clock=lambda: now[0]))
    err = Stm32OtaError("garbage", code="bad_command")
    results = [jobs.reject("a", err, to_version=None, origin="t/a") for _ in range(10)]
    assert sum(r is not None for r in results) == 3 and len(seen) == 3
    assert jobs.reject("a", err, to_version=None, origin="t/b") is not None  # its own bucket
    now[0] = 2.0  # two tokens back
    assert [jobs.reject("a", err, to_version=None, origin="t/a") is not None
            for _ in range(3)] == [True, True, False]


def test_the_rate_limit_counts_what_it_suppressed() -> None:
    now = [0.0]
    limit = RateLimit(rate=0.5, burst=1, clock=lambda: now[0])
    assert limit.take("x") == 0
    assert [limit.take("x") for _ in range(4)] == [None] * 4
    now[0] = 2.0
    assert limit.take("x") == 4 and limit.take("x") is None


def test_the_inbox_keeps_room_for_own_commands_and_their_order() -> None:
    inbox = Inbox(2)
    assert inbox.put("g1", urgent=False) and inbox.put("g2", urgent=False)
    assert not inbox.put("g3", urgent=False)  # a flood may fill only its share ...
    assert inbox.put("own1", urgent=True) and inbox.put("own2", urgent=True)  # ... not the rest
    assert not inbox.put("own3", urgent=True)  # full
    assert [inbox.get() for _ in range(4)] == ["g1", "g2", "own1", "own2"]  # arrival order
    assert inbox.put("g4", urgent=False)  # taking them made room again
    inbox.close()
    assert inbox.get() is None
