"""execute(): erase, write and verify on the simulated chip through the real client and links."""

from __future__ import annotations

import io
import threading
from typing import Iterator

import pytest

from agent.errors import Aborted, EXIT_INTERRUPTED, LinkTimeout, Nack, VerifyFailed
from agent.flasher.image import Image, Segment, parse
from agent.flasher.execute import Result, execute
from agent.flasher.plan import Plan, plan
from agent.link.i2c import I2cLink
from agent.link.uart import UartLink
from agent.progress import ProgressPrinter, Throttled
from agent.stm32.bootloader import Bootloader, Timeouts
from agent.stm32.chips import CHIPS
from agent.sim import Faults, PtySim, SimChip, SimI2CBus
from cli_tools import ihex, srec

L432 = CHIPS[0x435]
BASE = L432.flash_start
PAGE = 2048
FAST = Timeouts(sync=0.3, byte=0.3, write_block=0.5, erase_page=0.5, mass_erase=2.0,
                checksum=1.0, unprotect=2.0, busy_poll_interval=0.0, reset_settle=0.0)


def blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 13 + seed) & 0xFF for i in range(n))


# Gaps inside a page, across pages and an unaligned end: the shapes real HEX files have.
GAPPY = Image([Segment(BASE, blob(700)), Segment(BASE + 703, blob(9, 1)),
               Segment(BASE + 3 * PAGE - 5, blob(300, 2)), Segment(BASE + 10 * PAGE, blob(1, 3))])


def written(p: Plan) -> int:
    """Bytes the plan writes (padding included, 0xFF stretches left out)."""
    return sum(len(b.data) for b in p.blocks)


def _pairs(image: Image) -> list[tuple[int, bytes]]:
    """The image's segments as (address, data) for the file writers."""
    return [(s.address, s.data) for s in image.segments]


class Events:
    """Records progress calls and can act on them (cancel, disturb the chip)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.hook = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.calls.append((phase, done, total))
        if self.hook:
            self.hook(phase, done, total)

    def phases(self) -> list[str]:
        return list(dict.fromkeys(p for p, _, _ in self.calls))


def assert_flash_holds(sim: SimChip, p: Plan, image: Image) -> None:
    """Image bytes are in flash; the rest of every erased page is blank."""
    for page in p.pages:
        addr, size = p.page_table[page]
        got = bytes(sim.flash[addr - BASE:addr - BASE + size])
        assert got == image.read(addr, size, 0xFF), f"page {page} differs"


@pytest.fixture
def uart() -> Iterator:
    """Start a UART session on a pty: call with faults, get (sim, bootloader)."""
    started: list = []

    def start(faults: Faults | None = None, chip=L432):
        sim = SimChip(chip, realtime=False, faults=faults or Faults())
        sim.reset(boot0=True)
        pty = PtySim(sim).start()
        bl = Bootloader(UartLink(pty.path), timeouts=FAST)
        started.append((pty, bl))
        bl.connect()
        return sim, bl

    yield start
    for pty, bl in started:
        bl.close()
        pty.stop()


def i2c(faults: Faults | None = None, write_chunk: int = 256, **kw) -> tuple[SimChip, Bootloader]:
    """An I2C session on the simulator's bus (the only mocked part: the bus)."""
    sim = SimChip(L432, realtime=False, faults=faults or Faults())
    sim.reset(boot0=True)
    bus = SimI2CBus()
    bus.attach(L432.i2c_address, sim)
    link = I2cLink(bus, L432.i2c_address, write_chunk=write_chunk, busy_poll=0.0)
    bl = Bootloader(link, timeouts=FAST, **kw)
    bl.connect()
    return sim, bl


# --- the good path ----------------------------------------------------------------------------

def test_hex_with_gaps_over_uart_verified_by_readback(uart) -> None:
    sim, bl = uart()
    sim.flash[20 * PAGE:21 * PAGE] = b"\x00" * PAGE  # an old page the image does not touch
    image = parse(ihex(_pairs(GAPPY)).encode(), "hex")
    p = plan(image, L432)
    events = Events()
    result = execute(p, bl, events)
    assert_flash_holds(sim, p, image)
    assert bytes(sim.flash[20 * PAGE:21 * PAGE]) == b"\x00" * PAGE  # safety rule 4
    assert (result.verify, result.retries) == ("readback", 0)  # USART V3.1: no 0xA1
    assert result.pages_erased == len(p.pages) == 4
    assert result.bytes_written == written(p)
    assert set(result.seconds) == {"check", "erase", "write", "verify"}
    assert events.phases() == ["erase", "write", "verify"]
    assert events.calls[0] == ("erase", 0, 4) and ("erase", 4, 4) in events.calls
    assert events.calls[-1] == ("verify", written(p), written(p))
    writes = [d for ph, d, _ in events.calls if ph == "write"]
    assert writes == sorted(writes) and writes[-1] == written(p)


def test_srec_over_i2c_verified_by_the_chips_checksum() -> None:
    sim, bl = i2c()
    image = parse(srec(_pairs(GAPPY)).encode(), "srec")
    p = plan(image, L432)
    result = execute(p, bl)
    assert result.verify == "crc"
    assert_flash_holds(sim, p, image)


def test_bin_in_the_seeds_64_byte_i2c_writes() -> None:
    sim, bl = i2c(write_chunk=64)
    image = parse(blob(5000, 7), "bin", BASE + 4 * PAGE)
    p = plan(image, L432, max_write=64)
    result = execute(p, bl, verify="readback")
    assert result.verify == "readback"
    assert bytes(sim.flash[4 * PAGE:4 * PAGE + 5000]) == blob(5000, 7)


def test_mass_erase_mode_clears_the_whole_flash(uart) -> None:
    sim, bl = uart()
    sim.flash[-8:] = b"\x00" * 8
    image = Image([Segment(BASE, blob(64))])
    result = execute(plan(image, L432, erase="mass"), bl)
    assert bytes(sim.flash[-8:]) == b"\xff" * 8
    assert result.pages_erased == 128


def test_verify_none_is_only_what_was_asked() -> None:
    sim, bl = i2c()
    events = Events()
    result = execute(plan(Image([Segment(BASE, blob(64))]), L432), bl, events, verify="none")
    assert result.verify == "none" and "verify" not in events.phases()


# --- faults that are recovered ------------------------------------------------------------------

def test_nack_every_fifth_write_is_retried(uart) -> None:
    sim, bl = uart(Faults(nack_every_write=5))
    image = Image([Segment(BASE, blob(4000))])
    p = plan(image, L432)
    result = execute(p, bl)
    assert result.retries >= len(p.blocks) // 5 - 1
    assert_flash_holds(sim, p, image)


def test_dropped_bytes_on_the_wire_are_resynced_and_retried(uart) -> None:
    sim, bl = uart(Faults(drop_every=1100))  # one byte lost mid-write
    image = Image([Segment(BASE, blob(1024))])
    p = plan(image, L432)
    result = execute(p, bl)
    assert result.retries >= 1
    assert_flash_holds(sim, p, image)


def test_corrupted_answers_from_the_chip_are_recovered(uart) -> None:
    sim, bl = uart(Faults(corrupt_every=500))
    image = Image([Segment(BASE, blob(3000, 5))])
    p = plan(image, L432)
    result = execute(p, bl)
    assert result.retries >= 1
    assert_flash_holds(sim, p, image)


class GarblingWrites:
    """The real client, but the first write at `at` lands garbled and its ACK is lost: noise
    that passes the XOR check (1 in 256) and then eats the answer."""

    def __init__(self, bl: Bootloader, at: int, times: int = 1) -> None:
        self.bl, self.at, self.times = bl, at, times

    def __getattr__(self, name: str):
        return getattr(self.bl, name)

    def write_memory(self, addr: int, data: bytes) -> None:
        if addr == self.at and self.times:
            self.times -= 1
            self.bl.write_memory(addr, bytes(b ^ 0x5A for b in data))
            raise LinkTimeout(f"WRITE_MEMORY at 0x{addr:08X}: no answer (test)")
        self.bl.write_memory(addr, data)


def test_a_garbled_write_that_landed_gets_its_page_erased_and_rewritten(uart) -> None:
    sim, bl = uart()
    image = Image([Segment(BASE, blob(3 * PAGE, 7))])
    p = plan(image, L432)
    result = execute(p, GarblingWrites(bl, BASE + PAGE + 512), verify="none")
    assert result.retries >= 2  # the write, then the page
    assert_flash_holds(sim, p, image)


def test_writes_that_keep_landing_garbled_fail_naming_the_block() -> None:
    sim, bl = i2c()
    image = Image([Segment(BASE, blob(PAGE, 7))])
    with pytest.raises(VerifyFailed) as e:
        execute(plan(image, L432), GarblingWrites(bl, BASE + 256, times=99), retries=2)
    assert e.value.code == "write_failed"
    assert e.value.phase == "write" and e.value.address == BASE + 256


def test_flash_that_reads_wrong_is_erased_and_rewritten_not_reprogrammed() -> None:
    # The simulated L4 refuses to program a written double word again (ECC), so this only
    # passes if the whole page is erased before the rewrite.
    sim, bl = i2c()
    image = Image([Segment(BASE, blob(3 * PAGE, 9))])
    p = plan(image, L432)
    events = Events()

    def flip_once(phase: str, done: int, total: int) -> None:
        if phase == "verify" and done == 0:
            sim.flash[PAGE + 100] ^= 0x01
            events.hook = None

    events.hook = flip_once
    result = execute(p, bl, events)
    assert result.retries == 1 and result.pages_erased == 4
    assert_flash_holds(sim, p, image)


def test_a_slow_erase_within_its_deadline_succeeds(uart) -> None:
    sim, bl = uart(Faults(erase_factor=10))  # 22 ms pages take 0.22 s; the deadline is 0.5 s/page
    image = Image([Segment(BASE, blob(3 * PAGE))])
    p = plan(image, L432)
    execute(p, bl)
    assert_flash_holds(sim, p, image)


def test_an_erase_past_its_deadline_fails_as_a_timeout_naming_the_erase(uart) -> None:
    sim, bl = uart(Faults(erase_factor=60))  # 1.3 s a page against 0.5 s a page
    sim.flash[:PAGE] = b"\x00" * PAGE
    image = Image([Segment(BASE, blob(2 * PAGE))])
    with pytest.raises(LinkTimeout) as err:
        execute(plan(image, L432), bl, retries=1)
    assert err.value.phase == "erase" and "0x08000000" in str(err.value), str(err.value)
    assert not [e for e in sim.events if e[0] == "write"], "nothing may be written after it"


def test_l432_i2c_erase_without_final_ack_is_blank_checked() -> None:
    sim, bl = i2c(Faults(i2c_erase_no_ack=True))
    sim.flash[:3 * PAGE] = b"\x5a" * (3 * PAGE)
    image = Image([Segment(BASE, blob(2 * PAGE + 8, 4))])
    p = plan(image, L432)
    result = execute(p, bl)
    assert bl.last_erase_unconfirmed  # the quirk really happened
    assert result.retries == 0
    assert_flash_holds(sim, p, image)
    assert any(e[0] == "fault" and e[1] == "i2c-erase-no-ack" for e in sim.events)


# --- faults that fail, with the right error ---------------------------------------------------

def test_a_chip_that_nacks_every_write_fails_naming_phase_and_address(uart) -> None:
    sim, bl = uart(Faults(nack_every_write=1))
    p = plan(Image([Segment(BASE + PAGE, blob(64))]), L432)
    with pytest.raises(Nack) as e:
        execute(p, bl, retries=2)
    assert e.value.phase == "write" and e.value.address == BASE + PAGE
    assert f"write at 0x{BASE + PAGE:08X}" in str(e.value)


def test_write_protected_page_fails_verify_naming_the_first_differing_byte() -> None:
    # AN3155: writes and erases of write-protected sectors succeed silently; only verify sees it
    sim, bl = i2c()
    sim.mem.write_protected.add(1)
    sim.flash[PAGE:2 * PAGE] = b"\xff" * 16 + b"\x00" * (PAGE - 16)
    image = Image([Segment(BASE + PAGE, b"\xff" * 20 + blob(100, 1))])
    with pytest.raises(VerifyFailed) as e:
        execute(plan(image, L432), bl, retries=2)
    err = e.value
    assert err.phase == "verify" and err.address == BASE + PAGE + 16
    assert "reads 0x00, the image has 0xFF" in str(err) and err.code == "verify_failed"


def test_unconfirmed_erase_that_left_data_fails_as_erase_failed() -> None:
    sim, bl = i2c(Faults(i2c_erase_no_ack=True))
    sim.mem.write_protected.add(2)
    sim.flash[2 * PAGE:3 * PAGE] = b"\x00" * PAGE
    with pytest.raises(VerifyFailed) as e:
        execute(plan(Image([Segment(BASE + 2 * PAGE, blob(16))]), L432), bl, retries=1)
    assert e.value.code == "erase_failed" and e.value.phase == "erase"
    assert e.value.address == BASE + 2 * PAGE


def test_writing_over_old_data_without_erase_is_refused_by_l4(uart) -> None:
    sim, bl = uart()
    sim.flash[:8] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    with pytest.raises(Nack) as e:
        execute(plan(Image([Segment(BASE, blob(8, 1))]), L432, erase="none"), bl, retries=1)
    assert e.value.phase == "write" and e.value.address == BASE


def test_cancel_between_blocks_raises_aborted() -> None:
    sim, bl = i2c()
    cancel = threading.Event()
    events = Events()
    events.hook = lambda ph, done, total: cancel.set() if ph == "write" and done >= 512 else None
    p = plan(Image([Segment(BASE, blob(4096))]), L432)
    with pytest.raises(Aborted) as e:
        execute(p, bl, events, cancel=cancel)
    assert e.value.phase == "write" and e.value.address == BASE + 512
    assert e.value.exit_code == EXIT_INTERRUPTED
    assert bytes(sim.flash[512:4096]) == b"\xff" * (4096 - 512)  # nothing after the cancel


def test_cancel_before_start_touches_nothing() -> None:
    sim, bl = i2c()
    sim.flash[:8] = b"\x00" * 8
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Aborted):
        execute(plan(Image([Segment(BASE, blob(8))]), L432), bl, cancel=cancel)
    assert bytes(sim.flash[:8]) == b"\x00" * 8


def test_result_summary_for_people() -> None:
    r = Result(bytes_written=1024, pages_erased=2, retries=3, verify="crc",
               seconds={"erase": 0.3, "write": 1.0, "verify": 0.2})
    assert r.summary() == ("erased 2 pages, wrote 1024 bytes, verified by crc, 3 retries in "
                           "1.5 s (erase 0.3 s, write 1.0 s, verify 0.2 s)")
    assert "not verified" in Result(verify="none").summary()


# --- ProgressPrinter --------------------------------------------------------------------------

class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_printer_on_a_pipe_writes_sparse_plain_lines() -> None:
    out, clock = io.StringIO(), Clock()
    p = ProgressPrinter(out, tty=False, every=5.0, step_percent=10, clock=clock)
    p("erase", 0, 4)
    p("erase", 4, 4)
    p("write", 0, 1000)
    for done in range(100, 1001, 100):  # 10% steps, 1 s apart: only every 5 s is shown
        clock.now += 1.0
        p("write", done, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "erase:   0% 0/4 pages"
    assert lines[1] == "erase: 100% 4/4 pages"
    assert lines[2] == "write:   0% 0/1000 bytes"
    assert lines[3].startswith("write:  50% 500/1000 bytes 100 B/s")
    assert lines[4].startswith("write: 100% 1000/1000 bytes")
    assert len(lines) == 5 and "\r" not in out.getvalue()


def test_printer_on_a_tty_redraws_one_line_with_a_rate() -> None:
    out, clock = io.StringIO(), Clock()
    p = ProgressPrinter(out, tty=True, width=10, redraw=0.5, clock=clock)
    p("write", 0, 2048)
    clock.now += 0.1
    p("write", 512, 2048)  # too soon: not drawn
    clock.now += 0.9
    p("write", 1024, 2048)
    clock.now += 1.0
    p("write", 2048, 2048)
    p("verify", 0, 2048)
    p.close()
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 4
    assert frames[1].startswith("write  [#####-----]  50% 1024/2048 bytes 1.0 KiB/s")
    assert frames[2].startswith("write  [##########] 100%") and frames[2].endswith("\n")
    assert frames[3].startswith("verify [----------]   0%") and text.endswith("\n")


def test_throttled_passes_phase_changes_and_ends_at_most_once_per_interval() -> None:
    seen: list[tuple[str, int, int]] = []
    clock = Clock()
    t = Throttled(lambda *a: seen.append(a), interval=1.0, clock=clock)
    for done in range(0, 101, 10):
        clock.now += 0.3
        t("write", done, 100)
    t("verify", 0, 100)
    assert seen == [("write", 0, 100), ("write", 40, 100), ("write", 80, 100),
                    ("write", 100, 100), ("verify", 0, 100)]
