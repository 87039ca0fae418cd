"""Coalescing of concurrent identical misses: one request goes upstream, the others wait for it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

Answer = Mapping[str, Any]


class Flight:
    """One request on its way upstream. `finish` releases the followers (None: go upstream
    yourselves); it is idempotent, and called by a timer if the leader never calls it."""

    def __init__(self, flights: dict[str, Flight], key: str, lifetime_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._flights = flights
        self._key = key
        self.future: asyncio.Future[Answer | None] = loop.create_future()
        self._timer = loop.call_later(lifetime_s, self.finish, None)

    def finish(self, answer: Answer | None = None) -> None:
        if not self.future.done():
            self.future.set_result(answer)
        self._timer.cancel()
        if self._flights.get(self._key) is self:
            del self._flights[self._key]


class SingleFlight:
    def __init__(self, *, max_lifetime_s: float) -> None:
        self._flights: dict[str, Flight] = {}
        self._max_lifetime_s = max_lifetime_s

    def __len__(self) -> int:
        return len(self._flights)

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    def begin(self, key: str) -> Flight:
        flight = Flight(self._flights, key, self._max_lifetime_s)
        self._flights[key] = flight
        return flight

    async def join(self, key: str, *, timeout_s: float) -> Answer | None:
        """The answer of the identical request in flight, if one is and it answers within
        `timeout_s`; None: go upstream yourself (`begin` a flight)."""
        return await self.wait(key, timeout_s=timeout_s) if self.in_flight(key) else None

    async def wait(self, key: str, *, timeout_s: float) -> Answer | None:
        """The answer of the flight in progress for `key`; None if there is none, it failed, or it
        took longer than `timeout_s` (the caller then goes upstream itself)."""
        flight = self._flights.get(key)
        if flight is None:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(flight.future)
        except TimeoutError:
            return None
