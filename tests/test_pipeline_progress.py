"""The job's progress figure as the pipeline reports it (DESIGN.md "Progress"): every phase
change at once; inside a phase at most every progress_interval and only after another 10%."""

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


def test_progress_inside_a_phase_waits_for_the_interval_and_another_ten_percent() -> None:
    now, seen = [1000.0], []
    p = _pipeline(now, seen)  # Policy(): progress_interval 5 s
    calls = [  # (time, phase, done, total)
        (1000.0, "download", 10, 100),   # 2%: not 10% more than the 0% shown
        (1002.0, "download", 60, 100),   # within 5 s of the last look: not even looked at
        (1005.1, "download", 60, 100),   # 12%, 5 s later: published
        (1010.2, "download", 70, 100),   # 14%: not 10% more than 12%
        (1010.3, "download", 100, 100),  # end of the phase, 20%: the next phase says it
        (1011.0, "write", 0, 100),       # phase change: always, at once (retained)
        (1011.5, "write", 50, 100),      # 0.5 s after the phase change: too soon
        (1016.1, "write", 50, 100),      # 55%, 5 s later: published
        (1016.2, "read", 1, 10),         # read-back for verify is not a phase of the job
    ]
    for t, phase, done, total in calls:
        now[0] = t
        p.progress(phase, done, total)
    assert seen == [(1005.1, "download", overall_percent("download", 60, 100)),
                    (1011.0, "write", overall_percent("write")),
                    (1016.1, "write", overall_percent("write", 50, 100))]
