"""A token bucket per key: how often the agent reports refusals from one source topic.

A flood of garbage on one topic must cost neither the disk nor the broker nor the log: each
topic may produce `burst` reports at once and `rate` per second after that; the rest are
counted and mentioned with the next report that goes out.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class RateLimit:
    """Token buckets by key (a bounded set: the topics the agent subscribes to)."""

    def __init__(self, rate: float = 1.0, burst: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float, int]] = {}  # key: (tokens, at, suppressed)

    def take(self, key: str) -> Optional[int]:
        """Spend a token of `key`: None when there is none (the report is suppressed), else
        the number of reports suppressed on `key` since the last one that went out."""
        now = self.clock()
        with self._lock:
            tokens, at, suppressed = self._buckets.get(key, (float(self.burst), now, 0))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now, suppressed + 1)
                return None
            self._buckets[key] = (tokens - 1.0, now, 0)
            return suppressed
