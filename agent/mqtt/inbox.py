"""The agent's inbox: two bounded queues, so a flood elsewhere cannot crowd out its own commands.

paho's network thread puts every inbound message here without blocking; one dispatcher thread
takes them, always from the `urgent` queue first (commands addressed to this agent's own
targets), then from the other one (group, fleet and release topics). Each queue holds at most
`size` messages; a message that finds its queue full is dropped and `put` says so.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Optional


class Inbox:
    """Two bounded FIFO queues with priority for the urgent one; `close()` ends `get()`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cond = threading.Condition()
        self._urgent: deque = deque()
        self._other: deque = deque()
        self._closed = False

    def put(self, item: Any, urgent: bool) -> bool:
        """Queue an item without blocking; False if its queue is full (the item is dropped)."""
        q = self._urgent if urgent else self._other
        with self._cond:
            if len(q) >= self.size:
                return False
            q.append(item)
            self._cond.notify()
        return True

    def get(self) -> Optional[Any]:
        """The next item, urgent ones first; blocks while both are empty; None once closed."""
        with self._cond:
            while not (self._closed or self._urgent or self._other):
                self._cond.wait()
            if self._closed:
                return None
            return (self._urgent or self._other).popleft()

    def close(self) -> None:
        """Wake the dispatcher and make every later get() return None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
