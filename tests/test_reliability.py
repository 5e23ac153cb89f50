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


def _quick(category: str) -> list[str]:
    """The category's quick row: name, tried, clean, tracebacks, exp/got (asserts exit 0)."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "reliability.py"), "--quick",
                        "--only", category], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()[1].split()[:5]


def test_quick_config_category_refuses_every_broken_file_in_both_commands() -> None:
    name, tried, clean, tracebacks, outcomes = _quick("config")
    expected, delivered = outcomes.split("/")
    assert name == "Config" and int(tried) >= 12 and clean == tried and tracebacks == "0"
    assert int(expected) == 2 * int(tried) and delivered == expected


def test_quick_power_loss_category_recovers_from_every_cut() -> None:
    name, _loss, tried, clean, tracebacks = _quick("power")
    assert name == "Power" and int(tried) >= 20 and clean == tried and tracebacks == "0"


def test_quick_kill_category_recovers_every_killed_install() -> None:
    name, _anywhere, tried, clean, tracebacks = _quick("kill")
    assert name == "Kill" and int(tried) >= 4 and clean == tried and tracebacks == "0"


def test_quick_broker_and_hostile_mqtt_categories_handle_every_case_cleanly() -> None:
    """Five broker restarts in one job, three TLS refusals, 600 parser cases and 600 hostile
    payloads against a running agent: every one clean, no traceback, check answered."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "reliability.py"), "--quick",
                        "--only", "broker", "--only", "mqtt"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split("  ")[0]: line.split() for line in r.stdout.splitlines()[1:3]}
    broker, mqtt = rows["Broker"], rows["Hostile MQTT input"]
    assert int(broker[1]) >= 4 and broker[2] == broker[1] and broker[3] == "0"
    assert "restarts survived 5," in r.stdout
    assert int(mqtt[3]) >= 1200 and mqtt[4] == mqtt[3] and mqtt[5] == "0"
    assert "check answered 6/6" in r.stdout
