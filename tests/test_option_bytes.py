"""BOOT0 ignored because of the user option bytes (issue 8, defect 2), and `option-bytes`.

Silicon facts the simulator follows (agent/sim/memory.py): a G0 leaves the factory with
OPTR 0xDFFFE1AA (RM0454 3.4.1 production value): nBOOT_SEL=1, so BOOT0 comes from the nBOOT0
bit and the pin is ignored (AN2606 pattern 11); the option area holds value and complement
(OpenBL OPENBL_OB_Write); writing it through WRITE_MEMORY starts at its base and ends, after
the ACK, in an option reload that resets the chip (AN3155 3.6; OpenBL OPENBL_OB_Launch).
"""

from __future__ import annotations

import json

import pytest
from cli_tools import cli

from agent.errors import BootConfigError, Nack
from agent.flasher import ops
from agent.flasher.image import Image, Segment
from agent.flasher.session import open_session
from agent.flasher.target import I2cSettings, PinsSettings, Target
from agent.pins import PinSpec
from agent.pins.mock import MockBackend
from agent.sim import PtySim, SimChip, SimI2CBus
from agent.stm32 import options as optbytes
from agent.stm32.chips import CHIPS

G071 = CHIPS[0x460]
VECTORS = (0x20004000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little")
IMAGE = Image([Segment(G071.flash_start, VECTORS + bytes(248))])


def _wired(sim, *, boot0=True):
    bus = SimI2CBus()
    bus.attach(0x51, sim)
    pins = PinsSettings(backend="mock", nrst=PinSpec(1), boot0=PinSpec(2) if boot0 else None)
    return dict(target=Target(I2cSettings(bus=1, address=0x51), pins), i2c_bus=bus,
                pin_backend=MockBackend(sim.set_line), sleep=lambda s: None)


def _optr(sim):
    raw = bytes(sim.mem.options.data[:8])
    return int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")


def test_factory_g0_reads_value_and_complement_and_refuses_register_reads():
    sim = SimChip(G071)
    with open_session(**_wired(sim)) as s:
        raw = s.bl.read_memory(0x1FFF7800, 8)
        assert raw == bytes.fromhex("aae1ffdf551e0020")  # 0xDFFFE1AA, then ~0xDFFFE1AA
        with pytest.raises(Nack):
            s.bl.read_memory(0x40022020, 4)  # FLASH_OPTR: not readable through the ROM
        assert s.options is not None and not s.options.pin_used and s.options.nboot0


def test_factory_g0_ignores_the_boot0_pin_once_flash_is_programmed():
    sim = SimChip(G071, boot0=True)
    assert sim.mode == "bootloader"  # empty flash: the empty check, not the pin
    sim.flash[:8] = VECTORS
    sim.power_cycle()
    assert sim.mode == "application"  # BOOT0 pin high, but nBOOT_SEL=1 ignores it


def test_flash_refuses_a_factory_g0_before_the_first_erase():
    """Fails on the old client: it flashed, and every later OTA found no bootloader."""
    sim = SimChip(G071, boot0=False)
    with pytest.raises(BootConfigError, match="option-bytes --boot-from-pin") as err:
        ops.flash(image=IMAGE, start_app=True, **_wired(sim))
    assert err.value.code == "boot0_ignored" and err.value.exit_code == 3
    assert not [e for e in sim.events if e[0] in ("erase", "mass_erase", "write")]


def test_without_a_boot0_pin_the_entry_path_does_not_depend_on_it():
    sim = SimChip(G071, boot0=False)
    _, how = ops.flash(image=IMAGE, start_app=True, **_wired(sim, boot0=False))
    assert how == "reset" and sim.mode == "application"


def test_boot_from_pin_programs_nboot_sel_and_the_chip_reloads_its_options():
    sim = SimChip(G071, boot0=False)
    identity, changed = ops.option_bytes(boot_from_pin=True, **_wired(sim))
    assert changed and identity.options.pin_used
    value, complement = _optr(sim)
    assert value == 0xDEFFE1AA and complement == value ^ 0xFFFFFFFF  # only bit 24 changed
    assert ("option_reload",) in sim.events
    # now the pin counts: flash, start, and the next OTA finds the bootloader again
    _, how = ops.flash(image=IMAGE, start_app=True, **_wired(sim))
    assert how == "reset" and sim.mode == "application"
    sim.reset(boot0=True)
    assert sim.mode == "bootloader"
    assert ops.option_bytes(boot_from_pin=True, **_wired(sim))[1] is False  # nothing to do


def test_l4_with_nswboot0_cleared_is_fixed_by_setting_it():
    sim = SimChip(CHIPS[0x435], boot0=False)
    sim.mem.options.data[3] &= ~0x04  # nSWBOOT0 = 0: BOOT0 from nBOOT0 (AN2606 pattern 6)
    sim.mem.options.data[7] |= 0x04
    opts = optbytes.decode(CHIPS[0x435], bytes(sim.mem.options.data[:8]))
    assert opts is not None and not opts.pin_used
    bus = SimI2CBus()
    bus.attach(0x48, sim)
    wired = dict(target=Target(I2cSettings(bus=1, address=0x48),
                               PinsSettings(backend="mock", nrst=PinSpec(1), boot0=PinSpec(2))),
                 i2c_bus=bus, pin_backend=MockBackend(sim.set_line), sleep=lambda s: None)
    assert ops.option_bytes(boot_from_pin=True, **wired)[1]
    assert _optr(sim)[0] >> 26 & 1 and sim.mem.boot0_signal(True)


def test_option_bytes_are_written_from_the_start_of_their_area():
    sim = SimChip(G071)
    with open_session(**_wired(sim)) as s:
        with pytest.raises(Nack):
            s.bl.write_memory(0x1FFF7808, b"\xff" * 8)  # AN3155 3.6: the area's base only
    assert ("option_reload",) not in sim.events


def test_f0_boot_sel_and_the_production_word():
    f091 = CHIPS[0x442]
    raw = (0x00FF55AA).to_bytes(4, "little")
    assert optbytes.decode(f091, raw).pin_used
    cleared = bytes([0xAA, 0x55, 0x7F, 0x80])
    assert not optbytes.decode(f091, cleared).pin_used
    assert optbytes.boot_from_pin(f091, cleared + bytes(12))[:4] == raw


def test_info_and_option_bytes_commands_show_the_option_word(capsys):
    sim = SimChip(G071)
    with PtySim(sim) as pty:
        port = ["--port", pty.path, "--parity", "none"]
        code, out, _ = cli(capsys, "info", *port)
        assert code == 0 and "OPTR 0xDFFFE1AA at 0x1FFF7800" in out and "pin is ignored" in out
        code, out, _ = cli(capsys, "info", "--json", *port)
        assert json.loads(out)["user_options"]["select_bit"] == "nBOOT_SEL"
        code, out, _ = cli(capsys, "option-bytes", "--json", *port)
        data = json.loads(out)
        assert code == 0 and not data["changed"] and not data["user_options"]["pin_used"]
