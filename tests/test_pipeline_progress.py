"""The job's progress figure as the pipeline reports it (DESIGN.md "Progress"): every phase
change, at most about once a second inside a phase, and the end of each phase always."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from agent.ota.jobs import IN_PROGRESS, Job, overall_percent
from agent.ota.pipeline import Pipeline, Policy


def _pipeline(now: list[float], seen: list[tuple[float, str, int]]) -> Pipeline:
    """A Pipeline whose job store only records what would be published, on a fake clock."""
    def record(job: Job) -> Job:
        seen.append((now[0], job.phase, job.percent))
        return job

    jobs = SimpleNamespace(save=record, report=record)
    job = Job(target="a", status=IN_PROGRESS, phase="download", percent=0)
    return Pipeline(SimpleNamespace(name="a"), job, None, jobs=jobs,  # type: ignore[arg-type]
                    policy=Policy(), cancel=threading.Event(), stopping=threading.Event(),
                    clock=lambda: now[0])


def test_progress_inside_a_phase_is_at_most_once_a_second_after_any_report() -> None:
    now, seen = [1000.0], []
    p = _pipeline(now, seen)
    calls = [  # (time, phase, done, total)
        (1000.0, "download", 10, 100),   # 1 s since nothing: reported
        (1000.5, "download", 20, 100),   # too soon
        (1001.1, "download", 30, 100),   # a second later: reported
        (1001.2, "download", 100, 100),  # end of the phase: always
        (1005.0, "erase", 0, 10),        # phase change (after the bootloader entry): always
        (1005.1, "erase", 5, 10),        # 0.1 s after the phase change: too soon
        (1006.0, "erase", 6, 10),        # a second after the phase change: reported
        (1006.1, "read", 1, 10),         # read-back for verify is not a phase of the job
    ]
    for t, phase, done, total in calls:
        now[0] = t
        p.progress(phase, done, total)
    assert seen == [(1000.0, "download", overall_percent("download", 10, 100)),
                    (1001.1, "download", overall_percent("download", 30, 100)),
                    (1001.2, "download", overall_percent("download", 1, 1)),
                    (1005.0, "erase", overall_percent("erase")),
                    (1006.0, "erase", overall_percent("erase", 6, 10))]
