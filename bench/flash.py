#!/usr/bin/env python3
"""Benchmark: flash + verify a 64 KiB image at emulated 115200 baud, stm32ota vs stm32flash.

Both tools flash the same random image through the same simulator (`stm32ota sim`, real line
time at 11 bits per byte and the chip's erase/program times), one after the other, in one run.
Prints both times, their ratio, and each as a fraction of what the wire allows:

- payload limit: the image's bytes crossing the line once (no protocol at all);
- protocol limit: every byte the write + read-back protocol must move (AN3155 framing,
  ACKs, read-back) plus the chip's erase and programming time, i.e. a perfect host.

Usage: python bench/flash.py [--size 65536] [--baud 115200] [--chip 0x435] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.stm32.chips import find  # noqa: E402

BITS_PER_BYTE = 11  # 8E1: start + 8 data + parity + stop (AN3155 2.1)


def protocol_bytes(size: int, block: int = 256) -> int:
    """Bytes on the wire to write and read back `size` bytes in `block`-byte commands."""
    blocks = -(-size // block)
    # AN3155 3.5 WRITE: cmd+xor (2), ACK, address+xor (5), ACK, N + data + xor, ACK
    write = blocks * (2 + 1 + 5 + 1 + (1 + block + 1) + 1)
    # AN3155 3.2 READ: cmd+xor (2), ACK, address+xor (5), ACK, N+xor (2), ACK, data
    read = blocks * (2 + 1 + 5 + 1 + 2 + 1 + block)
    return write + read


def start_sim(pty: str, chip: str, baud: int) -> subprocess.Popen:
    """Start `stm32ota sim` and wait for its pty symlink."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", "sim", "--pty", pty, "--chip", chip,
                             "--baud", str(baud)], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not os.path.exists(pty):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the simulator did not start")
        time.sleep(0.05)
    return proc


def timed(cmd: list[str]) -> float:
    """Run a command, fail loudly if it fails, return its wall time."""
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}")
    return elapsed


def main() -> int:
    """Run both flashers and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--chip", default="0x435")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    stm32flash = shutil.which("stm32flash")
    chip = find(args.chip)
    pages = -(-args.size // chip.pages[0][1])
    erase_s = pages * chip.erase_ms_per_page / 1000
    program_s = args.size / chip.write_align * chip.program_us_per_word / 1e6
    payload_s = args.size * BITS_PER_BYTE / args.baud
    limit_s = protocol_bytes(args.size) * BITS_PER_BYTE / args.baud + erase_s + program_s
    results: dict[str, list[float]] = {"stm32ota": [], "stm32flash": []}
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.bin"
        image.write_bytes(os.urandom(args.size))
        pty = str(Path(tmp) / "stm32")
        for _ in range(args.runs):
            for tool in results:
                if tool == "stm32flash" and stm32flash is None:
                    continue
                sim = start_sim(pty, args.chip, args.baud)
                try:
                    if tool == "stm32ota":
                        cmd = [sys.executable, "-m", "agent", "-q", "flash", str(image), "--port", pty,
                               "--parity", "none", "--baud", str(args.baud), "--verify", "readback"]
                    else:  # a pty cannot do parity, so 8n1 for both (same bits per byte emulated)
                        cmd = [stm32flash, "-m", "8n1", "-b", str(args.baud), "-w", str(image), "-v",
                               pty]
                    results[tool].append(timed(cmd))
                finally:
                    sim.send_signal(signal.SIGTERM)
                    sim.wait(10)
    print(f"flash + verify {args.size // 1024} KiB on {chip.name} at {args.baud} baud (8E1 line time)")
    print(f"  payload limit  : {payload_s:6.2f} s  (image bytes once over the wire)")
    print(f"  protocol limit : {limit_s:6.2f} s  (write + read-back framing, erase, programming)")
    best = {tool: min(times) for tool, times in results.items() if times}
    for tool, t in best.items():
        print(f"  {tool:<10}: {t:6.2f} s  = {payload_s / t:5.1%} of payload limit, "
              f"{limit_s / t:5.1%} of protocol limit")
    if "stm32flash" in best:
        print(f"  ratio stm32ota / stm32flash: {best['stm32ota'] / best['stm32flash']:.2f} "
              "(below 1 = stm32ota faster)")
    else:
        print("  stm32flash not installed: no comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
