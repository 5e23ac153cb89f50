"""The README's "Your first update over MQTT, on one machine" runs as printed.

The block is taken from README.md and run by bash line for line, in an empty folder, with only
its two port numbers changed to free ones (the README's 1883 is this test's own mosquitto, its
8000 a free port for the web server), so a newcomer who pastes it gets what the README shows:
the update installed and the fleet view's table.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TITLE = "## Your first update over MQTT, on one machine"


def section() -> str:
    return README.split(TITLE, 1)[1].split("\n## ", 1)[0]


def code_blocks(text: str) -> list[str]:
    """The indented code blocks of a section, dedented, in order."""
    blocks, current = [], []
    for line in text.splitlines() + ["end"]:
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line[4:])
        elif current:
            blocks.append("\n".join(current).strip("\n") + "\n")
            current = []
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def normalised(table: str) -> list[list[str]]:
    return [line.split() for line in table.strip().splitlines()]


def test_the_walkthrough_installs_the_release_and_the_fleet_view_shows_it(tmp_path: Path) -> None:
    script, shown = code_blocks(section())[:2]
    assert "1883" in script and "8000" in script and "stm32ota fleet" in script
    with Mosquitto() as broker:
        script = script.replace("1883", str(broker.port)).replace("8000", str(free_port()))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        (tmp_path / "walkthrough.sh").write_text(script, encoding="utf-8")
        # files, not pipes: the script's background processes must not keep the test waiting
        with open(tmp_path / "out", "w") as out_f, open(tmp_path / "err", "w") as err_f:
            proc = subprocess.Popen(["bash", "-e", "walkthrough.sh"], cwd=tmp_path, env=env,
                                    stdout=out_f, stderr=err_f, start_new_session=True)
            try:
                proc.wait(timeout=240)
            except subprocess.TimeoutExpired:
                pass  # the output below says where it stopped
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # anything the script's `kill` missed
                except ProcessLookupError:
                    pass
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert proc.returncode == 0, f"rc {proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-6000:]}"
    assert "report 1.0.0: gw-01/pump" in out
    table = out[out.index("agent  target"):]
    assert normalised(table)[:2] == normalised(shown), table
    # the agent really downloaded, verified and flashed: its cache holds the signed image
    image = (tmp_path / "fw" / "pump-1.0.0.bin").read_bytes()
    assert [p.read_bytes() for p in (tmp_path / "cache").iterdir()] == [image]


def test_the_block_reader_finds_the_commands_and_the_table() -> None:
    blocks = code_blocks("intro\n\n    a &\n    b\n\n    c\n\ntext\n\n    table\n")
    assert blocks == ["a &\nb\n\nc\n", "table\n"]
    assert re.search(r"stm32ota run --config \S+ &", code_blocks(section())[0])
