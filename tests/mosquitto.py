"""A real mosquitto broker for tests: free loopback port, temp config, stop and restart on the same port.

Usage (tests/ is on sys.path when pytest runs):

    from mosquitto import Mosquitto

    @pytest.fixture
    def broker():
        with Mosquitto() as b:
            yield b

    broker.port; broker.stop(); broker.start()   # same port again; persistence is off
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

# One definition of "a free loopback port that is not a real broker's": the demo's.
from agent.demo_parts import HOST, RESERVED_PORTS, free_port

log = logging.getLogger(__name__)

def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One mosquitto process on HOST:port, anonymous, no persistence; restartable on the same port."""

    def __init__(self, port: int | None = None, *, binary: str = "mosquitto", extra_config: str = "") -> None:
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(f"{binary} not found on PATH; install the Debian package 'mosquitto'")
        self.binary = path
        self.host = HOST
        self.port = port if port is not None else free_port()
        if self.port in RESERVED_PORTS:
            raise ValueError(f"port {self.port} belongs to the machine's own broker")
        self._dir = tempfile.TemporaryDirectory(prefix="mosquitto-test-")
        self.config = Path(self._dir.name) / "mosquitto.conf"
        self.log_file = Path(self._dir.name) / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} {HOST}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log_file}\n"
            "log_type all\n"
            f"{extra_config}\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {err}{self.log()}")
            if _listening(self.port):
                log.debug("mosquitto pid %d listening on %s:%d", self._proc.pid, HOST, self.port)
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on port {self.port} within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait until the port is closed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr:
            proc.stderr.close()
        deadline = time.monotonic() + timeout
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> None:
        """Stop and start again on the same port (all sessions and retained messages are gone)."""
        self.stop()
        self.start()

    def log(self) -> str:
        """The broker's log so far, for failure messages."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop the broker and remove its temporary directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
