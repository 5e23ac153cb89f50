"""`stm32ota doctor`: every verdict on the simulator, with the fault that causes it.

The simulator runs over a real pty (PtySim); pins are the strict mock driving it through the
explicit pin_backend door, and a wire that is "not connected" is a listener that drops that
signal. Facts the faults stand for: factory G0 options ignore BOOT0 (AN2606 pattern 11, RM0454
3.4.1 value); a ROM autobaud 9 % off (field report on an L431, second-hand; AN2606 4.5 allows
5 %); the Pi's mini UART loses PARENB (Linux 8250 UART_CAP_MINI, seen here on a pty's
read-back, as tests/test_uart_port.py does); RDP level 1 (AN3155 3.12).
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from cli_tools import cli

from agent.flasher import doctor
from agent.flasher.target import PinsSettings, Target, UartSettings
from agent.link import uart
from agent.pins import PinSpec
from agent.pins.mock import MockBackend
from agent.sim import Faults, PtySim, SimChip
from agent.stm32 import options as optbytes
from agent.stm32.chips import CHIPS

L431, G071 = CHIPS[0x435], CHIPS[0x460]
VECTORS = (0x20004000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little")
PINS = PinsSettings(backend="mock", nrst=PinSpec(1), boot0=PinSpec(2))


def programmed(chip=L431, **kw) -> SimChip:
    """A chip with an application, powered on since it was written (empty flag clear)."""
    sim = SimChip(chip, **kw)
    sim.flash[:8] = VECTORS
    sim.power_cycle()
    return sim


def unwired(sim: SimChip, signal: str) -> Callable[[str, bool], None]:
    """Mock pins whose `signal` line goes nowhere: the chip never sees it change."""
    return lambda name, high: None if name == signal else sim.set_line(name, high)


def run(sim: SimChip, *, pins: PinsSettings = PINS, baud: object = 115200,
        listener: Optional[Callable] = None, expect: Optional[int] = None) -> dict:
    with PtySim(sim) as pty:
        target = Target(UartSettings(pty.path, baud=baud), pins, expect_chip=expect,
                        connect_attempts=2)
        verdicts = doctor.diagnose(target, pin_backend=MockBackend(listener or sim.set_line),
                                   sleep=lambda s: None)
    assert [v.check for v in verdicts] == list(doctor.CHECKS)
    by = {v.check: v for v in verdicts}
    by["exit"] = doctor.exit_code(verdicts)
    return by


def test_a_healthy_board_passes_and_is_left_running_its_application():
    sim = programmed()
    by = run(sim)
    assert by["exit"] == 0
    assert {c: by[c].status for c in doctor.CHECKS} == {
        "port": "ok", "bootloader": "ok", "reset_pins": "ok", "chip": "ok",
        "read_protection": "ok", "boot_options": "ok", "empty_latch": "ok",
        "write_protection": "skipped"}  # the L43x table's option area ends before WRP1AR
    assert "silent after the reset" in by["reset_pins"].detail
    assert sim.mode == "application"


def test_boot0_stuck_high_the_chip_comes_back_to_its_bootloader():
    sim = programmed(boot0=True)  # BOOT0 tied high, our line goes nowhere
    by = run(sim, listener=unwired(sim, "boot0"))
    v = by["reset_pins"]
    assert v.status == "fail" and "comes back to its bootloader" in v.detail
    assert "BOOT0 really goes low" in v.fix and by["exit"] == 3


def test_boot0_not_wired_on_a_programmed_chip_finds_no_bootloader():
    sim = programmed(boot0=False)  # the pull-down keeps it low: the application always runs
    by = run(sim, listener=unwired(sim, "boot0"))
    assert by["bootloader"].status == "fail" and "BOOT0" in by["bootloader"].fix
    assert by["reset_pins"].status == "skipped" and by["exit"] == 3


def test_nrst_not_wired_the_bootloader_keeps_its_session():
    sim = programmed(boot0=True)  # in its bootloader since power-on; reset pulses go nowhere
    by = run(sim, listener=unwired(sim, "nrst"))
    v = by["reset_pins"]
    assert v.status == "fail" and "did not reset" in v.detail and "NRST" in v.fix
    assert by["exit"] == 3


def test_without_pins_the_reset_check_is_skipped_with_the_hint():
    sim = programmed(boot0=True)
    by = run(sim, pins=PinsSettings())
    assert by["reset_pins"].status == "skipped" and "--nrst" in by["reset_pins"].fix
    assert by["exit"] == 0 and sim.mode == "bootloader"  # as found


def test_a_blank_chip_tests_nrst_and_warns_about_the_empty_latch():
    sim = SimChip(L431)
    by = run(sim)
    assert by["reset_pins"].status == "ok" and "BOOT0 low cannot be tested" in \
        by["reset_pins"].detail
    assert by["empty_latch"].status == "warn" and "RAM routine" in by["empty_latch"].fix
    assert by["exit"] == 0


def test_factory_g0_option_bytes_fail_with_the_option_bytes_fix(capsys):
    sim = SimChip(G071)
    with PtySim(sim) as pty:
        code, out, _ = cli(capsys, "doctor", "--json", "--port", pty.path)
    verdicts = json.loads(out)
    assert [set(v) for v in verdicts] == [{"check", "status", "detail", "fix"}] * 8
    opts = next(v for v in verdicts if v["check"] == "boot_options")
    assert opts["status"] == "fail" and "nBOOT_SEL" in opts["detail"]
    assert "option-bytes --boot-from-pin" in opts["fix"] and code == 3


def test_write_protection_is_read_from_the_wrp_option_words():
    sim = programmed(G071)
    data = sim.mem.options.data
    data[:] = optbytes.boot_from_pin(G071, bytes(data))  # nBOOT_SEL=0: the pin counts
    wrp = 0x00030000  # WRP1A_STRT 0, WRP1A_END 3: pages 0-3 protected
    data[0x18:0x20] = wrp.to_bytes(4, "little") + (wrp ^ 0xFFFFFFFF).to_bytes(4, "little")
    by = run(sim)
    assert by["boot_options"].status == "ok"
    v = by["write_protection"]
    assert v.status == "fail" and "WRP1A: pages 0-3" in v.detail and by["exit"] == 5


def test_a_mini_uart_without_parity_fails_the_port_check(monkeypatch, capsys):
    # a pty standing in for the Pi's ttyS0: the kernel really drops PARENB on read-back
    monkeypatch.setattr(uart, "_is_pty", lambda fd: False)
    sim = SimChip(L431)
    with PtySim(sim) as pty:
        code, out, _ = cli(capsys, "doctor", "--port", pty.path)
    assert code == 3
    assert "[FAIL] port" in out and "ttyAMA0" in out
    assert out.count("[skip]") == 7
    assert not [e for e in sim.events if e[0] == "sync"]  # nothing reached the chip


def test_a_clock_error_reports_the_baud_that_worked_and_warns():
    sim = SimChip(L431, faults=Faults(clock_error=9.0))
    by = run(sim, baud="auto")
    v = by["bootloader"]
    assert v.status == "warn" and "19200 baud" in v.detail and "--baud 19200" in v.fix
    assert by["exit"] == 0


def test_read_protection_fails_and_hides_the_later_checks(capsys):
    sim = SimChip(L431, faults=Faults(read_protected=True))
    with PtySim(sim) as pty:
        code, out, _ = cli(capsys, "doctor", "--port", pty.path)
    assert code == 5 and "[FAIL] read_protection" in out
    assert out.count("hides the option bytes") == 3


def test_a_wrong_chip_fails_the_chip_check_and_still_leaves_normally():
    sim = programmed()
    by = run(sim, expect=0x460)
    assert by["chip"].status == "fail" and "expected 0x460" in by["chip"].detail
    assert by["exit"] == 4 and sim.mode == "application"


def test_the_exit_code_is_that_of_the_first_failure_and_warnings_pass():
    warn = doctor.Verdict("port", "warn", "8N1")
    rdp = doctor.Verdict("read_protection", "fail", "RDP", exit_code=5)
    chip = doctor.Verdict("chip", "fail", "other chip", exit_code=4)
    assert doctor.exit_code([warn]) == 0
    assert doctor.exit_code([warn, chip, rdp]) == 4
