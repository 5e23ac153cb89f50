"""The agent's inbox: one bounded FIFO in which a flood elsewhere cannot take the last room.

paho's network thread puts every inbound message here without blocking; one dispatcher thread
takes them in arrival order (a release announced just before an `install` is handled first).
The inbox holds `2 * size` messages, but those on group, fleet and release topics may fill
only `size` of it: the rest is kept for commands addressed to this agent's own targets, so a
flood on a shared topic cannot crowd them out. A message that finds no room is dropped and
`put` says so.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Optional


class Inbox:
    """A bounded FIFO with room reserved for urgent items; `close()` ends `get()`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cond = threading.Condition()
        self._items: deque = deque()  # (urgent, item)
        self._others = 0  # items in the queue that are not urgent
        self._closed = False

    def put(self, item: Any, urgent: bool) -> bool:
        """Queue an item without blocking; False if there is no room for it (it is dropped)."""
        with self._cond:
            if len(self._items) >= 2 * self.size or (not urgent and self._others >= self.size):
                return False
            self._items.append((urgent, item))
            self._others += not urgent
            self._cond.notify()
        return True

    def get(self) -> Optional[Any]:
        """The oldest item; blocks while there is none; None once closed."""
        with self._cond:
            while not (self._closed or self._items):
                self._cond.wait()
            if self._closed:
                return None
            urgent, item = self._items.popleft()
            self._others -= not urgent
            return item

    def close(self) -> None:
        """Wake the dispatcher and make every later get() return None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
