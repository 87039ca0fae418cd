"""An in-process change feed: what a single-process backend (SQLite) publishes its events on.

Every follower gets its own queue, subscribed when `follow()` is called. A backend shared by
processes (Redis) replaces this with its own stream; the catalog reads either the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from gateway.stores.base import ChangeEvent


class _Subscription:
    def __init__(self, feed: LocalFeed) -> None:
        self._feed = feed
        self.queue: asyncio.Queue[ChangeEvent] = asyncio.Queue()

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> ChangeEvent:
        if self not in self._feed.followers:
            raise StopAsyncIteration
        return await self.queue.get()

    async def aclose(self) -> None:
        self._feed.followers.discard(self)


class LocalFeed:
    def __init__(self) -> None:
        self.followers: set[_Subscription] = set()

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        # Unbounded queues: a follower is the catalog's own task, which applies events as fast as
        # its index takes them; a bound would have to drop events, and a dropped event is an index
        # out of step with the store.
        for follower in self.followers:
            for event in events:
                follower.queue.put_nowait(event)

    def follow(self) -> AsyncIterator[ChangeEvent]:
        subscription = _Subscription(self)
        self.followers.add(subscription)
        return subscription
