"""Verifying by a CRC the chip computes from RAM, for bootloaders without Get Checksum (issue 10).

A USART bootloader before V3.3 (the L432's V3.1) has no 0xA1, so checking what was written
meant reading all of it back: as many bytes on the line again as the write. With NRST and
BOOT0 wired, the flasher uploads a routine (agent/stm32/ramcrc.py), starts it with GO,
brings the bootloader back with a reset and reads one CRC per page.

The routine's machine code is checked three ways that share no code: the simulator's Thumb
interpreter runs it (written from the ARMv6-M ARM), capstone (a disassembler nobody here
wrote) reads it back as the intended instructions, and its CRCs must equal zlib's.
"""

from __future__ import annotations

import os
import random
import threading
import zlib

import pytest

from agent.errors import NoBootloader, VerifyFailed
from agent.flasher import ops
from agent.flasher.image import Image, Segment
from agent.flasher.target import PinsSettings, Target, UartSettings
from agent.pins import PinSpec
from agent.pins.mock import MockBackend
from agent.sim import PtySim, SimChip
from agent.stm32 import ramcrc
from agent.stm32.chips import CHIPS

L432 = CHIPS[0x435]


def _run(sim: SimChip, job: ramcrc.CrcJob) -> list[int] | None:
    sim.mem.write(job.load, job.blob)
    sim.jump(job.load)
    return job.parse(sim.mem.read(job.results, 4 * (job.count + 1)))


def test_the_routine_computes_zlib_crcs_of_any_ranges():
    rng = random.Random(7)
    sim = SimChip(L432)
    data = bytes(rng.randrange(256) for _ in range(6000))
    sim.flash[:len(data)] = data
    cuts = [(0, 1), (1, 7), (9, 2048), (2100, 3), (3001, 2999)]  # odd starts and lengths
    items = [(L432.flash_start + at, n) for at, n in cuts]
    job = ramcrc.crc_job(items, L432.ram_start, L432.ram_end, nonce=0x1234ABCD)
    assert job is not None
    assert _run(sim, job) == [zlib.crc32(data[at:at + n]) for at, n in cuts]
    assert ("ram_code", "spinning") in sim.events


def test_a_stale_result_from_an_earlier_run_is_not_taken_for_this_one():
    sim = SimChip(L432)
    items = [(L432.flash_start, 64)]
    first = ramcrc.crc_job(items, L432.ram_start, L432.ram_end, nonce=1)
    assert _run(sim, first) is not None
    again = ramcrc.crc_job(items, L432.ram_start, L432.ram_end, nonce=2)
    assert again.results == first.results
    # the routine is loaded but never started: RAM still holds the first run's answers
    sim.mem.write(again.load, again.blob)
    assert again.parse(sim.mem.read(again.results, 8)) is None


def test_a_job_that_does_not_fit_the_ram_is_refused_and_zero_lengths_are_an_error():
    items = [(L432.flash_start + i, 4) for i in range(0, 80_000, 4)]
    assert ramcrc.crc_job(items, L432.ram_start, L432.ram_end, nonce=0) is None
    with pytest.raises(ValueError):
        ramcrc.crc_job([(L432.flash_start, 0)], L432.ram_start, L432.ram_end, nonce=0)


def test_the_routine_disassembles_as_intended():
    capstone = pytest.importorskip("capstone")
    load = L432.ram_start
    job = ramcrc.crc_job([(L432.flash_start, 16)], load, L432.ram_end, nonce=0)
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB)
    text = [f"{i.mnemonic} {i.op_str}" for i in md.disasm(job.blob[8:], load + 8)]
    loop = text.index("ldrb r3, [r0]")
    assert text[loop:loop + 10] == [
        "ldrb r3, [r0]", "adds r0, #1", "eors r3, r2", "uxtb r3, r3", "lsls r3, r3, #2",
        "ldr r3, [r7, r3]", "lsrs r2, r2, #8", "eors r2, r3", "cmp r0, r1",
        f"bne #0x{load + 8 + 2 * loop:x}"]
    assert text[3:7] == ["movs r1, r0", "movs r2, #8", "lsrs r1, r1, #1",
                         f"blo #0x{load + 8 + 2 * 8:x}"]  # BCC: over the XOR when bit 0 was 0
    spin = next(i for i, t in enumerate(text) if t == f"b #0x{load + 8 + 2 * i:x}")
    assert text[spin - 4:spin] == ["ldr r5, [pc, #0x10]", "ldr r0, [r5]", "mvns r0, r0",
                                   "str r0, [r4]"]


def test_a_reset_before_the_routine_is_done_leaves_no_answer():
    now = [0.0]
    sim = SimChip(L432, realtime=True, clock=lambda: now[0], core_hz=1e6)
    job = ramcrc.crc_job([(L432.flash_start, 4096)], L432.ram_start, L432.ram_end, nonce=5)
    sim.mem.write(job.load, job.blob)
    sim.jump(job.load)
    for thread in [t for t in threading.enumerate() if t.name == "sim-core"]:
        thread.join(5)
    now[0] = job.cycles / 1e6 / 2  # half way through
    sim.reset(boot0=True)
    assert sim.events[-2][0] == "ram_code_cut"
    assert job.parse(sim.mem.read(job.results, 8)) is None


def _flash(sim: SimChip, data: bytes, pins: bool = True, boot0: bool = True,
           verify: str = "auto", nrst: bool = True, enter: tuple[str, ...] = (),
           at: int = 0):
    with PtySim(sim) as pty:
        target = Target(UartSettings(port=pty.path, parity="none", baud=115200),
                        PinsSettings(backend="mock", nrst=PinSpec(1) if pins and nrst else None,
                                     boot0=PinSpec(2) if pins and boot0 else None,
                                     enter=enter),
                        verify=verify)
        result, _ = ops.flash(target, Image([Segment(L432.flash_start + at, data)]),
                              pin_backend=MockBackend(sim.set_line))
        return result, pty.stats


def test_a_uart_flash_with_reset_pins_verifies_by_the_chips_crc_not_by_reading_back():
    data = os.urandom(16 * 1024)
    sim = SimChip(L432)
    result, stats = _flash(sim, data)
    assert bytes(sim.flash[:len(data)]) == data
    assert result.verify == "ram-crc" and "verified by ram-crc" in result.summary()
    assert ("ram_code", "spinning") in sim.events
    # without pins, on a chip not blank at entry, the same flash reads all 16 KiB back
    result2, stats2 = _flash(_not_blank(), data, pins=False)
    assert result2.verify == "readback"
    assert stats.bytes_out < 2_000 < len(data) < stats2.bytes_out
    assert stats.round_trips < stats2.round_trips * 0.6


def _not_blank() -> SimChip:
    """An L432 whose flash held something at power-on: no empty check to come back by."""
    sim = SimChip(L432)
    sim.flash[0x8000:0x8008] = b"\x00" * 8  # far from the image, so the skip check sees no match
    sim.flash[:8] = bytes.fromhex("0030002009000008")
    sim.power_cycle()
    return sim


@pytest.mark.parametrize("wiring", [{"boot0": False}, {"pins": False},
                                    {"verify": "readback"}])
def test_without_a_sure_way_back_or_when_told_to_read_back_no_code_goes_to_ram(wiring):
    sim = _not_blank()
    result, _ = _flash(sim, os.urandom(2048), **wiring)
    assert result.verify == "readback"
    assert not any(e[0] == "go" for e in sim.events)


def test_without_pins_a_blank_chip_comes_back_through_its_empty_check():
    """No NRST, no BOOT0 pin: the routine resets the chip itself, and the empty-check flag
    latched at power-on (flash blank) boots the bootloader again, whatever BOOT0 does."""
    sim = SimChip(L432, boot0=False)  # BOOT0 low: only the empty check brought it up
    assert sim.mode == "bootloader" and sim.empty_flag
    data = os.urandom(4096)
    result, stats = _flash(sim, data, pins=False)
    assert bytes(sim.flash[:len(data)]) == data
    assert result.verify == "ram-crc" and ("ram_code", "system_reset") in sim.events
    assert stats.bytes_out < 1_000


def _lost_after_the_routine() -> SimChip:
    """A blank L432 that boots its application, not the ROM, at the routine's reset (as if
    the empty flag were sampled again there, which no documented part does)."""
    sim = SimChip(L432, boot0=False)
    real_reset = sim.system_reset

    def into_the_application(obl=False):
        real_reset(obl=obl)
        if sim.events[-2] == ("ram_code", "system_reset"):
            sim.empty_flag = False
            sim.set_line("nrst", False)
            sim.set_line("nrst", True)
    sim.system_reset = into_the_application
    return sim


def test_a_chip_that_does_not_come_back_is_reported_written_but_not_verified():
    sim = _lost_after_the_routine()
    data = os.urandom(2048)
    with pytest.raises(VerifyFailed) as err:
        _flash(sim, data, pins=False)
    assert err.value.code == "not_verified" and "written but not verified" in str(err.value)
    assert bytes(sim.flash[:len(data)]) == data and sim.mode == "application"


def test_a_re_flash_finds_the_unchanged_pages_by_the_chips_crc():
    data = bytearray(os.urandom(16 * 1024))
    sim = SimChip(L432)
    _flash(sim, bytes(data))
    result, stats = _flash(sim, bytes(data))
    assert result.pages_skipped == 8 and result.pages_erased == 0
    data[5000] ^= 0xFF  # one byte in page 2
    result, stats = _flash(sim, bytes(data))
    assert result.pages_skipped == 7 and result.pages_erased == 1
    assert bytes(sim.flash[:len(data)]) == bytes(data)
    assert stats.bytes_out < 2_000  # nothing read back but the CRCs (and the first look)
    assert sum(1 for e in sim.events if e == ("ram_code", "spinning")) == 2 + 2 + 1


def test_a_page_the_chip_says_differs_is_written_again(monkeypatch):
    data = os.urandom(8 * 1024)
    sim = SimChip(L432)
    program = sim.mem._program_flash
    spoiled = []

    def spoil_once(addr, chunk, strict):
        program(addr, chunk, strict)
        if addr == L432.flash_start + 4096 and not spoiled:  # page 2: one bit stays set
            spoiled.append(addr)
            sim.flash[4096 + 5] = data[4096 + 5] ^ 0x01
    monkeypatch.setattr(sim.mem, "_program_flash", spoil_once)
    result, _ = _flash(sim, data)
    assert spoiled and bytes(sim.flash[:len(data)]) == data
    assert result.verify == "ram-crc" and result.retries >= 1
    assert result.pages_erased == 4 + 1  # page 2 once more


def test_a_routine_that_never_finishes_in_time_falls_back_to_reading_back():
    sim = SimChip(L432, realtime=True, core_hz=2e3)  # far slower than the host's two waits
    data = os.urandom(2048)
    result, _ = _flash(sim, data)
    assert bytes(sim.flash[:len(data)]) == data
    assert result.verify == "readback"
    assert sum(1 for e in sim.events if e[0] == "ram_code_cut") == 2


def test_a_wrong_crc_from_the_chip_costs_a_read_back_not_a_rewrite(monkeypatch):
    """Read-back has the last word: a routine that miscounted (on some core nobody tried)
    makes the flash slower, never wrong and never rewritten for nothing."""
    real = ramcrc.CrcJob.parse
    monkeypatch.setattr(ramcrc.CrcJob, "parse",
                        lambda job, answer: [c ^ 1 for c in real(job, answer) or []] or None)
    data = os.urandom(4096)
    sim = SimChip(L432)
    result, _ = _flash(sim, data)
    assert bytes(sim.flash[:len(data)]) == data
    assert result.verify == "ram-crc" and result.pages_erased == 2 and result.retries == 0


def test_the_fast_paths_of_the_simulated_core_do_what_its_reference_step_does():
    """The CRC loop's instructions have calls of their own for speed (cpu._fast); on random
    registers and flags each must leave the core exactly as `_Core.step` does."""
    from agent.sim import cpu

    rng = random.Random(3)
    sim = SimChip(L432)
    sim.flash[:4096] = bytes(rng.randrange(256) for _ in range(4096))
    ops = [0x7803, 0x780A, 0x7FC1, 0x58D3, 0x5888, 0x4051, 0x405A, 0xB2DB, 0xB2C8, 0x0A09,
           0x0FC9, 0x0089, 0x07C0, 0x3001, 0x33FF, 0x4288, 0x4299, 0xD1F2, 0xD101]
    for op in ops:
        for _ in range(200):
            start = [rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0xFFFFFFFF, 0x80000000,
                                 rng.randrange(1 << 32)]) for _ in range(8)]
            for i in range(8):  # addresses: some registers point into flash
                if rng.random() < 0.5:
                    start[i] = L432.flash_start + rng.randrange(0, 2048, 4)
            flags = [rng.random() < 0.5 for _ in range(4)]
            cores = [cpu._Core(sim, cpu.FlashRegs("")) for _ in range(2)]
            for core in cores:
                core.r[:8] = start
                core.n, core.z, core.c, core.v = flags
            pc = 0x20003010
            fast = cpu._fast(cores[0], op, pc)
            assert fast is not None, hex(op)
            try:
                want = cores[1].step(op, pc)
            except Exception as err:  # noqa: BLE001 - the fast path must fail alike
                with pytest.raises(type(err)):
                    fast()
                continue
            assert fast() == want, hex(op)
            assert [(c.r, c.n, c.z, c.c, c.v, c.cycles) for c in cores][0] == \
                [(c.r, c.n, c.z, c.c, c.v, c.cycles) for c in cores][1], hex(op)


def test_a_boot0_pin_held_high_brings_it_back_without_nrst():
    sim = _not_blank()
    data = os.urandom(2048)
    result, _ = _flash(sim, data, nrst=False)
    assert result.verify == "ram-crc" and ("ram_code", "system_reset") in sim.events
    assert bytes(sim.flash[:len(data)]) == data


def test_an_entry_sequence_that_lets_boot0_go_leaves_no_way_back():
    sim = _not_blank()
    sim.reset(boot0=True)  # in the bootloader already; the sequence only pulses BOOT0
    result, _ = _flash(sim, os.urandom(2048), nrst=False,
                       enter=("boot0 high", "1ms", "boot0 low"))
    assert result.verify == "readback"
    assert not any(e[0] == "go" for e in sim.events)


def test_the_routine_sets_the_empty_flag_a_bootloader_may_have_cleared():
    """AN2606 45.3.1: a G0 bootloader V11.3 clears the flag while it starts; the chip would
    then boot the new (unchecked) application at the routine's reset. The routine sets the
    flag itself before SYSRESETREQ, so the ROM boots whatever the flag was."""
    sim = SimChip(L432, boot0=False)
    real_jump = sim.jump

    def jump(addr):
        sim.empty_flag = False  # as if the ROM had cleared it on start-up
        real_jump(addr)
    sim.jump = jump
    data = os.urandom(2048)
    result, _ = _flash(sim, data, pins=False)
    assert result.verify == "ram-crc" and sim.mode == "bootloader"
    assert bytes(sim.flash[:len(data)]) == data


def test_a_chip_lost_in_the_skip_check_says_nothing_was_written():
    sim = _lost_after_the_routine()
    with pytest.raises(NoBootloader) as err:
        _flash(sim, os.urandom(2048), pins=False, at=4096)  # not at page 0: the check runs
    assert "nothing was erased or written yet" in str(err.value)
    assert bytes(sim.flash) == b"\xff" * len(sim.flash)


def test_a_lost_go_ack_still_waits_for_the_routine(monkeypatch):
    from agent.errors import LinkTimeout
    from agent.stm32.bootloader import Bootloader

    real_go, lost = Bootloader.go, []

    def go(bl, addr):
        real_go(bl, addr)
        if addr == L432.ram_start and not lost:
            lost.append(addr)
            raise LinkTimeout("GO: no answer (the ACK was lost)")
    monkeypatch.setattr(Bootloader, "go", go)
    data = os.urandom(2048)
    result, _ = _flash(SimChip(L432), data)
    assert lost and result.verify == "ram-crc"
