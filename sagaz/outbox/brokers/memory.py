"""The in-process broker of the embedded default: subscribers are called in the publishing
process. Nothing survives a restart; use a real broker for anything that must."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["InMemoryBroker"]

Handler = Callable[[str, dict[str, Any], dict[str, str]], Awaitable[None] | None]


class InMemoryBroker:
    """Topic -> handlers. ``publish`` returns after every handler ran (its "acknowledgement")."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self.published: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    async def publish(
        self, topic: str, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        hdrs = dict(headers or {})
        self.published.append((topic, payload, hdrs))
        for handler in list(self._handlers.get(topic, ())):
            outcome = handler(topic, payload, hdrs)
            if asyncio.iscoroutine(outcome):
                await outcome

    async def close(self) -> None:
        self._handlers.clear()
