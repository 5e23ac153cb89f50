"""The bootloader client over a real pty against the simulator (non-realtime), AN3155."""

from __future__ import annotations

import dataclasses

import pytest

from agent.errors import LinkTimeout, Nack, NoBootloader, ReadProtected, Unsupported, UsageError
from agent.link.uart import UartLink
from agent.stm32.bootloader import Bootloader, Timeouts
from agent.stm32.chips import CHIPS
from agent.stm32.protocol import pick_opcodes, stm32_crc32
from agent.sim import Faults, PtySim, SimChip

L432 = CHIPS[0x435]
FLASH = L432.flash_start
FAST = Timeouts(sync=0.3, byte=0.3, write_block=0.5, erase_page=0.5, mass_erase=2.0,
                checksum=1.0, unprotect=2.0, reset_settle=0.0)


class Recorder:
    """Passes everything to a real link and remembers what was written (no behaviour change)."""

    def __init__(self, link: UartLink) -> None:
        self.link = link
        self.caps = link.caps
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(bytes(data))
        self.link.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        return self.link.read(n, timeout)

    def flush_input(self) -> None:
        self.link.flush_input()

    def close(self) -> None:
        self.link.close()


def start(chip=L432, faults: Faults | None = None, **bl_kwargs):
    """A simulated chip in its bootloader behind a pty, and a client on it."""
    sim = SimChip(chip, realtime=False, faults=faults or Faults())
    sim.reset(boot0=True)
    pty = PtySim(sim).start()
    link = Recorder(UartLink(pty.path))
    bl = Bootloader(link, timeouts=bl_kwargs.pop("timeouts", FAST), **bl_kwargs)
    return sim, pty, link, bl


@pytest.fixture
def session():
    parts = start()
    yield parts
    parts[3].close()
    parts[1].stop()


def test_connect_identifies_l432_and_picks_stretching_opcodes(session):
    sim, _, link, bl = session
    info = bl.connect()
    assert info.pid == 0x435 and bl.info == info
    assert info.version == 0x31 and len(info.option_bytes) == 2
    assert 0x44 in info.commands and 0x43 not in info.commands
    assert link.frames[0] == b"\x7f"  # sync first
    assert bl.opcode("erase") == 0x44 and bl.opcode("write") == 0x31
    assert not bl.supports("checksum")  # USART V3.1: Get Checksum needs V3.3


def test_opcode_choice_prefers_no_stretch_only_where_the_link_wants_it():
    offered = [0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x32, 0x44, 0x45, 0x63, 0x64, 0xA1]
    assert pick_opcodes(offered, no_stretch=False)["erase"] == 0x44
    assert pick_opcodes(offered, no_stretch=True)["erase"] == 0x45
    assert pick_opcodes(offered, no_stretch=True)["write_protect"] == 0x64
    assert pick_opcodes([0x43, 0x31], no_stretch=True) == {"erase": 0x43, "write": 0x31}


def test_write_read_erase_round_trip(session):
    sim, _, _, bl = session
    bl.connect()
    data = bytes(range(256))
    bl.write_memory(FLASH, data)
    bl.write_memory(FLASH + 2048, data)
    assert bl.read_memory(FLASH, 256) == data
    assert bytes(sim.flash[2048:2304]) == data
    bl.erase_pages([0])
    assert bl.read_memory(FLASH, 256) == b"\xff" * 256
    assert bl.read_memory(FLASH + 2048, 16) == data[:16]  # page 1 untouched


def test_write_pads_to_four_bytes_and_checks_arguments(session):
    sim, _, _, bl = session
    bl.connect()
    bl.write_memory(FLASH + 8, b"\x01\x02\x03\x04\x05\x06")
    assert bytes(sim.flash[8:16]) == b"\x01\x02\x03\x04\x05\x06\xff\xff"
    with pytest.raises(UsageError, match="0x08000002"):
        bl.write_memory(FLASH + 2, b"\x00" * 4)
    with pytest.raises(UsageError, match="1..256"):
        bl.write_memory(FLASH, b"\x00" * 260)
    with pytest.raises(UsageError, match="1..256"):
        bl.read_memory(FLASH, 0)


def test_mass_erase(session):
    sim, _, _, bl = session
    bl.connect()
    bl.write_memory(FLASH + 100 * 2048, b"\x00" * 8)
    bl.mass_erase()
    assert bytes(sim.flash) == b"\xff" * len(sim.flash)


def test_erase_splits_at_511_pages_per_command():
    big = dataclasses.replace(L432, flash_size=1200 * 256, pages=((1200, 256),))
    sim, pty, link, bl = start(big)
    try:
        bl.connect()
        for page in (0, 510, 511, 1199):
            bl.write_memory(FLASH + page * 256, b"\x00" * 8)
        link.frames.clear()
        bl.erase_pages(range(1200))
        commands = [f for f in link.frames if f == b"\x44\xbb"]
        counts = [int.from_bytes(link.frames[i + 1][:2], "big") + 1
                  for i, f in enumerate(link.frames) if f == b"\x44\xbb"]
        assert len(commands) == 3 and counts == [511, 511, 178]
        assert bytes(sim.flash) == b"\xff" * len(sim.flash)
    finally:
        bl.close()
        pty.stop()


def test_erase_rejects_bad_page_numbers(session):
    _, _, _, bl = session
    bl.connect()
    with pytest.raises(UsageError):
        bl.erase_pages([])
    with pytest.raises(UsageError, match="-1"):
        bl.erase_pages([-1])


def test_checksum_uses_the_usart_v33_layout():
    v33 = dataclasses.replace(L432, uart_version=0x33)
    sim, pty, link, bl = start(v33)
    try:
        bl.connect()
        assert bl.supports("checksum")
        bl.write_memory(FLASH, bytes(range(64)))
        link.frames.clear()
        crc = bl.checksum(FLASH, 64)
        assert crc == stm32_crc32(bytes(sim.flash[:64]))
        assert link.frames[2] == b"\x00\x00\x00\x10\x10"  # 16 words, then its xor
        assert link.frames[3] == b"\x04\xc1\x1d\xb7\x6f"  # polynomial, then its xor
        assert link.frames[4] == b"\xff\xff\xff\xff\x00"  # initial value, then its xor
        assert len(link.frames) == 5
        with pytest.raises(UsageError):
            bl.checksum(FLASH, 6)
    finally:
        bl.close()
        pty.stop()


def test_checksum_unsupported_on_v31(session):
    _, _, _, bl = session
    bl.connect()
    with pytest.raises(Unsupported, match="checksum"):
        bl.checksum(FLASH, 64)


def test_go_leaves_the_bootloader(session):
    sim, _, _, bl = session
    bl.connect()
    bl.go(FLASH)
    assert sim.mode != "bootloader"


def test_read_protection_is_reported_not_removed(session):
    sim, pty, link, bl = start(faults=Faults(read_protected=True))
    try:
        bl.connect()
        bl_flash = bytes(sim.flash)
        with pytest.raises(ReadProtected, match="0x08000000.*MASS-ERASES") as err:
            bl.read_memory(FLASH, 16)
        assert err.value.code == "read_protected"
        assert bytes(sim.flash) == bl_flash
    finally:
        bl.close()
        pty.stop()


def test_nack_names_command_and_address():
    sim, pty, link, bl = start(faults=Faults(nack_every_write=2))
    try:
        bl.connect()
        with pytest.raises(Nack, match="WRITE_MEMORY at 0x0800"):
            for i in range(4):
                bl.write_memory(FLASH + 256 * i, b"\x00" * 256)
    finally:
        bl.close()
        pty.stop()


def test_dropped_byte_times_out_and_resync_recovers():
    sim, pty, link, bl = start(faults=Faults(drop_every=300))
    try:
        bl.connect()
        with pytest.raises(LinkTimeout, match="0x0800"):
            for i in range(8):
                bl.write_memory(FLASH + 256 * i, bytes(256))
        bl.resync()
        assert bl.read_memory(FLASH, 4) in (b"\x00" * 4, b"\xff" * 4)
    finally:
        bl.close()
        pty.stop()


def test_second_connect_accepts_nack_to_sync(session):
    _, _, _, bl = session
    first = bl.connect()
    assert bl.connect() == first  # 0x7F now reads as a command byte: NACK = already synced


def test_silent_chip_is_no_bootloader():
    sim, pty, link, bl = start(faults=Faults(silent_resets=1))
    try:
        with pytest.raises(NoBootloader, match="BOOT0"):
            bl.connect()
    finally:
        bl.close()
        pty.stop()


def test_legacy_erase_0x43_uses_one_byte_pages_and_splits_at_255():
    old = dataclasses.replace(L432, uart_version=0x22, flash_size=600 * 256, pages=((600, 256),))
    sim, pty, link, bl = start(old)
    try:
        bl.connect()
        assert bl.opcode("erase") == 0x43
        bl.write_memory(FLASH + 254 * 256, bytes(8))
        link.frames.clear()
        bl.erase_pages(range(254, 256))
        assert link.frames == [b"\x43\xbc", b"\x01\xfe\xff\x00"]  # N-1, pages, xor
        assert bytes(sim.flash[254 * 256:254 * 256 + 8]) == b"\xff" * 8
        link.frames.clear()
        bl.erase_pages(range(256))
        counts = [link.frames[i + 1][0] + 1 for i, f in enumerate(link.frames) if f == b"\x43\xbc"]
        assert counts == [255, 1]
        with pytest.raises(UsageError, match="0..255"):
            bl.erase_pages(range(300))
        with pytest.raises(Unsupported, match="Extended Erase"):
            bl.bank_erase(2)
        bl.write_memory(FLASH, bytes(8))
        link.frames.clear()
        bl.mass_erase()
        assert link.frames == [b"\x43\xbc", b"\xff\x00"]
        assert bytes(sim.flash[:8]) == b"\xff" * 8
    finally:
        bl.close()
        pty.stop()


def test_readout_protect_then_unprotect_mass_erases_and_resyncs(session):
    sim, _, _, bl = session
    bl.connect()
    bl.write_memory(FLASH, b"\x12" * 8)
    bl.readout_protect()
    bl.connect()
    with pytest.raises(ReadProtected):
        bl.read_memory(FLASH, 8)
    bl.readout_unprotect()
    bl.connect()
    assert bl.read_memory(FLASH, 8) == b"\xff" * 8
    bl.write_unprotect()
    assert bl.connect().pid == 0x435


def test_write_protect_keeps_data_out_until_write_unprotect(session):
    sim, _, link, bl = session
    bl.connect()
    link.frames.clear()
    bl.write_protect([0, 1])
    assert link.frames[:2] == [b"\x63\x9c", b"\x01\x00\x01\x00"]  # N-1, sectors, xor
    assert sim.mem.write_protected == {0, 1}
    bl.connect()  # the chip reset after WRITE PROTECT (AN3155 3.9)
    bl.write_memory(FLASH, b"\x12" * 8)  # AN3155 3.6: no error, the sector keeps its data
    assert bytes(sim.flash[:8]) == b"\xff" * 8
    bl.write_unprotect()
    bl.connect()
    bl.write_memory(FLASH, b"\x12" * 8)
    assert bytes(sim.flash[:8]) == b"\x12" * 8


def test_l412_extra_ack_after_sync_is_absorbed(pty_device):
    """flashers.md 1.2: bootloader V13.1 sends one ACK too many after the 0x7F sync."""
    path, script = pty_device
    script[b"\x7f"] = b"\x79\x79"
    script[b"\x01\xfe"] = b"\x79\x31\x00\x00\x79"
    bl = Bootloader(UartLink(path), timeouts=FAST)
    bl.sync()
    assert bl._get_version() == (0x31, b"\x00\x00")
    bl.close()


@pytest.fixture
def pty_device():
    """A real pty whose far end answers scripted requests (a device we can make misbehave)."""
    import os
    import threading
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    script: dict[bytes, bytes] = {}
    stop = threading.Event()

    def serve() -> None:
        pending = b""
        while not stop.is_set():
            import select
            if not select.select([master], [], [], 0.05)[0]:
                continue
            pending += os.read(master, 64)
            for request, answer in script.items():
                if pending.endswith(request):
                    os.write(master, answer)
                    pending = b""

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield os.ttyname(slave), script
    stop.set()
    thread.join()
    os.close(master)
    os.close(slave)
