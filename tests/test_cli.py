"""The local flasher as a user runs it: `stm32ota flash/info/read/erase` against the simulator.

Most tests call `agent.cli.main([...])` in-process on a simulated STM32L432 behind a real pty
(8N1: a pty carries no parity). I2C goes through the operations the handlers call
(`agent.flasher.ops`) with the simulator's bus handed in for /dev/i2c-N.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cli_tools import (BASE, L432, PAGE, blob, cli, erased_pages, flash_bytes, target_of,
                       write_image)

from agent.cli.flasher import describe
from agent.flasher import ops
from agent.flasher.image import load
from agent.flasher.target import I2cSettings, Target, UartSettings
from agent.pins.mock import MockBackend
from agent.progress import ProgressPrinter
from agent.sim import Faults, PtySim, SimChip, SimI2CBus

# Gaps inside a page and across pages, an odd start and an unaligned end: real HEX shapes.
GAPPY = [(BASE + 0x100, blob(700)), (BASE + 0x100 + 703, blob(9, 1)),
         (BASE + 3 * PAGE - 5, blob(300, 2)), (BASE + 10 * PAGE + 1, blob(13, 3))]
GAPPY_PAGES = [0, 2, 3, 10]


@pytest.fixture
def port(sim_pty: PtySim) -> list[str]:
    """The link options for the simulator's pty."""
    return ["--port", sim_pty.path, "--parity", "none"]


def assert_holds(sim: SimChip, segments: list) -> None:
    for address, data in segments:
        assert flash_bytes(sim, address, len(data)) == data, f"0x{address:08X}"


@pytest.mark.parametrize("name", ["fw.hex", "fw.srec"])
def test_text_image_with_gaps_is_written_byte_for_byte_erasing_only_its_pages(
        tmp_path: Path, sim_chip: SimChip, port: list, capsys, name: str) -> None:
    sim = sim_chip
    sim.flash[5 * PAGE:6 * PAGE] = b"\x00" * PAGE  # a page of old data the image does not touch
    image = write_image(tmp_path, name, GAPPY)
    code, out, err = cli(capsys, "flash", str(image), *port)
    assert code == 0, err
    assert_holds(sim, GAPPY)
    assert flash_bytes(sim, BASE + 0x100 + 700, 3) == b"\xff" * 3  # the gap stays erased
    assert flash_bytes(sim, BASE, 0x100) == b"\xff" * 0x100
    assert erased_pages(sim) == GAPPY_PAGES
    assert bytes(sim.flash[5 * PAGE:6 * PAGE]) == b"\x00" * PAGE
    # a blank chip that came up through its empty check: the CRC is computed on the chip
    assert f"{image}: erased 4 pages, wrote" in out and "verified by ram-crc" in out
    assert sim.mode == "bootloader"  # no --go: it stays there


def test_bin_at_a_non_zero_base_with_an_unaligned_end(tmp_path: Path, sim_chip: SimChip,
                                                      port: list, capsys) -> None:
    data = blob(2 * PAGE + 1001, 4)
    image = write_image(tmp_path, "app.bin", [(0, data)])
    code, out, err = cli(capsys, "flash", str(image), *port, "--address", "0x08004000")
    assert code == 0, err
    assert flash_bytes(sim_chip, 0x08004000, len(data)) == data
    assert flash_bytes(sim_chip, 0x08004000 + len(data), 8) == b"\xff" * 8
    assert erased_pages(sim_chip) == [8, 9, 10]


def test_bin_without_address_goes_to_the_start_of_flash(tmp_path: Path, sim_chip: SimChip,
                                                        port: list, capsys) -> None:
    image = write_image(tmp_path, "app.bin", [(0, blob(100))])
    assert cli(capsys, "flash", str(image), *port)[0] == 0
    assert flash_bytes(sim_chip, BASE, 100) == blob(100)


def test_go_without_pins_jumps_to_the_start_of_flash(tmp_path: Path, sim_chip: SimChip,
                                                     port: list, capsys) -> None:
    image = write_image(tmp_path, "fw.hex", [(BASE, blob(64))])
    code, out, _ = cli(capsys, "flash", str(image), *port, "--go")
    assert code == 0
    assert ("go", BASE) in sim_chip.events and sim_chip.mode == "application"
    assert "application started (go)" in out


def test_go_to_an_address(tmp_path: Path, sim_chip: SimChip, port: list, capsys) -> None:
    image = write_image(tmp_path, "fw.hex", [(BASE + 0x100, blob(64))])
    assert cli(capsys, "flash", str(image), *port, "--go", "0x08000100")[0] == 0
    gos = [e[1] for e in sim_chip.events if e[0] == "go"]
    assert gos[-1] == 0x08000100  # before it, only the CRC routine in RAM (check, verify)
    assert set(gos[:-1]) == {L432.ram_start}


def test_no_verify_writes_without_reading_back(tmp_path: Path, sim_chip: SimChip, port: list,
                                               capsys) -> None:
    image = write_image(tmp_path, "fw.hex", GAPPY)
    code, out, _ = cli(capsys, "flash", str(image), *port, "--no-verify")
    assert code == 0 and "not verified" in out
    assert_holds(sim_chip, GAPPY)
    last_write = max(i for i, e in enumerate(sim_chip.events) if e[0] == "write")
    assert not [e for e in sim_chip.events[last_write:] if e[0] in ("read", "checksum")]


def test_progress_in_a_log_is_plain_lines(tmp_path: Path, port: list, capsys) -> None:
    image = write_image(tmp_path, "fw.hex", GAPPY)
    code, _, err = cli(capsys, "flash", str(image), *port)
    assert code == 0 and "\r" not in err
    lines = err.splitlines()
    for phase, unit in (("erase", "pages"), ("write", "bytes"), ("verify", "bytes")):
        assert f"{phase}:   0% 0/" in err
        assert any(line.startswith(f"{phase}: 100%") and unit in line for line in lines)


def test_quiet_prints_nothing_on_success(tmp_path: Path, port: list, capsys) -> None:
    image = write_image(tmp_path, "fw.hex", GAPPY)
    assert cli(capsys, "flash", str(image), *port, "-q") == (0, "", "")


def test_progress_on_a_terminal_is_one_updating_bar_per_phase(sim_pty: PtySim,
                                                              tmp_path: Path) -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True, redraw=0.0)
    target = Target(UartSettings(sim_pty.path, parity="none"))
    image = load(write_image(tmp_path, "fw.hex", GAPPY))
    ops.flash(target, image, progress=printer)
    printer.close()
    text = out.getvalue()
    lines = text.split("\n")
    assert lines.pop() == ""  # the bar line is ended when the work is
    assert [line.split("\r")[-1].split("[")[0].strip() for line in lines] == \
        ["erase", "write", "verify"]  # one line each, redrawn in place with \r
    assert all(line.count("\r") >= 2 and "100%" in line.split("\r")[-1] for line in lines)


def test_info_describes_the_chip(sim_chip: SimChip, port: list, capsys) -> None:
    code, out, _ = cli(capsys, "info", *port)
    assert code == 0
    assert "version 3.1" in out and "0x435 STM32L43" in out
    assert "GET_VERSION" in out and "EXTENDED_ERASE" in out
    assert "256 KiB at 0x08000000, 128 pages (128 x 2 KiB)" in out
    assert "read-out protection off" in out
    assert sim_chip.mode == "bootloader"


def test_info_json_is_for_scripts(port: list, capsys) -> None:
    code, out, _ = cli(capsys, "info", *port, "--json")
    d = json.loads(out)
    assert code == 0
    assert (d["pid"], d["chip"], d["flash_size"], d["pages"]) == ("0x435", L432.name, 262144, 128)
    assert d["page_layout"] == [[128, 2048]] and d["read_protected"] is False
    assert {"GET", "READ_MEMORY", "WRITE_MEMORY", "EXTENDED_ERASE", "GO"} <= set(d["commands"])


def test_info_reports_the_flash_size_register_not_the_family_maximum(capsys) -> None:
    sim = SimChip(L432, flash_size=128 * 1024)  # an L431xB: 128 KiB in the same PID
    with PtySim(sim) as pty:
        code, out, _ = cli(capsys, "info", "--port", pty.path, "--parity", "none")
    assert code == 0 and "128 KiB at 0x08000000, 64 pages (64 x 2 KiB)" in out


def test_read_writes_exactly_the_range_into_a_new_file(tmp_path: Path, sim_chip: SimChip,
                                                       port: list, capsys) -> None:
    sim_chip.flash[:3 * PAGE] = blob(3 * PAGE, 5)
    out_file = tmp_path / "backup.bin"
    code, out, _ = cli(capsys, "read", str(out_file), *port, "--address", "0x08000010",
                       "--length", "5000")
    assert code == 0 and "read 5000 bytes from 0x08000010" in out
    assert out_file.read_bytes() == blob(3 * PAGE, 5)[0x10:0x10 + 5000]
    assert [p.name for p in tmp_path.iterdir()] == ["backup.bin"]  # no temporary left behind


def test_erase_all_clears_the_whole_flash(sim_chip: SimChip, port: list, capsys) -> None:
    sim_chip.flash[:] = b"\x00" * len(sim_chip.flash)
    code, out, _ = cli(capsys, "erase", *port, "--all")
    assert code == 0 and "erased all 256 KiB" in out
    assert bytes(sim_chip.flash) == b"\xff" * len(sim_chip.flash)


def test_erase_a_page_range_leaves_its_neighbours(sim_chip: SimChip, port: list, capsys) -> None:
    sim_chip.flash[:6 * PAGE] = b"\x00" * (6 * PAGE)
    code, out, _ = cli(capsys, "erase", *port, "--address", "0x08001000", "--length", "0x1000")
    assert code == 0 and "erased pages 2-3" in out
    assert erased_pages(sim_chip) == [2, 3]
    assert bytes(sim_chip.flash[2 * PAGE:4 * PAGE]) == b"\xff" * (2 * PAGE)
    assert bytes(sim_chip.flash[PAGE:2 * PAGE]) == bytes(sim_chip.flash[4 * PAGE:5 * PAGE]) \
        == b"\x00" * PAGE


def test_a_range_that_cuts_pages_is_refused_with_the_range_to_use(sim_chip: SimChip, port: list,
                                                                  capsys) -> None:
    code, _, err = cli(capsys, "erase", *port, "--address", "0x08001004", "--length", "0x1000")
    assert code == 2 and "cuts pages" in err
    assert "--address 0x08001000 --length 0x1800" in err
    assert erased_pages(sim_chip) == []


def test_a_range_beyond_the_flash_is_refused_as_such(sim_chip: SimChip, port: list,
                                                     capsys) -> None:
    code, _, err = cli(capsys, "erase", *port, "--address", "0x0803F800", "--length", "0x1000")
    assert code == 2 and "not inside the flash (0x08000000-0x0803FFFF)" in err
    assert erased_pages(sim_chip) == []


# ---- I2C: the operations the handlers call, with the simulator's bus for /dev/i2c-1 ---------


@pytest.fixture
def i2c(sim_chip: SimChip) -> tuple[Target, SimI2CBus]:
    bus = SimI2CBus()
    bus.attach(0x48, sim_chip)
    return Target(I2cSettings(bus=1, address=0x48, busy_poll=0.0)), bus


def test_i2c_flash_verify_and_go(tmp_path: Path, sim_chip: SimChip,
                                 i2c: tuple[Target, SimI2CBus]) -> None:
    target, bus = i2c
    image = load(write_image(tmp_path, "fw.srec", GAPPY))
    result, how = ops.flash(target, image, start_app=True, i2c_bus=bus)
    assert_holds(sim_chip, GAPPY)
    assert erased_pages(sim_chip) == GAPPY_PAGES
    assert result.verify in ("crc", "readback") and how == "go"
    assert ("go", BASE) in sim_chip.events


def test_i2c_info_and_read(sim_chip: SimChip, i2c: tuple[Target, SimI2CBus]) -> None:
    target, bus = i2c
    sim_chip.flash[:600] = blob(600, 9)
    d = describe(ops.info(target, i2c_bus=bus))
    assert (d["pid"], d["flash_size"]) == ("0x435", 256 * 1024)
    assert ops.read(target, BASE + 1, 599, i2c_bus=bus) == (BASE + 1, blob(600, 9)[1:])


# ---- --config --target: the target's mock pins, handed the simulator's lines, reset it -------


def write_config(tmp_path: Path, port: str, *, chip: str = "sim-bench", extra: str = "") -> Path:
    """A minimal valid config with one UART target on `port` and mock pins."""
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
agent: {{state_dir: ./state, cache_dir: ./cache}}
mqtt: {{host: localhost}}
trust: {{allow_unsigned: true}}
targets:
  - name: bench
    product: demo
    link: {{type: uart, port: {port}, parity: none}}
    pins: {{backend: mock, chip: {chip}, nrst: {{line: 17}}, boot0: {{line: 27}}}}
    expect_chip: 0x435
{extra}""")
    return path


@pytest.fixture
def running() -> SimChip:
    """An L432 running its application (BOOT0 pulled down, flash not empty)."""
    sim = SimChip(L432, boot0=False)
    sim.flash[:8] = bytes.fromhex("0030002009000008")
    sim.power_cycle()  # AN2606: the L4 empty check is latched at power-on
    assert sim.mode == "application"
    return sim


def test_config_target_resets_into_the_bootloader_and_back_out(tmp_path: Path,
                                                               running: SimChip) -> None:
    image = write_image(tmp_path, "fw.hex", [(BASE + PAGE, blob(500))])
    with PtySim(running) as pty:
        cfg = write_config(tmp_path, pty.path)
        target = target_of("flash", str(image), "--config", str(cfg), "--target", "bench",
                           "--go")
        _, how = ops.flash(target, load(image), start_app=True,
                           pin_backend=MockBackend(running.set_line))
    assert flash_bytes(running, BASE + PAGE, 500) == blob(500)
    resets = [e[1:3] for e in running.events if e[0] == "reset"]
    assert resets[-2:] == [("nrst", "bootloader"), ("nrst", "application")]
    # started by the reset (BOOT0 low). Every GO ran a routine in RAM: the CRC of the page
    # before and after writing (the USART bootloader has no 0xA1; NRST and BOOT0 bring it
    # back), then the one that makes the L4's empty-check flag agree with the flash before
    # that reset (issue 8)
    assert [e[1] for e in running.events if e[0] == "go"] == [L432.ram_start] * 3
    assert [e[1] for e in running.events if e[0] == "ram_code"] == ["spinning"] * 3
    assert running.mode == "application" and how == "reset"


def test_the_only_target_of_a_config_needs_no_name(tmp_path: Path, sim_chip: SimChip,
                                                   running: SimChip, capsys) -> None:
    with PtySim(sim_chip) as pty:  # already in the bootloader: unwired mock pins do not matter
        code, out, _ = cli(capsys, "info", "--config", str(write_config(tmp_path, pty.path)),
                           "--json")
    assert code == 0 and json.loads(out)["pid"] == "0x435"
    with PtySim(running) as pty:
        target = target_of("info", "--config", str(write_config(tmp_path, pty.path)))
        identity = ops.info(target, pin_backend=MockBackend(running.set_line))
    assert describe(identity)["pid"] == "0x435"
    assert running.mode == "bootloader"  # without --go, releasing the pins resets nothing


def test_read_recovers_from_bytes_lost_on_the_line(tmp_path: Path, capsys) -> None:
    sim = SimChip(L432, faults=Faults(drop_every=150))  # a READ command moves ~9 bytes to the chip
    sim.reset(boot0=True)
    sim.flash[:2 * PAGE] = blob(2 * PAGE, 9)
    out_file = tmp_path / "backup.bin"
    with PtySim(sim) as pty:
        code, out, err = cli(capsys, "read", str(out_file), "--port", pty.path, "--parity",
                             "none", "--address", "0x08000000", "--length", str(2 * PAGE))
    assert code == 0, err
    assert out_file.read_bytes() == blob(2 * PAGE, 9)
    assert ("fault", "drop") in sim.events


def test_run_loads_neither_the_flash_commands_nor_the_fleet_view_nor_the_simulator() -> None:
    """A lean agent: `run` imports only its own handler module (agent.cli.options.MODULES)."""
    import subprocess
    import sys
    code = ("import sys; from agent.cli import main; rc = main(['run', '--help']); "
            "print(sorted(m for m in sys.modules if m.startswith('agent.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = out.strip().splitlines()[-1]
    for heavy in ("agent.cli.flasher", "agent.cli.fleet", "agent.mqtt.fleet", "agent.cli.sim",
                  "agent.sim", "agent.demo", "agent.cli.release"):
        assert f"'{heavy}'" not in loaded, heavy
    assert "'agent.cli.agent'" in loaded


def test_every_handler_module_is_in_the_lazy_registry() -> None:
    """A subcommand whose module is missing from options.MODULES would never be loaded."""
    import importlib
    import pkgutil

    import agent.cli
    from agent.cli.options import MODULES, PARSERS
    for info in pkgutil.iter_modules(agent.cli.__path__):
        if info.name == "options":
            continue
        module = importlib.import_module(f"agent.cli.{info.name}")
        for name, (_, setup) in PARSERS.items():
            if setup.__module__ == module.__name__:
                assert MODULES.get(name) == info.name, f"add {name!r}: {info.name!r} to MODULES"
    assert set(PARSERS) == set(MODULES)
