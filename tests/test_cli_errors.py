"""Every failure class of the local flasher ends with its own exit code and an actionable message.

docs/flashing.md "Exit codes": 2 usage, 3 no bootloader, 4 wrong chip / does not fit, 5 read-out
protection, 6 verify failed, 7 image rejected, 8 NACK/protocol. Where a command is refused,
the simulated flash is checked to be exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_tools import (BASE, L432, PAGE, blob, cli, commands_seen, erased_pages, target_of,
                       write_image)
from test_cli import write_config

from agent.errors import EXIT_NO_BOOTLOADER, NoBootloader
from agent.flasher import ops
from agent.flasher.image import load
from agent.pins.mock import MockBackend
from agent.sim import Faults, PtySim, SimChip


@pytest.fixture
def port(sim_pty: PtySim) -> list[str]:
    return ["--port", sim_pty.path, "--parity", "none"]


@pytest.fixture
def fw(tmp_path: Path) -> Path:
    return write_image(tmp_path, "fw.hex", [(BASE + PAGE, blob(600))])


# ---- 2: usage ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["info"], "say how the STM32 is connected: --port DEV, --i2c-bus N"),
    (["info", "--port", "/dev/null", "--i2c-bus", "1"], "either --port or --i2c-bus, not both"),
    (["info", "--port", "/dev/null", "--target", "pump"], "--target needs --config PATH"),
    (["info", "--i2c-bus", "1", "--i2c-address", "0x80"], "not a 7-bit device address"),
    (["info", "--port", "/dev/null", "--pins", "libgpiod"], "needs --nrst LINE and --boot0 LINE"),
    (["info", "--port", "/dev/null", "--nrst", "17"], "--nrst/--boot0 need --pins BACKEND"),
    (["read", "x.bin", "--port", "/dev/null", "--address", "0x08000000", "--length", "0"],
     "--length must be positive"),
    (["erase", "--port", "/dev/null"], "give one of --all, --bank 1|2, or --address A --length N"),
    (["erase", "--port", "/dev/null", "--all", "--address", "0x08000000"], "give one of --all"),
    (["erase", "--port", "/dev/null", "--all", "--bank", "1"], "give one of --all"),
    (["protect", "--write", "--port", "/dev/null"], "--write needs --sectors"),
    (["erase", "--port", "/dev/null", "--address", "0x08000000"], "--address needs --length"),
])
def test_usage_errors_exit_2_before_touching_anything(capsys, argv: list, message: str) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2 and message in err and err.startswith("stm32ota: error [usage]")
    assert out == ""


def test_a_bad_number_is_named_by_argparse(capsys) -> None:
    code, _, err = cli(capsys, "read", "x.bin", "--port", "/dev/null", "--address", "0x8zz",
                       "--length", "16")
    assert code == 2 and "'0x8zz' is not a number (use 0x08000000 or 134217728)" in err


def test_a_file_after_a_bare_go_is_explained(capsys) -> None:
    code, _, err = cli(capsys, "flash", "--go", "fw.hex", "--port", "/dev/null")
    assert code == 2 and "put FILE before a bare --go, or write --go=0x08000000" in err


def test_read_into_a_missing_folder_fails_before_connecting(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "read", str(tmp_path / "no" / "x.bin"), "--port", "/dev/null",
                       "--address", "0x08000000", "--length", "16")
    assert code == 2 and "does not exist" in err


def test_a_file_that_cannot_be_written_says_which_with_a_reason_code(tmp_path: Path,
                                                                      capsys) -> None:
    target = tmp_path / "missing" / "release"
    code, _, err = cli(capsys, "keygen", "--out", str(target))
    assert code == 1 and "[file_error]" in err and str(target) in err
    assert not list(tmp_path.rglob("release*"))  # nothing half-written


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    code, _, err = cli(capsys)
    assert code == 2 and "flash" in err and "info" in err


def test_config_and_explicit_link_options_do_not_mix(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, "/dev/null")
    code, _, err = cli(capsys, "info", "--config", str(cfg), "--port", "/dev/ttyAMA0")
    assert code == 2 and "drop --port or drop --config" in err


def test_an_unknown_target_gets_a_suggestion(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, "/dev/null")
    code, _, err = cli(capsys, "info", "--config", str(cfg), "--target", "bench2")
    assert code == 2 and "no target named 'bench2'" in err and "bench" in err


def test_unknown_simulated_chip(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "sim", "--pty", str(tmp_path / "p"), "--chip", "L999")
    assert code == 2 and "L999" in err
    assert not (tmp_path / "p").exists()


# ---- 3: no bootloader --------------------------------------------------------------------


def test_a_port_that_does_not_exist(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "info", "--port", str(tmp_path / "ttyUSB9"))
    assert code == 3 and "ttyUSB9" in err


@pytest.fixture
def running() -> SimChip:
    """An L432 running its application: silent on the bootloader's interfaces."""
    sim = SimChip(L432, boot0=False)
    sim.flash[:8] = bytes.fromhex("0030002009000008")
    sim.power_cycle()
    return sim


FAST_GIVE_UP = """\
    timeouts: {sync: 50ms, byte: 50ms}
    retries: {connect: 1}
"""


def test_a_chip_running_its_application_does_not_answer(tmp_path: Path, running: SimChip,
                                                        fw: Path, capsys) -> None:
    with PtySim(running) as pty:  # the mock pins are not wired to it: no reset reaches it
        cfg = write_config(tmp_path, pty.path, chip="unwired", extra=FAST_GIVE_UP)
        code, _, err = cli(capsys, "flash", str(fw), "--config", str(cfg))
    assert code == 3 and "[no_bootloader]" in err
    assert "after 2 attempts" in err and "check the wiring" in err and "BOOT0" in err
    assert erased_pages(running) == [] and running.mode == "application"


def test_retries_connect_counts_further_tries_so_zero_is_one_attempt(
        tmp_path: Path, running: SimChip, fw: Path, capsys) -> None:
    with PtySim(running) as pty:
        cfg = write_config(tmp_path, pty.path, chip="unwired",
                           extra=FAST_GIVE_UP.replace("connect: 1", "connect: 0"))
        code, _, err = cli(capsys, "flash", str(fw), "--config", str(cfg))
    assert code == 3 and "after 1 attempt:" in err


def test_a_chip_that_stays_silent_after_every_reset(tmp_path: Path, fw: Path) -> None:
    # more silent resets than connect attempts at every rate `baud: auto` tries (4 x 2)
    sim = SimChip(L432, faults=Faults(silent_resets=10))
    with PtySim(sim) as pty:  # the config's mock pins, handed the simulator's lines
        cfg = write_config(tmp_path, pty.path, chip="silent", extra=FAST_GIVE_UP)
        target = target_of("flash", str(fw), "--config", str(cfg))
        with pytest.raises(NoBootloader) as err:
            ops.flash(target, load(fw), pin_backend=MockBackend(sim.set_line))
    assert err.value.exit_code == EXIT_NO_BOOTLOADER == 3
    assert "no answer from the STM32 bootloader" in str(err.value)
    assert [e[3] for e in sim.events if e[0] == "reset"][-2:] == ["silent", "silent"]


# ---- 4: wrong chip, or an image that does not fit -----------------------------------------


def test_the_wrong_chip_is_not_touched(sim_chip: SimChip, port: list, fw: Path, capsys) -> None:
    code, _, err = cli(capsys, "flash", str(fw), *port, "--expect-chip", "0x413")
    assert code == 4 and "expected chip 0x413" in err and "answered 0x435" in err
    assert erased_pages(sim_chip) == [] and not [e for e in sim_chip.events if e[0] == "write"]


def test_an_image_outside_the_flash_is_refused_before_erasing(tmp_path: Path, sim_chip: SimChip,
                                                              port: list, capsys) -> None:
    big = write_image(tmp_path, "big.bin", [(0, blob(4096))])
    code, _, err = cli(capsys, "flash", str(big), *port, "--address", "0x0803F800")
    assert code == 4 and "0x0804" in err
    assert erased_pages(sim_chip) == [] and not [e for e in sim_chip.events if e[0] == "write"]


# ---- 5: read-out protection --------------------------------------------------------------


@pytest.fixture
def protected() -> SimChip:
    sim = SimChip(L432, faults=Faults(read_protected=True))
    sim.flash[:PAGE] = blob(PAGE, 3)
    return sim


@pytest.mark.parametrize("argv, message", [
    (["flash", "FW"], "nothing was written"),
    (["read", "OUT", "--address", "0x08000000", "--length", "64"], "memory cannot be read"),
    (["erase", "--all"], "nothing erased"),
    (["erase", "--address", "0x08000000", "--length", "0x800"], "nothing erased"),
])
def test_read_protection_is_reported_and_never_removed(
        tmp_path: Path, protected: SimChip, fw: Path, capsys, argv: list, message: str) -> None:
    out_file = tmp_path / "backup.bin"
    out_file.write_bytes(b"old backup")
    argv = [str(fw) if a == "FW" else str(out_file) if a == "OUT" else a for a in argv]
    before = bytes(protected.flash)
    with PtySim(protected) as pty:
        code, _, err = cli(capsys, *argv[:2 if argv[0] != "erase" else 1], "--port", pty.path,
                           "--parity", "none", *argv[2 if argv[0] != "erase" else 1:])
    assert code == 5 and "[read_protected]" in err and message in err
    assert bytes(protected.flash) == before and protected.read_protected
    assert not [e for e in protected.events if e[0] in ("erase", "write", "unprotect")]
    assert out_file.read_bytes() == b"old backup"


def test_info_shows_protection_without_failing(protected: SimChip, capsys) -> None:
    with PtySim(protected) as pty:
        code, out, _ = cli(capsys, "info", "--port", pty.path, "--parity", "none")
    assert code == 0 and "read-out protection ACTIVE" in out


# ---- 6, 7, 8 -----------------------------------------------------------------------------


def test_flash_that_does_not_take_the_data_fails_verify(sim_chip: SimChip, port: list, fw: Path,
                                                        capsys) -> None:
    # AN3155: writes to a write-protected page are ACKed but change nothing; only verify sees it
    sim_chip.mem.write_protected.add(1)
    code, _, err = cli(capsys, "flash", str(fw), *port)
    assert code == 6 and "[verify_failed]" in err
    assert f"verify at 0x{BASE + PAGE:08X}" in err and "the image has" in err


def test_a_corrupt_hex_is_rejected_before_the_chip_hears_anything(
        tmp_path: Path, sim_chip: SimChip, port: list, capsys) -> None:
    bad = tmp_path / "bad.hex"
    lines = write_image(tmp_path, "good.hex", [(BASE, blob(64))]).read_text().splitlines()
    lines[2] = lines[2][:-2] + ("00" if lines[2][-2:] != "00" else "01")  # wrong checksum
    bad.write_text("\n".join(lines) + "\n")
    before = list(sim_chip.events)
    code, _, err = cli(capsys, "flash", str(bad), *port)
    assert code == 7 and "bad.hex" in err and "line 3" in err
    assert sim_chip.events == before and commands_seen(sim_chip) == []


def test_an_empty_file_is_rejected(tmp_path: Path, sim_chip: SimChip, port: list, capsys) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    code, _, err = cli(capsys, "flash", str(empty), *port)
    assert code == 7 and commands_seen(sim_chip) == []


def test_a_chip_that_refuses_every_write(tmp_path: Path, port: list, fw: Path, capsys) -> None:
    sim = SimChip(L432, faults=Faults(nack_every_write=1))
    with PtySim(sim) as pty:
        code, _, err = cli(capsys, "flash", str(fw), "--port", pty.path, "--parity", "none",
                           "--retries", "1")
    assert code == 8 and "[nack]" in err and f"write at 0x{BASE + PAGE:08X}" in err


def test_reading_unmapped_memory_names_the_flash_range(tmp_path: Path, port: list,
                                                       capsys) -> None:
    out_file = tmp_path / "o.bin"
    code, _, err = cli(capsys, "read", str(out_file), *port, "--address", "0x0803FF00",
                       "--length", "0x200")
    assert code == 8 and "[nack]" in err and "0x08000000-0x0803FFFF" in err
    assert "check --address and --length" in err and not out_file.exists()


@pytest.mark.parametrize("argv,code", [
    (["flash", "fw.bin", "--port", "/dev/null", "--address", "0x08000001"], "unaligned_address"),
    (["unprotect", "--read", "--port", "/dev/null"], "confirm_needed"),
])
def test_mistakes_refused_before_touching_anything(argv: list, code: str, capsys) -> None:
    code_, _, err = cli(capsys, *argv)
    assert code_ == 2 and f"[{code}]" in err
