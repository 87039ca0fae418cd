"""Micro-batching of concurrent embedding requests onto one worker thread.

Requests that queue up while the model is busy share its next call, which is where the throughput
comes from on a CPU; the event loop only ever awaits futures. With one model thread that needs no
waiting: under load the queue fills during each call by itself, and an idle request is served at
once. `max_wait_ms` > 0 holds each batch open that long for more batch-mates, which costs every
request the wait and, measured here (bench/RESULTS.md), bought no throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from embeddings.errors import EmbedderFailed, EmbedderOverloaded, EmbedderTimeout
from embeddings.protocol import EmbeddedText, Embedder


@dataclass(frozen=True, slots=True, kw_only=True)
class BatcherConfig:
    max_batch: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    deadline_ms: float = 1000.0


@dataclass(slots=True)
class _Pending:
    text: str
    future: asyncio.Future[EmbeddedText]


class EmbeddingBatcher:
    """`async with EmbeddingBatcher(embedder, config) as batcher: await batcher.embed(text)`."""

    def __init__(self, embedder: Embedder, config: BatcherConfig | None = None) -> None:
        self._embedder = embedder
        self._config = config or BatcherConfig()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=self._config.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semcache-embed")
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        self.texts = 0

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    async def __aenter__(self) -> EmbeddingBatcher:
        self._worker = asyncio.create_task(self._run(), name="semcache-embed-batcher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(EmbedderFailed("embedder is shutting down"))
        # Waits for a model call in progress; on a thread so the event loop keeps serving meanwhile.
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def embed(self, text: str, *, deadline_ms: float | None = None) -> EmbeddedText:
        """Embed one text, or raise an `EmbedderError` (overloaded, timed out, failed)."""
        if self._worker is None or self._worker.done():
            raise EmbedderFailed("embedding batcher is not running")
        future: asyncio.Future[EmbeddedText] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(text, future))
        except asyncio.QueueFull:
            raise EmbedderOverloaded(f"embedding queue is full ({self._config.max_queue})") from None
        limit_s = (deadline_ms if deadline_ms is not None else self._config.deadline_ms) / 1000
        try:
            async with asyncio.timeout(limit_s):
                # shield: a caller giving up must not cancel the result its batch-mates share.
                return await asyncio.shield(future)
        except TimeoutError:
            future.cancel()
            raise EmbedderTimeout(f"no embedding within {limit_s * 1000:.0f} ms") from None

    async def embed_many(self, texts: list[str]) -> list[EmbeddedText]:
        """Embed a known list in one model call on the batcher's thread (e.g. a policy's exemplars
        at load); no deadline, since nobody waits on it per request."""
        if not texts:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._embedder.embed, texts)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._config.max_wait_ms / 1000
            while len(batch) < self._config.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                try:
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            live = [pending for pending in batch if not pending.future.done()]
            if live:
                await self._embed_batch(loop, live)

    async def _embed_batch(self, loop: asyncio.AbstractEventLoop, live: list[_Pending]) -> None:
        try:
            results = await loop.run_in_executor(
                self._executor, self._embedder.embed, [pending.text for pending in live]
            )
        except asyncio.CancelledError:
            # Shutting down mid-batch: release these callers now rather than at their deadline.
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(EmbedderFailed("embedder is shutting down"))
            raise
        except Exception as exc:  # fail-open boundary: every waiter gets a cache error
            error = EmbedderFailed(f"embedder raised {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self.batches += 1
        self.texts += len(live)
        for pending, result in zip(live, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
