"""The micro-batcher over the real model: batching, load shedding, deadlines and failures."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from embeddings import (
    BatcherConfig,
    EmbeddedText,
    Embedder,
    EmbedderFailed,
    EmbedderOverloaded,
    EmbedderTimeout,
    EmbeddingBatcher,
)
from tests.doubles import CountingEmbedder, FailingEmbedder, StallingEmbedder

pytestmark = pytest.mark.anyio

TEXTS = [f"question number {i}: how do I sort a list of {i} items?" for i in range(20)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def same_vector(a: EmbeddedText, b: EmbeddedText) -> bool:
    return bool(float(a.vector @ b.vector) > 0.9999) and a.truncated == b.truncated


async def test_concurrent_requests_share_model_calls(embedder: CountingEmbedder) -> None:
    async with EmbeddingBatcher(embedder, BatcherConfig(max_batch=32, max_wait_ms=20)) as batcher:
        results = await asyncio.gather(*(batcher.embed(text) for text in TEXTS))

    assert len(results) == len(TEXTS)
    assert sum(embedder.batch_sizes) == len(TEXTS)
    assert len(embedder.batch_sizes) < len(TEXTS)
    assert sorted(embedder.texts) == sorted(TEXTS)
    assert batcher.batches == len(embedder.batch_sizes)
    assert batcher.texts == len(TEXTS)


async def test_batches_never_exceed_max_batch(embedder: CountingEmbedder) -> None:
    async with EmbeddingBatcher(embedder, BatcherConfig(max_batch=8, max_wait_ms=20)) as batcher:
        await asyncio.gather(*(batcher.embed(text) for text in TEXTS))

    assert sum(embedder.batch_sizes) == len(TEXTS)
    assert max(embedder.batch_sizes) <= 8
    assert len(embedder.batch_sizes) >= 3


async def test_each_caller_gets_the_embedding_of_its_own_text(
    real_embedder: Embedder, embedder: CountingEmbedder
) -> None:
    texts = [*TEXTS[:5], "What is the boiling point of water?", "Name a famous French painter."]
    singles = [real_embedder.embed([text])[0] for text in texts]

    async with EmbeddingBatcher(embedder, BatcherConfig(max_wait_ms=20)) as batcher:
        batched = await asyncio.gather(*(batcher.embed(text) for text in texts))

    assert len(embedder.batch_sizes) < len(texts)
    for single, result in zip(singles, batched, strict=True):
        assert result.vector.dtype == np.float32
        assert same_vector(single, result)


async def test_a_full_queue_sheds_requests_with_overloaded(real_embedder: Embedder) -> None:
    stalling = StallingEmbedder(real_embedder, stall_s=0.3)
    config = BatcherConfig(max_batch=1, max_queue=1, max_wait_ms=0, deadline_ms=10_000)
    async with EmbeddingBatcher(stalling, config) as batcher:
        results = await asyncio.gather(*(batcher.embed(text) for text in TEXTS[:4]), return_exceptions=True)

        served = [text for text, result in zip(TEXTS, results, strict=False) if isinstance(result, EmbeddedText)]
        shed = [result for result in results if isinstance(result, EmbedderOverloaded)]
        assert isinstance(results[0], EmbeddedText)
        assert shed
        assert len(served) + len(shed) == 4
        assert stalling.texts == served

        # Shedding is per request: once the queue drains the batcher serves again.
        later = await batcher.embed("a request after the burst")
        assert later.vector.shape == (real_embedder.dimension,)


async def test_past_its_deadline_a_request_times_out_and_the_batcher_serves_later_ones(
    real_embedder: Embedder,
) -> None:
    stalling = StallingEmbedder(real_embedder, stall_s=0.3)
    async with EmbeddingBatcher(stalling, BatcherConfig(deadline_ms=10_000)) as batcher:
        with pytest.raises(EmbedderTimeout):
            await batcher.embed("this one gives up early", deadline_ms=20)

        later = await batcher.embed("this one waits")

    assert same_vector(later, real_embedder.embed(["this one waits"])[0])
    assert "this one waits" in stalling.texts


async def test_configured_deadline_applies_when_the_caller_gives_none(real_embedder: Embedder) -> None:
    stalling = StallingEmbedder(real_embedder, stall_s=0.3)
    async with EmbeddingBatcher(stalling, BatcherConfig(deadline_ms=20)) as batcher:
        with pytest.raises(EmbedderTimeout):
            await batcher.embed("no deadline given")


async def test_a_caller_giving_up_does_not_cancel_its_batch_mates(real_embedder: Embedder) -> None:
    stalling = StallingEmbedder(real_embedder, stall_s=0.3)
    async with EmbeddingBatcher(stalling, BatcherConfig(max_wait_ms=20, deadline_ms=10_000)) as batcher:
        impatient, patient = await asyncio.gather(
            batcher.embed("impatient caller", deadline_ms=20),
            batcher.embed("patient caller"),
            return_exceptions=True,
        )

    assert isinstance(impatient, EmbedderTimeout)
    assert isinstance(patient, EmbeddedText)
    assert same_vector(patient, real_embedder.embed(["patient caller"])[0])


async def test_an_embedder_that_raises_gives_embedder_failed(real_embedder: Embedder) -> None:
    failing = FailingEmbedder(real_embedder)
    async with EmbeddingBatcher(failing, BatcherConfig(max_wait_ms=20)) as batcher:
        results = await asyncio.gather(batcher.embed("one"), batcher.embed("two"), return_exceptions=True)
        # The worker survives a failing batch: the next request is answered, not left hanging.
        with pytest.raises(EmbedderFailed) as next_failure:
            await batcher.embed("three")

    assert all(isinstance(result, EmbedderFailed) for result in results)
    for failure in [*results, next_failure.value]:
        assert isinstance(failure, EmbedderFailed)
        assert isinstance(failure.__cause__, RuntimeError)
        assert "simulated embedder crash" in str(failure)
    assert batcher.batches == 0


async def test_embed_after_exit_fails(embedder: CountingEmbedder) -> None:
    batcher = EmbeddingBatcher(embedder)
    async with batcher:
        await batcher.embed("while running")

    with pytest.raises(EmbedderFailed):
        await batcher.embed("after exit")
    assert embedder.texts == ["while running"]


async def test_embed_before_enter_fails(embedder: CountingEmbedder) -> None:
    batcher = EmbeddingBatcher(embedder)

    with pytest.raises(EmbedderFailed):
        await batcher.embed("never started")
    assert embedder.texts == []


class GatedEmbedder(CountingEmbedder):
    """The real embedder, held at the gate until the test opens it: a model call caught mid-flight."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner)
        self.started = threading.Event()
        self.gate = threading.Event()

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        self.started.set()
        self.gate.wait(timeout=30)
        return super().embed(texts)


async def test_requests_in_flight_at_shutdown_fail_instead_of_waiting_out_their_deadline(
    real_embedder: Embedder,
) -> None:
    gated = GatedEmbedder(real_embedder)
    batcher = EmbeddingBatcher(gated, BatcherConfig(max_batch=1, max_wait_ms=0, deadline_ms=3_000))
    async with batcher:
        in_flight = asyncio.create_task(batcher.embed("being embedded at shutdown"))
        queued = asyncio.create_task(batcher.embed("still queued at shutdown"))
        assert await asyncio.to_thread(gated.started.wait, 30)
        # The model call finishes only after the batcher has begun to shut down.
        gated.gate.set()

    results = await asyncio.gather(in_flight, queued, return_exceptions=True)

    assert isinstance(results[1], EmbedderFailed)
    assert isinstance(results[0], EmbedderFailed)
