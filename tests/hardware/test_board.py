"""The whole command set against a real STM32 (e.g. a NUCLEO-L432KC), left as it was found.

Skipped unless the environment names a board (docs/development.md, "Testing on real hardware"):

    STM32OTA_TEST_PORT=/dev/ttyAMA0             a UART link (or, for I2C, both of:)
    STM32OTA_TEST_I2C_BUS=1  STM32OTA_TEST_I2C_ADDRESS=0x48
    STM32OTA_TEST_PINS=libgpiod                 backend: auto, libgpiod, rpigpio or modem
    STM32OTA_TEST_NRST=17  STM32OTA_TEST_BOOT0=27
    optional: STM32OTA_TEST_BAUD (default auto), STM32OTA_TEST_PARITY (default even),
    STM32OTA_TEST_GPIOCHIP, STM32OTA_TEST_NRST_ACTIVE_HIGH=1, STM32OTA_TEST_BOOT0_ACTIVE_LOW=1,
    STM32OTA_TEST_EXPECT_CHIP=0x435, STM32OTA_TEST_BACKUP=path (default: a temporary folder)

Every command runs as its own `python -m agent` process, as a person would run it. Before
anything is changed the whole flash is read to a backup; at the end the backup is flashed back
(verified) and the application started. A read-protected chip is skipped, never unprotected.
Option bytes are never written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.hardware

ENV = os.environ.get
LINK_SET = bool(ENV("STM32OTA_TEST_PORT")) or bool(ENV("STM32OTA_TEST_I2C_BUS")
                                                   and ENV("STM32OTA_TEST_I2C_ADDRESS"))
PINS_SET = bool(ENV("STM32OTA_TEST_NRST") and ENV("STM32OTA_TEST_BOOT0"))
if not (LINK_SET and PINS_SET):
    pytest.skip("no board: set STM32OTA_TEST_PORT (or STM32OTA_TEST_I2C_BUS and _ADDRESS), "
                "STM32OTA_TEST_NRST and STM32OTA_TEST_BOOT0 (docs/development.md: Testing on real hardware)",
                allow_module_level=True)

TIMEOUT_S = 900  # a full backup or restore of 1 MiB at 19200 baud takes about 10 minutes


def link_args() -> list[str]:
    """The link and pin options of every command, from the environment."""
    if ENV("STM32OTA_TEST_PORT"):
        args = ["--port", ENV("STM32OTA_TEST_PORT", ""), "--baud", ENV("STM32OTA_TEST_BAUD", "auto"),
                "--parity", ENV("STM32OTA_TEST_PARITY", "even")]
    else:
        args = ["--i2c-bus", ENV("STM32OTA_TEST_I2C_BUS", ""),
                "--i2c-address", ENV("STM32OTA_TEST_I2C_ADDRESS", "")]
    args += ["--pins", ENV("STM32OTA_TEST_PINS", "auto"), "--nrst", ENV("STM32OTA_TEST_NRST", ""),
             "--boot0", ENV("STM32OTA_TEST_BOOT0", "")]
    if ENV("STM32OTA_TEST_GPIOCHIP"):
        args += ["--gpiochip", ENV("STM32OTA_TEST_GPIOCHIP", "")]
    if ENV("STM32OTA_TEST_NRST_ACTIVE_HIGH") == "1":
        args.append("--nrst-active-high")
    if ENV("STM32OTA_TEST_BOOT0_ACTIVE_LOW") == "1":
        args.append("--boot0-active-low")
    if ENV("STM32OTA_TEST_EXPECT_CHIP"):
        args += ["--expect-chip", ENV("STM32OTA_TEST_EXPECT_CHIP", "")]
    return args


def stm32ota(*argv: str) -> subprocess.CompletedProcess:
    """Run one command against the board; its output goes to the test log either way."""
    run = subprocess.run([sys.executable, "-m", "agent", "-v", *argv, *link_args()],
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    print(f"$ stm32ota {' '.join(argv)} -> {run.returncode}\n{run.stdout}{run.stderr}")
    return run


def ok(*argv: str) -> str:
    """Run a command that must succeed; its stdout."""
    run = stm32ota(*argv)
    assert run.returncode == 0, f"stm32ota {' '.join(argv)} failed:\n{run.stderr}"
    return run.stdout


class Board:
    """What `info` said, and where the backup is."""

    def __init__(self, info: dict[str, Any], backup: Path) -> None:
        self.info = info
        self.start = int(info["flash_start"], 16)
        self.size = int(info["flash_size"])
        self.backup = backup
        last = info["page_layout"][-1][1]  # the last page: away from the vector table
        self.last_page = self.start + self.size - last
        self.last_size = min(last, 4096)

    def read(self, tmp: Path, address: int, length: int) -> bytes:
        out = tmp / f"read-{address:08x}-{length}.bin"
        ok("read", str(out), "--address", hex(address), "--length", str(length))
        return out.read_bytes()


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    """Identify the board, back up its flash, and put it back afterwards."""
    info = json.loads(ok("info", "--json"))
    if info["read_protected"]:
        pytest.skip("the chip is read-protected: no backup is possible, and stm32ota never "
                    "removes protection by itself")
    folder = Path(ENV("STM32OTA_TEST_BACKUP") or tmp_path_factory.mktemp("backup"))
    folder.mkdir(parents=True, exist_ok=True)
    backup = folder / f"backup-{info['pid']}.bin"
    b = Board(info, backup)
    ok("read", str(backup), "--address", hex(b.start), "--length", str(b.size))
    assert backup.stat().st_size == b.size
    print(f"backup of the whole flash: {backup}")
    yield b
    restored = stm32ota("flash", str(backup), "--address", hex(b.start), "--verify", "readback")
    assert restored.returncode == 0, (f"RESTORE FAILED: flash {backup} back by hand "
                                      f"(stm32ota flash {backup} --address {hex(b.start)})")
    ok("info", "--go")


def test_info_names_the_chip_and_the_rate(board: Board) -> None:
    info = board.info
    assert info["pid"].startswith("0x") and info["chip"] and board.size > 0
    assert info["commands"] and info["bootloader_version"]
    if ENV("STM32OTA_TEST_PORT"):
        assert info["baud"] in (115200, 57600, 38400, 19200) or \
            str(info["baud"]) == ENV("STM32OTA_TEST_BAUD")


def test_read_is_repeatable_and_matches_the_backup(board: Board, tmp_path: Path) -> None:
    first = board.read(tmp_path, board.start, 1024)
    assert first == board.read(tmp_path, board.start, 1024)
    assert first == board.backup.read_bytes()[:1024]


def test_erase_leaves_the_page_blank(board: Board, tmp_path: Path) -> None:
    ok("erase", "--address", hex(board.last_page), "--length", str(board.size + board.start
                                                                    - board.last_page))
    assert board.read(tmp_path, board.last_page, board.last_size) == b"\xff" * board.last_size


@pytest.mark.parametrize("verify", ["auto", "readback"])
def test_flash_writes_what_reads_back(board: Board, tmp_path: Path, verify: str) -> None:
    pattern = bytes((i * 7 + len(verify)) & 0xFF for i in range(board.last_size))
    image = tmp_path / "pattern.bin"
    image.write_bytes(pattern)
    ok("flash", str(image), "--address", hex(board.last_page), "--verify", verify)
    assert board.read(tmp_path, board.last_page, board.last_size) == pattern


def test_start_leaves_the_bootloader_and_the_next_command_enters_it_again(board: Board) -> None:
    ok("info", "--go")
    again = json.loads(ok("info", "--json"))
    assert again["pid"] == board.info["pid"]
