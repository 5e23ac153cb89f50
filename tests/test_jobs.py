"""Job records and the state directory: atomic replacement, unreadable files, safe names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.ota import jobs
from agent.errors import Stm32OtaError
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


def test_a_refusal_while_a_job_is_open_is_published_but_leaves_the_record(tmp_path: Path) -> None:
    seen: list[tuple[Job, bool]] = []
    jobs = JobStore(StateStore(tmp_path), lambda target, job, retain: seen.append((job, retain)))
    running = jobs.save(Job(target="a", status=IN_PROGRESS, phase="write"))
    jobs.reject("a", Stm32OtaError("busy", code="busy"), to_version="2.0.0", retain=False)
    assert jobs.load("a") == running
    assert seen[-1][0].status == REJECTED and seen[-1][1] is False

