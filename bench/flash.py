#!/usr/bin/env python3
"""Benchmark: stm32ota vs stm32flash on the simulator, side by side, in one run.

Both tools flash the same random image through the same simulator (`stm32ota sim`: real line
time at 11 bits per byte, the chip's erase and programming times), each on a fresh simulator:

1. full flash + verify at the given baud, with 0, 1 and 16 ms turnaround latency (`sim
   --latency`: a USB adapter holding each answer back, FTDI's default latency timer is 16 ms),
   with the round trips the simulator counted;
2. re-flash of the identical image, of the image with one page changed, and of another
   random image (UART, no 0xA1 on the L432's USART bootloader V3.1: the chip is no longer
   blank and no pins are wired, so stm32ota checks and verifies by read-back);
3. the same three flashes over the simulated I2C bus (bootloader V1.2 with Get Checksum), in
   this process: stm32flash needs a kernel /dev/i2c-N and cannot reach a simulated bus, so its
   column there repeats its UART times;
4. the full flash again at each latency with NRST and BOOT0 wired (mock pins driving the
   simulator, as the agent has them): stm32ota then verifies by a CRC the chip computes from
   RAM instead of reading the image back. A pty has no GPIO, so this runs in this process
   with the start-up time of `stm32ota flash --help` added, and is set against stm32flash's
   time at the same latency (its verify reads back with or without pins).

The full flashes are run `--repeat` times (default 3), the two tools taking turns on the same
simulator settings, and the median is shown, so a change in the machine's load between one
tool's run and the other's does not decide the ratio. Before the runs the package is compiled
to bytecode, as `pip install` leaves an installed package (without it each `stm32ota` start
would compile every module it imports, where PYTHONDONTWRITEBYTECODE is set).

Usage: python bench/flash.py [--size 65536] [--baud 115200] [--chip 0x435] [--latency 0,1,16]
                             [--repeat 3]
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.flasher import ops  # noqa: E402
from agent.flasher.image import Image, Segment  # noqa: E402
from agent.flasher.target import I2cSettings, PinsSettings, Target, UartSettings  # noqa: E402
from agent.pins import PinSpec  # noqa: E402
from agent.pins.mock import MockBackend  # noqa: E402
from agent.sim import PtySim, SimChip, SimI2CBus  # noqa: E402
from agent.stm32.chips import Chip, find  # noqa: E402

BITS_PER_BYTE = 11  # 8E1: start + 8 data + parity + stop (AN3155 2.1)


def protocol_bytes(size: int, block: int = 256) -> int:
    """Bytes on the wire to write and read back `size` bytes in `block`-byte commands."""
    blocks = -(-size // block)
    # AN3155 3.6 WRITE: cmd+xor (2), ACK, address+xor (5), ACK, N + data + xor, ACK
    write = blocks * (2 + 1 + 5 + 1 + (1 + block + 1) + 1)
    # AN3155 3.4 READ: cmd+xor (2), ACK, address+xor (5), ACK, N+xor (2), ACK, data
    read = blocks * (2 + 1 + 5 + 1 + 2 + 1 + block)
    return write + read


class Sim:
    """`stm32ota sim` in its own process; `stop()` returns the round trips it counted."""

    def __init__(self, pty: str, chip: str, baud: int, latency_ms: float) -> None:
        self.pty = pty
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "sim", "--pty", pty, "--chip", chip, "--baud",
             str(baud), "--latency", f"{latency_ms}ms"], cwd=ROOT, stderr=subprocess.PIPE,
            text=True)
        deadline = time.monotonic() + 15
        while not os.path.exists(pty):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the simulator did not start")
            time.sleep(0.05)

    def reset(self) -> None:
        """NRST pulse with BOOT0 high: a fresh bootloader for the next client."""
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.1)

    def stop(self) -> int:
        """Stop it; the round trips it served."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=10)
        for line in err.splitlines():
            if line.startswith("served:"):
                return int(line.split()[1])
        return -1


def timed(cmd: list[str]) -> float:
    """Run a command, fail loudly if it fails, return its wall time."""
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}")
    return elapsed


def flash_cmd(tool: str, image: Path, pty: str, baud: int) -> list[str]:
    """The command line of one flash + verify (8N1 on the pty: it has no parity bit; the
    simulator still charges 11 bits per byte)."""
    if tool == "stm32ota":
        return [sys.executable, "-m", "agent", "-q", "flash", str(image), "--port", pty,
                "--parity", "none", "--baud", str(baud)]
    return [shutil.which("stm32flash") or "stm32flash", "-m", "8n1", "-b", str(baud), "-w",
            str(image), "-v", pty]


def full_flash(tool: str, image: Path, pty: str, args: argparse.Namespace,
               latency: float) -> tuple[float, int]:
    """One full flash + verify on a fresh (blank) simulator: (wall time, round trips)."""
    sim = Sim(pty, args.chip, args.baud, latency)
    try:
        t = timed(flash_cmd(tool, image, pty, args.baud))
    finally:
        trips = sim.stop()
    return t, trips


def uart_runs(tools: list[str], images: dict[str, Path], pty: str, args: argparse.Namespace,
              rows: dict[str, dict[str, str]]) -> None:
    """Full flashes at each latency, the tools taking turns, median of `--repeat`; then the
    re-flashes of each tool on one zero-latency simulator."""
    for latency in args.latency:
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        trips: dict[str, int] = {}
        for n in range(args.repeat):
            for tool in tools if n % 2 == 0 else tools[::-1]:
                t, trips[tool] = full_flash(tool, images["full"], pty, args, latency)
                times[tool].append(t)
        for tool in tools:
            spread = f" ±{(max(times[tool]) - min(times[tool])) / 2:.2f}" if args.repeat > 1 else ""
            rows[f"UART full flash, {latency:g} ms latency"][tool] = \
                f"{statistics.median(times[tool]):.2f} s{spread} ({trips[tool]} rt)"
        if "stm32flash" in tools:
            rows[f"UART + pins, {latency:g} ms latency"]["stm32flash"] = \
                rows[f"UART full flash, {latency:g} ms latency"]["stm32flash"]
    for tool in tools:
        sim = Sim(pty, args.chip, args.baud, 0.0)
        try:
            timed(flash_cmd(tool, images["full"], pty, args.baud))
            for case in ("identical", "one page", "other"):
                sim.reset()
                rows[f"UART re-flash, {case}"][tool] = \
                    f"{timed(flash_cmd(tool, images[case], pty, args.baud)):.2f} s"
        finally:
            sim.stop()
    for case in ("identical", "one page"):
        if "stm32flash" in tools:
            rows[f"UART + pins, re-flash, {case}"]["stm32flash"] = \
                rows[f"UART re-flash, {case}"]["stm32flash"]


def _pins_flash(sim: SimChip, pty: PtySim, data: bytes, baud: int) -> tuple[float, int]:
    """One flash with mock NRST/BOOT0 driving `sim`: (seconds, round trips); checked."""
    target = Target(UartSettings(port=pty.path, parity="none", baud=baud),
                    PinsSettings(backend="mock", nrst=PinSpec(1), boot0=PinSpec(2)))
    trips, t0 = pty.stats.round_trips, time.monotonic()
    result, _ = ops.flash(target, Image([Segment(sim.chip.flash_start, data)]),
                          pin_backend=MockBackend(sim.set_line))
    seconds = time.monotonic() - t0
    if bytes(sim.flash[:len(data)]) != data or result.verify != "ram-crc":
        raise SystemExit(f"the flash with pins went wrong: {result.summary()}")
    return seconds, pty.stats.round_trips - trips


def pins_runs(chip: Chip, images: dict[str, bytes], args: argparse.Namespace,
              rows: dict[str, dict[str, str]]) -> None:
    """Full flashes with NRST and BOOT0 wired to the simulator, in this process, then the
    two re-flashes on the last one."""
    start_up = timed([sys.executable, "-m", "agent", "flash", "--help"])
    for latency in args.latency:
        times, trips = [], 0
        for _ in range(args.repeat):
            sim = SimChip(chip, baud=args.baud, realtime=True)
            with PtySim(sim, latency=latency / 1000) as pty:
                seconds, trips = _pins_flash(sim, pty, images["full"], args.baud)
                times.append(seconds + start_up)
                if latency == args.latency[0] and len(times) == args.repeat:
                    for case in ("identical", "one page"):
                        seconds, _ = _pins_flash(sim, pty, images[case], args.baud)
                        rows[f"UART + pins, re-flash, {case}"]["stm32ota"] = \
                            f"{seconds + start_up:.2f} s"
        spread = f" ±{(max(times) - min(times)) / 2:.2f}" if args.repeat > 1 else ""
        rows[f"UART + pins, {latency:g} ms latency"]["stm32ota"] = \
            f"{statistics.median(times):.2f} s{spread} ({trips} rt)"


def i2c_runs(chip: Chip, images: dict[str, Image]) -> dict[str, float]:
    """Flash, identical re-flash and one-page re-flash over the simulated I2C bus."""
    sim = SimChip(chip, realtime=True, boot0=True)
    bus = SimI2CBus()
    bus.attach(0x48, sim)
    target = Target(I2cSettings(bus=1, address=0x48), PinsSettings(backend="none"))
    out = {"start-up": timed([sys.executable, "-m", "agent", "flash", "--help"])}
    for case in ("full", "identical", "one page"):
        image = images["full" if case == "identical" else case]
        t0 = time.monotonic()
        result, _ = ops.flash(target, image, i2c_bus=bus)
        out[case] = time.monotonic() - t0
        if case == "full":
            out["verify step"] = result.seconds["verify"]
    return out


def main() -> int:
    """Run both flashers and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--chip", default="0x435")
    ap.add_argument("--latency", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.0, 1.0, 16.0], help="turnaround latencies in ms (default 0,1,16)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="full flashes per tool and latency; the median is shown (default 3)")
    args = ap.parse_args()
    compileall.compile_dir(ROOT / "agent", quiet=1)  # as an installed package has it
    chip = find(args.chip)
    page = chip.pages[0][1]
    data = os.urandom(args.size)
    changed = bytearray(data)
    changed[len(data) // 2] ^= 0xFF  # one byte in one page in the middle
    tools = ["stm32ota"] + (["stm32flash"] if shutil.which("stm32flash") else [])
    rows: dict[str, dict[str, str]] = {}
    for latency in args.latency:
        rows[f"UART full flash, {latency:g} ms latency"] = {}
    rows["UART re-flash, identical"] = {}
    rows["UART re-flash, one page"] = {}
    rows["UART re-flash, other"] = {}
    for latency in args.latency:
        rows[f"UART + pins, {latency:g} ms latency"] = {}
    rows["UART + pins, re-flash, identical"] = {}
    rows["UART + pins, re-flash, one page"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"full": Path(tmp) / "image.bin", "one page": Path(tmp) / "changed.bin",
                 "other": Path(tmp) / "other.bin"}
        files["full"].write_bytes(data)
        files["one page"].write_bytes(bytes(changed))
        files["other"].write_bytes(os.urandom(args.size))
        files["identical"] = files["full"]
        uart_runs(tools, files, str(Path(tmp) / "stm32"), args, rows)
    pins_runs(chip, {"full": data, "identical": data, "one page": bytes(changed)}, args, rows)
    start = chip.flash_start
    i2c = i2c_runs(chip, {"full": Image([Segment(start, data)]),
                          "one page": Image([Segment(start, bytes(changed))])})
    _report(args, chip, page, rows, i2c)
    return 0


def _report(args: argparse.Namespace, chip: Chip, page: int, rows: dict[str, dict[str, str]],
            i2c: dict[str, float]) -> None:
    pages = -(-args.size // page)
    limit = (protocol_bytes(args.size) * BITS_PER_BYTE / args.baud
             + pages * chip.erase_ms_per_page / 1000
             + args.size / chip.write_align * chip.program_us_per_word / 1e6)
    print(f"{args.size // 1024} KiB random image on {chip.name}, {args.baud} baud 8E1 line "
          f"time; protocol limit of write + read-back: {limit:.2f} s (rt = round trips)")
    print(f"  {'':38}{'stm32ota':>26}{'stm32flash':>26}{'ratio':>8}")
    for name, row in rows.items():
        ota, ref = row.get("stm32ota", "-"), row.get("stm32flash", "-")
        print(f"  {name:<38}{ota:>26}{ref:>26}{_ratio(ota, ref):>8}")
    ref_same = rows["UART re-flash, identical"].get("stm32flash")
    ref_one = rows["UART re-flash, one page"].get("stm32flash")
    for case, ref in (("full", rows[f"UART full flash, {args.latency[0]:g} ms latency"]
                       .get("stm32flash")), ("identical", ref_same), ("one page", ref_one)):
        ota = f"{i2c[case] + i2c['start-up']:.2f} s"
        ref_time = ref.split()[0] + " s (UART)" if ref else "-"
        print(f"  {'I2C (0xA1) ' + case:<38}{ota:>26}{ref_time:>26}{_ratio(ota, ref):>8}")
    print(f"  I2C runs in this process; their times include {i2c['start-up']:.2f} s, what "
          "`stm32ota flash --help` takes to start")
    print(f"  I2C full flash: the verify step took {i2c['verify step']:.3f} s")
    print("  UART + pins: NRST and BOOT0 wired (mock pins), verified by a CRC computed on the "
          "chip; run in this process with the start-up time added")


def _ratio(ota: str, ref: Optional[str]) -> str:
    if not ref or ref == "-" or ota == "-":
        return "-"
    return f"{float(ota.split()[0]) / float(ref.split()[0]):.3f}"


if __name__ == "__main__":
    sys.exit(main())
