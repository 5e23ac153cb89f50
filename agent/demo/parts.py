"""The demo's stand-ins for the outside world: an MQTT broker, a firmware web server, images.

    broker = start_broker()          # amqtt (child process), else a mosquitto binary; .restart()
    with FileServer(dir) as web: web.url("pump-1.1.0.hex")
    make_image("pump-ctrl", "1.1.0", 20 * 1024)  -> bytes (vector table, code, version string)
    write_ihex(path, data, address)

Nothing here is used by the agent itself; `agent.demo` wires these to the real agent.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from agent.errors import UsageError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
RESERVED_PORTS = frozenset({1883, 8883})  # a broker this machine may run for real
FLASH_BASE = 0x08000000  # RM0394: main flash of the STM32L4
STACK_TOP = 0x2000C000  # RM0394: end of the L432's SRAM1 (48 KiB)
VECTORS = 16 + 84  # Cortex-M4 core vectors + the L43x's interrupt lines (RM0394 table 46)
CODE_START = 0x200  # first instruction after the vector table, 512-byte aligned like GCC's


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never 1883/8883)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def _wait_listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# ----- MQTT brokers ---------------------------------------------------------------------------


class BrokerProcess:
    """A broker in a child process on a free loopback port; stop() kills it like a crash would.

    amqtt runs as `python -m agent.demo.parts PORT` rather than on a thread of the demo:
    amqtt 0.12's graceful Broker.shutdown() can hang with clients connected (a reader task
    never finishes cancelling), so an in-process restart was not reliable; killing a process
    is reliable and is also the fault the demo wants to show (the broker's host going away).
    """

    def __init__(self, kind: str, argv: list[str], protocol: int, port: int,
                 config: Optional[str] = None) -> None:
        self.kind, self.protocol = kind, protocol
        self.host, self.port = HOST, port
        self._dir = tempfile.mkdtemp(prefix="stm32ota-demo-broker-")
        if config is not None:
            Path(self._dir, "broker.conf").write_text(config, encoding="utf-8")
        self._argv = [a.replace("{dir}", self._dir) for a in argv]
        self._log = Path(self._dir, "broker.log")
        self._proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        """Start the process and wait until it listens; UsageError with its log otherwise."""
        with open(self._log, "ab") as log_file:
            self._proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL,
                                          stdout=log_file, stderr=log_file)
        if not _wait_listening(self.host, self.port, 15):
            self.stop()
            tail = self._log.read_text(errors="replace").strip().splitlines()[-3:]
            raise UsageError(f"{self.kind} did not start listening on {self.host}:{self.port}"
                             + (f": {' / '.join(tail)}" if tail else ""),
                             code="broker_unavailable")

    def stop(self) -> None:
        """Kill the process: every client sees its connection drop."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def restart(self, down: float = 1.0) -> None:
        """Stop, stay down `down` seconds, start on the same port."""
        self.stop()
        time.sleep(down)
        self.start()

    def close(self) -> None:
        """Stop and remove the temporary files."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def amqtt_broker(port: Optional[int] = None) -> BrokerProcess:
    """amqtt (MQTT 3.1.1 only: an MQTT 5 CONNECT is refused) in a child process."""
    port = port or free_port()
    return BrokerProcess("embedded amqtt", [sys.executable, "-m", "agent.demo.parts", str(port)],
                         protocol=4, port=port)


def mosquitto_broker(binary: str, port: Optional[int] = None) -> BrokerProcess:
    """A mosquitto binary: anonymous, no persistence."""
    port = port or free_port()
    conf = f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n"
    return BrokerProcess("mosquitto", [binary, "-c", "{dir}/broker.conf"], protocol=5,
                         port=port, config=conf)


def start_broker() -> BrokerProcess:
    """amqtt from the `demo` extra, else a mosquitto binary; UsageError saying what to install."""
    if importlib.util.find_spec("amqtt") is not None:
        broker = amqtt_broker()
        try:
            broker.start()
            return broker
        except UsageError as err:
            broker.close()
            problem = f"amqtt could not start ({err})"
    else:
        problem = "amqtt is not installed"
    binary = shutil.which("mosquitto")
    if binary is None:
        raise UsageError(f"no MQTT broker for the demo: {problem}, and no mosquitto binary on "
                         "PATH. Install amqtt into stm32ota's venv (pip install 'amqtt>=0.11', "
                         "Python 3.10+), or mosquitto, or point the demo at a broker with "
                         "--broker HOST:PORT",
                         code="broker_unavailable")
    log.warning("%s; using %s instead", problem, binary)
    broker = mosquitto_broker(binary)
    broker.start()
    return broker


def serve_amqtt(port: int) -> None:
    """Run an anonymous amqtt broker on 127.0.0.1:port until killed (the child process)."""
    import asyncio

    from amqtt.broker import Broker  # the `demo` extra; only this child process imports it

    logging.basicConfig(level=logging.ERROR)
    config = {"listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                          {"allow_anonymous": True}}}

    async def main() -> None:
        broker = Broker(config)
        await broker.start()
        parent = os.getppid()
        while os.getppid() == parent:  # the demo died without stopping us: do not linger
            await asyncio.sleep(0.5)

    asyncio.run(main())


# ----- firmware web server --------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("http %s", format % args)


class FileServer:
    """A threaded HTTP server on 127.0.0.1 (free port) serving one directory read-only."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer((HOST, 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo http",
                                        daemon=True)

    def url(self, name: str) -> str:
        """The URL of a file in the served directory."""
        return f"http://{HOST}:{self.port}/{name}"

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


# ----- firmware images ------------------------------------------------------------------------

# Thumb-2 halfwords that fill real Cortex-M code often: push/pop, movs, ldr/str, adds, cmp, b.
_THUMB = (0xB580, 0xAF00, 0xBD80, 0x4770, 0x2300, 0x2201, 0x6013, 0x681B, 0x4B00, 0x3301,
          0x2B00, 0xD100, 0xE7FE, 0x4618, 0x60FB, 0x687B, 0xF04F, 0x0300, 0xB082, 0xB002)


def make_image(product: str, version: str, size: int, base: int = FLASH_BASE) -> bytes:
    """A plausible application: vector table, code-like bytes, a version string; `size` bytes."""
    if size % 8 or size < 2 * CODE_START:
        raise ValueError(f"image size {size} must be a multiple of 8 and at least {2 * CODE_START}")
    rng = random.Random(f"{product} {version}")  # the same version always gives the same image
    reset = base + CODE_START + 1  # Thumb bit set, as in every Cortex-M vector
    default = base + CODE_START + 0x41
    out = bytearray(STACK_TOP.to_bytes(4, "little") + reset.to_bytes(4, "little"))
    while len(out) < VECTORS * 4:
        out += default.to_bytes(4, "little")
    out += b"\xff" * (CODE_START - len(out))
    banner = f"{product} {version} (stm32ota demo build)\0".encode()
    code_end = size - len(banner) - (-len(banner) % 8)
    while len(out) < code_end:
        word = rng.choice(_THUMB) | (rng.randrange(8) if rng.random() < 0.5 else 0)
        out += word.to_bytes(2, "little")
    del out[code_end:]
    out += banner + b"\x00" * (size - code_end - len(banner))
    return bytes(out)


def ihex(data: bytes, address: int, start: Optional[int] = None) -> str:
    """Intel HEX text: 16-byte data records, extended linear addresses, optional start address."""
    def record(kind: int, addr: int, payload: bytes) -> str:
        body = bytes([len(payload), addr >> 8 & 0xFF, addr & 0xFF, kind]) + payload
        return ":" + (body + bytes([-sum(body) & 0xFF])).hex().upper()

    lines, upper = [], -1
    for off in range(0, len(data), 16):
        a = address + off
        if a >> 16 != upper:
            upper = a >> 16
            lines.append(record(0x04, 0, upper.to_bytes(2, "big")))
        lines.append(record(0x00, a & 0xFFFF, data[off:off + 16]))
    if start is not None:
        lines.append(record(0x05, 0, start.to_bytes(4, "big")))
    lines.append(record(0x01, 0, b""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    serve_amqtt(int(sys.argv[1]))
