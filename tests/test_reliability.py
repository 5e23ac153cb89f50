"""The short variant of bench/reliability.py runs in the suite: every case handled cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_http_category_handles_every_case_cleanly() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "reliability.py"), "--quick",
                        "--only", "http"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    header, row = r.stdout.splitlines()[:2]
    assert header.split()[:4] == ["category", "cases", "clean", "tracebacks"]
    name, tried, clean, tracebacks = row.split()[:4]
    assert name == "HTTP" and int(tried) >= 18 and clean == tried and tracebacks == "0"
