"""The state store survives a power loss at any disk operation of an install (rule 6)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from powerloss import PowerLossDisk, count_ops, materialize, snapshot, trial

from agent.ota.jobs import StateStore, write_json_atomic


def test_without_fsync_a_rename_can_leave_an_empty_file(tmp_path: Path) -> None:
    """The model is strict enough to catch the classic bug (guards the test below)."""
    class Careless(PowerLossDisk):
        def fsync(self, fd: int) -> None:  # a writer that forgets fsync
            self._tick()

    root = tmp_path / "s"
    root.mkdir()
    disk = Careless()
    write_json_atomic(root / "x.json", {"a": 1}, disk)
    files = disk.after_power_loss({}, random.Random(0))
    assert files == {str(root / "x.json"): b""}


def test_every_cut_point_leaves_a_state_that_loads_and_recovers(tmp_path: Path) -> None:
    total = count_ops(tmp_path)
    assert total >= 9 * 5, "each of the install's saves is several operations"
    rng = random.Random(9)
    failures = []
    for cut in range(total + 1):
        for seed in (rng.randrange(1 << 30) for _ in range(3)):
            work = tmp_path / f"cut{cut}-{seed}"
            failures += [f"cut at {cut} (seed {seed}): {p}" for p in trial(work, cut, seed)]
    assert not failures, failures[:5]


def test_recovery_removes_temporary_files_a_cut_left(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = StateStore(root)
    disk = PowerLossDisk(cut_at=2)  # after create and write: the temporary file is there
    with pytest.raises(BaseException):
        write_json_atomic(root / "jobs" / "pump.json", {"a": 1}, disk)
    assert list((root / "jobs").glob(".*"))
    store.sweep_temps()
    assert not list((root / "jobs").iterdir())
    materialize(snapshot(root), root, tmp_path / "copy")


def test_a_writer_that_skips_the_folder_fsync_is_caught(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the test above: without the directory fsync, cuts lose acknowledged saves."""
    monkeypatch.setattr(PowerLossDisk, "fsync_dir", lambda self, folder: self._tick())
    total = count_ops(tmp_path)
    bad = [cut for cut in range(total + 1) if trial(tmp_path / f"c{cut}", cut, cut)]
    assert len(bad) > total // 4, bad
