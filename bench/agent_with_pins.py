#!/usr/bin/env python3
"""`stm32ota run` whose mock reset pins are wired to a simulator in another process.

    agent_with_pins.py CONFIG SOCKET

The same start as `stm32ota run` (load_for_run, Service, SIGTERM stops it), except that each
target's pins are a strict MockBackend whose MCU-pin changes travel, one line per change, over
the Unix socket to the process that owns the simulator, which applies them and answers one
byte before the sequence goes on (so NRST and BOOT0 reach the chip in order, like wires).
A kill -9 of this process is a kill of the agent: bench/reliability_kill.py uses it for the
"with reset pins" half of its trials.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import load_for_run  # noqa: E402
from agent.service import flash_target  # noqa: E402
from agent.flasher.target import Devices  # noqa: E402
from agent.pins.mock import MockBackend  # noqa: E402
from agent.service import Service  # noqa: E402


def main(config: str, sock_path: str) -> int:
    """Run the agent until SIGTERM."""
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    wire = socket.socket(socket.AF_UNIX)
    wire.connect(sock_path)
    lock = threading.Lock()

    def listener(name: str, high: bool) -> None:
        with lock:
            wire.sendall(f"{name} {int(high)}\n".encode())
            wire.recv(1)

    cfg = load_for_run(config)
    devices = {t.name: Devices(pins=lambda: MockBackend(listener)) for t in cfg.targets}
    svc = Service(cfg, [flash_target(t) for t in cfg.targets], devices=devices)
    signal.signal(signal.SIGTERM, lambda *a: svc.stop())
    svc.start()
    svc.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
