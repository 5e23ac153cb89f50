"""The bootloader client through SimI2CBus (AN4221 frames, no-stretch commands, BUSY polling)."""

from __future__ import annotations

import dataclasses

import pytest

from agent.errors import LinkTimeout, Nack, ReadProtected
from agent.link.i2c import I2cLink
from agent.stm32.bootloader import Bootloader, Timeouts
from agent.stm32.chips import CHIPS
from agent.stm32.protocol import ACK, BUSY, stm32_crc32
from agent.sim import Faults, SimChip, SimI2CBus

L432 = CHIPS[0x435]
FLASH = L432.flash_start
FAST = Timeouts(byte=0.3, write_block=0.5, erase_page=0.5, mass_erase=2.0, checksum=1.0,
                busy_poll_interval=0.0, reset_settle=0.0)


class RecordingBus:
    """Passes transfers to the simulated bus and remembers written frames."""

    def __init__(self, bus: SimI2CBus) -> None:
        self.bus = bus
        self.frames: list[bytes] = []

    def i2c_rdwr(self, *msgs) -> None:
        for m in msgs:
            if not m.flags & 1:
                self.frames.append(bytes(m))
        self.bus.i2c_rdwr(*msgs)


def start(chip=L432, faults: Faults | None = None, read_chunk=256, write_chunk=256,
          max_frame=8192, **kw):
    """A simulated chip on a simulated bus, and a client on it."""
    sim = SimChip(chip, realtime=False, faults=faults or Faults())
    sim.reset(boot0=True)
    bus = SimI2CBus()
    bus.attach(0x48, sim)
    rec = RecordingBus(bus)
    link = I2cLink(rec, 0x48, read_chunk=read_chunk, write_chunk=write_chunk, busy_poll=0.0,
                   max_frame=max_frame)
    return sim, rec, Bootloader(link, timeouts=kw.pop("timeouts", FAST), **kw)


def test_connect_picks_no_stretch_opcodes_and_has_no_option_bytes():
    sim, rec, bl = start()
    info = bl.connect()
    assert info.pid == 0x435 and info.version == 0x12 and info.option_bytes == b""
    assert rec.frames[0] == b"\x01\xfe"  # no 0x7F sync on I2C
    assert bl.opcode("write") == 0x32 and bl.opcode("erase") == 0x45
    assert bl.opcode("readout_unprotect") == 0x93 and bl.supports("checksum")


def test_write_read_in_the_seeds_small_chunks():
    sim, rec, bl = start(read_chunk=32, write_chunk=64)
    bl.connect()
    data = bytes(range(64))
    bl.write_memory(FLASH, data)
    assert bl.read_memory(FLASH, 32) + bl.read_memory(FLASH + 32, 32) == data
    with pytest.raises(ValueError):
        bl.read_memory(FLASH, 33)
    with pytest.raises(ValueError):
        bl.write_memory(FLASH, bytes(72))


def test_erase_sends_count_with_its_own_checksum_first():
    sim, rec, bl = start()
    bl.connect()
    bl.write_memory(FLASH + 2048, bytes(8))
    rec.frames.clear()
    bl.erase_pages([1])
    assert rec.frames == [b"\x45\xba", b"\x00\x00\x00", b"\x00\x01\x01"]  # AN4221 example
    assert not bl.last_erase_unconfirmed
    assert bytes(sim.flash[2048:2056]) == b"\xff" * 8


def _erase_counts(rec: RecordingBus) -> list[int]:
    return [int.from_bytes(rec.frames[i + 1][:2], "big") + 1
            for i, f in enumerate(rec.frames) if f == b"\x45\xba"]


def test_erase_splits_at_511_pages_whatever_the_write_chunk():
    big = dataclasses.replace(L432, flash_size=1200 * 256, pages=((1200, 256),))
    for write_chunk in (64, 256):  # the seed's small writes do not shrink the page list
        sim, rec, bl = start(big, write_chunk=write_chunk)
        bl.connect()
        rec.frames.clear()
        bl.erase_pages(range(1200))
        assert _erase_counts(rec) == [511, 511, 178]
        assert max(len(f) for f in rec.frames) == 2 * 511 + 1
        erased = [p for e in sim.events if e[0] == "erase" for p in e[1]]
        assert erased == list(range(1200))


def test_erase_splits_by_the_links_frame_limit():
    big = dataclasses.replace(L432, flash_size=1200 * 256, pages=((1200, 256),))
    sim, rec, bl = start(big, max_frame=258)  # 258-byte frames hold 128 page numbers + XOR
    bl.connect()
    rec.frames.clear()
    bl.erase_pages(range(300))
    assert _erase_counts(rec) == [128, 128, 44]
    assert max(len(f) for f in rec.frames) == 257


def test_checksum_uses_the_i2c_layout_and_matches_the_crc_unit():
    sim, rec, bl = start()
    bl.connect()
    bl.write_memory(FLASH, bytes(range(256)))
    rec.frames.clear()
    assert bl.checksum(FLASH, 256) == stm32_crc32(bytes(sim.flash[:256]))
    assert rec.frames[2] == b"\x00\x00\x01\x00\x01"  # size in bytes, then its xor


def test_missing_ack_after_erase_is_flagged_in_verify_mode():
    sim, rec, bl = start(faults=Faults(i2c_erase_no_ack=True))
    bl.connect()
    bl.write_memory(FLASH, bytes(8))
    bl.erase_pages([0])
    assert bl.last_erase_unconfirmed
    assert bytes(sim.flash[:8]) == b"\xff" * 8
    bl.connect()  # the bootloader still answers afterwards
    bl.erase_pages([1])
    assert bl.last_erase_unconfirmed


def test_missing_ack_after_erase_raises_in_strict_mode():
    sim, rec, bl = start(faults=Faults(i2c_erase_no_ack=True), i2c_erase_nack="strict")
    bl.connect()
    with pytest.raises((Nack, LinkTimeout), match="pages 0..0"):
        bl.erase_pages([0])


def test_read_protection_is_reported():
    sim, rec, bl = start(faults=Faults(read_protected=True))
    bl.connect()
    with pytest.raises(ReadProtected, match="read-out protection"):
        bl.read_memory(FLASH, 16)


class BusyBus:
    """A strict stand-in bus for one erase: ACKs the opcode and the page count, then answers
    the page list's final poll with BUSY `busy` times before ACK."""

    def __init__(self, busy: int, clock) -> None:
        self.busy = busy
        self.clock = clock
        self.polls: list[float] = []
        self.pending: list[int] = []
        self.writes = 0

    def i2c_rdwr(self, *msgs) -> None:
        (m,) = msgs
        assert m.addr == 0x48
        if not m.flags & 1:
            self.writes += 1
            assert self.writes <= 3, "one erase is opcode, count and page list"
            if self.writes < 3:
                self.pending.append(ACK)
            return
        assert m.len == 1, "only ACK frames expected"
        answer = self.pending.pop(0) if self.pending else None
        if answer is None:
            self.polls.append(self.clock.now)
            answer = BUSY if self.busy else ACK
            self.busy -= 1
        m.buf[0] = bytes([answer])


class FakeClock:
    """Deterministic time: sleep() advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _busy_client(busy: int) -> tuple[Bootloader, BusyBus, FakeClock]:
    clock = FakeClock()
    bus = BusyBus(busy, clock)
    link = I2cLink(bus, 0x48, clock=clock, sleep=clock.sleep)
    bl = Bootloader(link, timeouts=Timeouts(erase_page=2.0, busy_poll_interval=0.01),
                    clock=clock, sleep=clock.sleep, i2c_erase_nack="strict")
    bl._ops = {"erase": 0x45}
    return bl, bus, clock


def test_busy_polling_waits_per_page_deadline_then_times_out():
    bl, bus, clock = _busy_client(busy=10**9)
    with pytest.raises(LinkTimeout, match="pages 3..5 .*BUSY after 6 s"):
        bl.erase_pages([3, 4, 5])
    assert 6.0 <= clock.now < 6.1  # 3 pages x 2 s, polled every 10 ms
    assert len(bus.polls) > 500


def test_busy_polling_stops_at_ack():
    bl, bus, clock = _busy_client(busy=25)
    bl.erase_pages([7])
    assert len(bus.polls) == 26 and clock.now == pytest.approx(0.25)
    assert not bl.last_erase_unconfirmed


def test_get_reply_longer_than_guessed_is_asked_again_with_its_length():
    # AN4221 2.1 / OpenBL: GET's data is one read transaction; reading part of it leaves the
    # bootloader stretching SCL (issue 8 defect 8). stm32flash i2c_cmd_get_reply: resync,
    # GET again, read N+2.
    newer = dataclasses.replace(L432, i2c_version=0x13)  # not in the length table: guess 17
    sim, rec, bl = start(newer)
    info = bl.connect()
    assert len(info.commands) == 18 and 0xA1 in info.commands
    assert rec.frames.count(b"\x00\xff") == 2 and b"\xff\x00" in rec.frames
    assert bl.read_memory(FLASH, 4) == b"\xff" * 4  # the session works afterwards


# AN4221 2.1: from V2.0 the command set varies per product; its H5 example lists 15 commands
H5_LIKE = (0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x32, 0x44, 0x45, 0x63, 0x73, 0x82, 0x92,
           0x93, 0xA1)


def test_get_reply_shorter_than_guessed_is_asked_again_with_its_length():
    v2 = dataclasses.replace(L432, i2c_version=0x20)  # not in the length table: guess 17
    sim, rec, bl = start(v2, faults=Faults(i2c_commands=H5_LIKE))
    info = bl.connect()
    assert info.commands == H5_LIKE and info.version == 0x20
    assert ("i2c_overread", 19, 17) in sim.events  # 17 bytes: N, version, 15 codes
    assert info.pid == 0x435 and bl.opcode("erase") == 0x45


def test_write_protect_on_i2c_sends_count_and_list_as_two_frames():
    # OpenBL OPENBL_I2C_WriteProtect: [N, ~N] -> ACK, then [codes..., XOR of the codes]
    sim, rec, bl = start()
    bl.connect()
    rec.frames.clear()
    bl.write_protect([0, 1])
    assert rec.frames[:3] == [b"\x64\x9b", b"\x01\xfe", b"\x00\x01\x01"]
    assert sim.mem.write_protected == {0, 1}


def test_no_stretch_protection_commands():
    sim, rec, bl = start()
    bl.connect()
    bl.write_memory(FLASH, b"\x12" * 8)
    bl.readout_protect()
    bl.connect()
    with pytest.raises(ReadProtected):
        bl.read_memory(FLASH, 8)
    bl.readout_unprotect()
    bl.connect()
    assert bl.read_memory(FLASH, 8) == b"\xff" * 8
    assert b"\x83\x7c" in rec.frames and b"\x93\x6c" in rec.frames
