"""The rough edges a first user of the flasher hits (issue 11, items 8, 9 and 14): each is
refused or explained, and the short forms stm32flash and esptool users type work."""

from __future__ import annotations

from pathlib import Path

from agent.sim import Faults, PtySim, SimChip
from cli_tools import BASE, L432, PAGE, blob, cli, target_of

FLASH = 256 * 1024


def port(pty: PtySim) -> list[str]:
    return ["--port", pty.path, "--parity", "none"]


def test_read_without_address_or_length_reads_the_whole_flash(sim_chip: SimChip, sim_pty: PtySim,
                                                              tmp_path: Path, capsys) -> None:
    sim_chip.flash[:PAGE] = blob(PAGE, 4)
    out = tmp_path / "backup.bin"
    code, text, _ = cli(capsys, "read", str(out), *port(sim_pty))
    assert code == 0 and out.read_bytes() == bytes(sim_chip.flash[:FLASH])
    assert f"read {FLASH} bytes from 0x{BASE:08X}" in text
    code, _, _ = cli(capsys, "read", str(out), *port(sim_pty), "--address", hex(BASE + FLASH - 16))
    assert code == 0 and out.read_bytes() == bytes(sim_chip.flash[FLASH - 16:FLASH])


def test_an_elf_renamed_to_bin_is_refused_by_its_magic(sim_chip: SimChip, sim_pty: PtySim,
                                                       tmp_path: Path, capsys) -> None:
    elf = tmp_path / "firmware.bin"
    elf.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(200))
    code, _, err = cli(capsys, "flash", str(elf), *port(sim_pty))
    assert code == 7 and "[bad_image]" in err and "ELF" in err and "objcopy" in err
    assert not [e for e in sim_chip.events if e[0] in ("erase", "write")]


def test_a_decimal_address_outside_the_chip_gets_the_hex_hint(sim_chip: SimChip, sim_pty: PtySim,
                                                              tmp_path: Path, capsys) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(blob(64))
    code, _, err = cli(capsys, "flash", str(fw), *port(sim_pty), "--address", "8000000")
    assert code == 4 and "did you mean 0x8000000?" in err
    code, _, err = cli(capsys, "flash", str(fw), *port(sim_pty), "--address", "0x7A1200")
    assert code == 4 and "did you mean" not in err  # written in hex: meant as it is
    assert not [e for e in sim_chip.events if e[0] in ("erase", "write")]


def test_short_options_and_the_port_from_the_environment(monkeypatch) -> None:
    t = target_of("info", "-p", "/dev/ttyX", "-b", "57600")
    assert (t.link.port, t.link.baud) == ("/dev/ttyX", 57600)
    monkeypatch.setenv("STM32OTA_PORT", "/dev/ttyENV")
    assert target_of("info").link.port == "/dev/ttyENV"
    assert target_of("info", "--port", "/dev/ttyX").link.port == "/dev/ttyX"
    assert target_of("info", "--i2c-bus", "1").link.bus == 1  # the variable gives way to I2C


def test_flash_starts_the_application_by_default_only_with_pins(tmp_path: Path, capsys) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(blob(64))
    sim = SimChip(L432, realtime=False)
    with PtySim(sim) as pty:
        code, out, _ = cli(capsys, "flash", str(fw), *port(pty))
        assert code == 0 and "application started" not in out and sim.mode == "bootloader"
        code, out, _ = cli(capsys, "flash", str(fw), *port(pty), "--go")
        assert code == 0 and "application started (go)" in out


def test_bank_erase_needs_a_dual_bank_chip(sim_pty: PtySim, capsys) -> None:
    code, _, err = cli(capsys, "erase", "--bank", "2", *port(sim_pty))
    assert code == 2 and "[bad_bank]" in err and "dual-bank" in err


def test_unprotect_read_removes_rdp_by_mass_erase_only_when_confirmed(capsys) -> None:
    sim = SimChip(L432, realtime=False, faults=Faults(read_protected=True))
    sim.flash[:PAGE] = blob(PAGE, 3)
    with PtySim(sim) as pty:
        code, _, err = cli(capsys, "flash", "nothing.hex", *port(pty))  # the file check first
        code, _, err = cli(capsys, "read", "x.bin", *port(pty))
        assert code == 5 and "stm32ota unprotect --read --yes-erase-everything" in err
        code, _, err = cli(capsys, "unprotect", "--read", *port(pty))
        assert code == 2 and sim.read_protected
        code, out, _ = cli(capsys, "unprotect", "--read", "--yes-erase-everything", *port(pty))
    assert code == 0 and "removed the read-out protection" in out
    assert not sim.read_protected and bytes(sim.flash[:PAGE]) == b"\xff" * PAGE


def test_protect_read_then_the_flasher_refuses_and_names_the_way_back(capsys) -> None:
    sim = SimChip(L432, realtime=False)
    with PtySim(sim) as pty:
        code, out, _ = cli(capsys, "protect", "--read", *port(pty))
        assert code == 0 and sim.read_protected
        code, _, err = cli(capsys, "erase", "--all", *port(pty))
    assert code == 5 and "unprotect --read" in err


def test_sign_says_where_it_wrote_unless_quiet(tmp_path: Path, capsys) -> None:
    (tmp_path / "fw.bin").write_bytes(blob(64))
    assert cli(capsys, "keygen", "--out", str(tmp_path / "rel"))[0] == 0
    argv = ["sign", str(tmp_path / "fw.bin"), "--key", str(tmp_path / "rel.key"), "--product",
            "pump-ctrl", "--version", "1.0.0", "--url", "http://h/fw.bin", "-o",
            str(tmp_path / "m.json")]
    code, out, _ = cli(capsys, *argv)
    assert code == 0 and out == f"wrote the signed manifest of pump-ctrl 1.0.0 to {argv[-1]}\n"
    code, out, _ = cli(capsys, "-q", *argv)
    assert code == 0 and out == ""


def test_vv_shows_the_bytes_and_messages_name_the_port_not_a_repr(sim_pty: PtySim, caplog,
                                                                   capsys) -> None:
    caplog.set_level("DEBUG")
    assert cli(capsys, "-vv", "info", *port(sim_pty))[0] == 0
    lines = caplog.messages
    assert f"{sim_pty.path} > 01 fe" in lines and f"{sim_pty.path} < 79" in lines  # GET_VERSION
    assert "command 0x01 GET_VERSION" in lines  # the opcode once


def test_a_silent_port_is_named_as_people_write_it(tmp_path: Path, caplog, capsys) -> None:
    caplog.set_level("INFO")  # what -v shows
    sim = SimChip(L432, realtime=False, boot0=False)  # runs its application: never answers
    sim.flash[:8] = bytes.fromhex("0030002009000008")
    sim.power_cycle()
    with PtySim(sim) as pty:
        code, _, err = cli(capsys, "info", *port(pty), "--baud", "115200")
    assert code == 3 and pty.path in err
    assert any(pty.path in m and "sync" in m for m in caplog.messages)
    assert not [m for m in caplog.messages + [err] if "UartLink(" in m]
