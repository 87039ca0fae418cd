"""Background work that must finish before shutdown (storing answers, counting hits)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger("semcache.tasks")


class TaskTracker:
    """Keeps a reference to every task (asyncio only holds weak ones) and drains them at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, *, timeout_s: float) -> None:
        """Wait for pending work; past the timeout, cancel what is left rather than hang shutdown."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            logger.warning("cancelling background task %s at shutdown", task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending)
