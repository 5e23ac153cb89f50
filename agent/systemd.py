"""The two systemd features the service uses: readiness/status notification and the watchdog.

Speaks the sd_notify datagram protocol directly (a few lines) instead of pulling in a binding.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

log = logging.getLogger(__name__)


def _address() -> Optional[str]:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):  # abstract namespace socket
        return "\0" + addr[1:]
    return addr


def notify(message: str) -> bool:
    """Send e.g. "READY=1", "WATCHDOG=1", "STATUS=..." to systemd; False if not under systemd."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode("utf-8"), addr)
        return True
    except OSError as err:
        log.warning("cannot notify systemd (%s): %s", message.split("=", 1)[0], err)
        return False


def watchdog_interval() -> Optional[float]:
    """Seconds between watchdog pings (half of WatchdogSec), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
