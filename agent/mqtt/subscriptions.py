"""Which handlers an inbound message reaches, without paho: the client's topic filters, each
with its handlers and its matcher compiled once (`agent.mqtt.topics.filter_matcher`)."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

from agent.mqtt.topics import filter_matcher

Handler = Callable[[str, bytes, bool], None]


class Subscriptions:
    """Topic filters in the order first subscribed; a filter's handlers run in the order they
    were added. Not thread-safe: MqttClient holds its lock around every call."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._matchers: list[tuple[Callable[[str], Optional[object]], list[Handler]]] = []
        self.as_published: set[str] = set()  # filters subscribed with Retain As Published

    def add(self, topic_filter: str, handler: Handler, as_published: bool = False) -> bool:
        """Add a handler; True if the filter is new (so it must be subscribed)."""
        first = topic_filter not in self._handlers
        handlers = self._handlers.setdefault(topic_filter, [])
        handlers.append(handler)
        if first:
            self._matchers.append((filter_matcher(topic_filter), handlers))
        if as_published:
            self.as_published.add(topic_filter)
        return first

    def remove(self, topic_filter: str) -> bool:
        """Forget a filter and its handlers; True if it was there."""
        handlers = self._handlers.pop(topic_filter, None)
        if handlers is None:
            return False
        self._matchers = [m for m in self._matchers if m[1] is not handlers]
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)

    def handlers(self, topic: str) -> list[Handler]:
        """Every handler of every filter that matches `topic` (a handler of two matching
        filters runs twice, as each subscription delivers it)."""
        return [h for match, hs in self._matchers if match(topic) for h in hs]
