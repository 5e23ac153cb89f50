"""A UART flash starts and ends quickly: it imports nothing it does not use, and the console
script ends short-lived commands with os._exit, keeping their exit codes and output.

A benchmark times `stm32ota flash` against stm32flash, a C program; docs/performance.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_tools import BASE, PAGE, blob, write_image

from agent.cli import QUICK_EXIT, main
from agent.sim import PtySim

ROOT = Path(__file__).resolve().parent.parent

# What a flash over --port without pins never needs, each imported where it is used: smbus2
# (and ctypes) by I2C links, difflib for a "did you mean" about a pin sequence, json for
# --json, tempfile for `read`, shutil (bz2, lzma) by argparse's own help formatter, pathlib
# for an annotation in agent.errors
LAZY = ("smbus2", "ctypes", "difflib", "json", "tempfile", "shutil", "bz2", "lzma", "pathlib")


def python(code: str) -> subprocess.CompletedProcess:
    """`python -S -c CODE` in the repository: no site, so no editable-install finder (which
    imports pathlib itself); the test's own sys.path finds agent and its libraries instead."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, sys.path)])}
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_uart_flash_without_pins_imports_only_what_it_uses(tmp_path: Path,
                                                              sim_pty: PtySim) -> None:
    image = write_image(tmp_path, "fw.bin", [(BASE, blob(2 * PAGE, 4))])
    argv = ["-q", "flash", str(image), "--port", sim_pty.path, "--parity", "none"]
    done = python("import sys\nfrom agent.cli import main\n"
                  f"code = main({argv!r})\nprint(code)\nprint(sorted(sys.modules))")
    code, modules = done.stdout.splitlines()
    assert code == "0", done.stderr
    assert sim_pty.sim.flash[:2 * PAGE] == blob(2 * PAGE, 4)
    assert "'agent.link.uart'" in modules  # the flash did run
    loaded = [name for name in LAZY if f"'{name}'" in modules]
    assert loaded == [], f"a UART flash imported {loaded}"


def stm32ota(*argv: str) -> subprocess.CompletedProcess:
    """`python -m agent ARGV`, as the console script runs."""
    return subprocess.run([sys.executable, "-m", "agent", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_the_quick_exit_keeps_output_and_exit_codes(capsys, tmp_path: Path) -> None:
    image = write_image(tmp_path, "fw.bin", [(BASE, blob(PAGE))])
    codes = set()
    for argv in (["flash", "--help"], ["chips"], ["flash", str(image)],
                 ["-q", "flash", str(image), "--port", str(tmp_path / "none"), "--parity", "none"],
                 ["flash", str(tmp_path / "missing.bin"), "--port", "/dev/null"],
                 ["flash", "--no-such-option"]):
        code = main(argv)  # in-process: returns, and what it printed is the reference
        out, err = capsys.readouterr()
        done = stm32ota(*argv)
        assert (done.returncode, done.stdout, done.stderr) == (code, out, err), argv
        codes.add(code)
    assert codes == {0, 2, 3, 7}  # help, usage, no bootloader, image unreadable
    assert "chips" in QUICK_EXIT and "run" not in QUICK_EXIT and "sim" not in QUICK_EXIT


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_flush_of_stdout_is_reported_and_exits_120_as_before() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered stdout
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "agent", "chips"], cwd=ROOT, env=env,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 120
    assert done.stderr.startswith("Exception ignored in: <_io.TextIOWrapper name='<stdout>'")
    assert "OSError: [Errno 28]" in done.stderr


# console() as `python -m agent` runs it, with an atexit hook, an object whose __del__ only the
# interpreter's teardown calls, and maybe a thread that ends only once the main thread has (so
# it still runs when console() decides, however long the command took)
CONSOLE = """\
import atexit, sys, threading
class Torn:
    def __del__(self):
        print("teardown", flush=True)
torn = Torn()
atexit.register(print, "atexit", flush=True)
if {thread}:
    threading.Thread(target=lambda: (threading.main_thread().join(),
                                     print("thread", flush=True))).start()
sys.argv = ["stm32ota", *{argv!r}]
from agent.cli import console
console()
"""


@pytest.mark.parametrize("argv, thread, lines, code", [
    (["flash", "--help"], False, ["atexit"], 0),  # hooks run, teardown skipped
    (["flash", "--bogus"], False, ["atexit"], 2),
    (["flash", "--help"], True, ["thread", "atexit", "teardown"], 0),  # a thread: normal exit
    (["run", "--help"], False, ["atexit", "teardown"], 0),  # not a short-lived command
])
def test_console_skips_the_teardown_only_after_short_lived_commands(
        argv: list, thread: bool, lines: list, code: int) -> None:
    done = python(CONSOLE.format(argv=argv, thread=thread))
    assert done.returncode == code, done.stderr
    assert [line for line in done.stdout.splitlines() if line in ("atexit", "teardown", "thread")] \
        == lines
