"""Job records and the state directory: atomic replacement, unreadable files, safe names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.ota import jobs
from agent.ota.jobs import (CANCELED, IN_PROGRESS, PHASES, QUEUED, SUCCEEDED, Job, StateStore,
                        overall_percent, write_json_atomic)


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


def test_public_payload_hides_the_manifest() -> None:
    doc = Job(target="a", status=QUEUED, manifest={"secret": 1}).public()
    assert "manifest" not in doc and doc["status"] == QUEUED


def test_overall_percent_never_goes_backwards_across_phases() -> None:
    seq = []
    for name, lo, hi in PHASES:
        seq += [overall_percent(name), overall_percent(name, 1, 2), overall_percent(name, 5, 5)]
    assert seq == sorted(seq) and seq[0] == 0 and seq[-1] == 100
    assert overall_percent("write", 10, 5) == 75  # more than the total is clamped
