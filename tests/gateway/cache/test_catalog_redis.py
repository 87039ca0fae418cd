"""Two catalogs, each over its own RedisStore on one real redis-server: two replicas in one process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest

from gateway.cache.catalog import Catalog
from gateway.metrics import Metrics
from gateway.stores import RedisStore, Removed
from policies import Policy
from tests.doubles import FakeClock
from tests.gateway.cache.test_catalog import DIMENSION, key, policy, remember, searched
from tests.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"c{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def store(server: RedisServer, prefix: str, **options: int) -> AsyncIterator[RedisStore]:
    async with RedisStore(server.url, prefix=prefix, **options) as opened:
        await opened.adopt_embedder("model-a")
        yield opened


def catalog(on: RedisStore, rules: Policy, clock: FakeClock) -> Catalog:
    return Catalog(store=on, dimension=DIMENSION, policy=rules, metrics=Metrics(), clock=clock)


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):  # the follower's task applies events when next scheduled
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout_s} s")


async def test_a_write_by_one_replica_is_indexed_and_removed_by_the_other(
    redis_server: RedisServer, prefix: str, clock: FakeClock
) -> None:
    rules = policy()
    async with (
        store(redis_server, prefix) as a_store,
        store(redis_server, prefix) as b_store,
        catalog(a_store, rules, clock) as a,
        catalog(b_store, rules, clock) as b,
    ):
        assert await remember(a, "hello")
        entry = await b_store.get_exact(key("hello").exact, now=clock())
        assert entry is not None
        await eventually(lambda: b.index_sizes()["default"] == 1, "b indexed a's entry")
        assert await searched(b, "hello") == [entry.entry_id]

        assert await b.forget(entry.entry_id)
        await eventually(lambda: a.index_sizes()["default"] == 0, "a dropped what b forgot")


async def test_the_quota_holds_across_replicas(redis_server: RedisServer, prefix: str, clock: FakeClock) -> None:
    rules = policy(default=3)
    async with (
        store(redis_server, prefix) as a_store,
        store(redis_server, prefix) as b_store,
        catalog(a_store, rules, clock) as a,
        catalog(b_store, rules, clock) as b,
    ):
        for number in range(8):
            writer, other = (a, b) if number % 2 == 0 else (b, a)
            assert await remember(writer, f"question {number}")
            written = await a_store.get_exact(key(f"question {number}").exact, now=clock())
            assert written is not None
            index = other.index("default")
            assert index is not None
            size = min(number + 1, 3)
            # Each replica's view catches up before the next write (a load balancer's pace).
            await eventually(
                lambda i=index, e=written.entry_id, n=size: i.holds(e) and len(i) == n,
                "the other replica caught up",
            )
        live = [entry async for page in a_store.scan_live(now=clock()) for entry in page]
        assert a.index_sizes() == b.index_sizes() == {"default": 3}
    assert len(live) == 3


async def test_a_replica_behind_the_trimmed_stream_rebuilds(
    redis_server: RedisServer, prefix: str, clock: FakeClock
) -> None:
    rules = policy()
    async with (
        store(redis_server, prefix, stream_maxlen=100) as a_store,
        store(redis_server, prefix) as b_store,
        catalog(a_store, rules, clock) as a,
    ):
        # b's position is where it adopted the store; a's traffic trims far past it.
        for start in range(0, 1500, 100):
            await a_store.publish(
                [Removed(entry_ids=(f"gone-{n}",), reason="evicted") for n in range(start, start + 100)]
            )
        assert await remember(a, "hello")
        async with catalog(b_store, rules, clock) as b:
            await eventually(lambda: b.index_sizes()["default"] == 1 and b.ready, "b rebuilt from redis")
            assert len(await searched(b, "hello")) == 1
