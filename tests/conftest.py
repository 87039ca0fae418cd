"""Shared fixtures: the real embedding model (loaded once), the simulated upstream and the gateway,
each a real server on a free loopback port."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import settings

from embeddings import Embedder, SentenceTransformerEmbedder
from gateway.app import create_app
from gateway.cache.engine import Clock
from gateway.config import CacheConfig, GatewayConfig, StoreConfig, UpstreamConfig
from gateway.http.simulated_upstream import UpstreamState, create_upstream_app
from gateway.stores import Store
from tests.doubles import CountingEmbedder, FakeClock
from tests.servers import RunningServer, serve

# The same examples on every run, so CI cannot pass or fail by the luck of the draw; a failure
# prints the blob to reproduce it. (HYPOTHESIS_PROFILE=explore for fresh random examples.)
settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session")
def real_embedder() -> Embedder:
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def onnx_graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder of exported ONNX graphs shared by the session's tests: one export, not one each."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture
def embedder(real_embedder: Embedder) -> CountingEmbedder:
    return CountingEmbedder(real_embedder)


@dataclass(frozen=True, slots=True)
class Upstream:
    url: str
    state: UpstreamState

    def set_faults(self, **faults: Any) -> None:
        httpx.post(f"{self.url}/control", json=faults).raise_for_status()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = UpstreamState()
    with serve(create_upstream_app(state)) as running:
        yield Upstream(url=running.url, state=state)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass(frozen=True, slots=True)
class Gateway:
    url: str
    config: GatewayConfig
    server: RunningServer

    def client(self, api_key: str = "sk-test-tenant-a", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def metric(self, name: str) -> float:
        """A counter's value from /metrics (0 when it was never incremented)."""
        text = httpx.get(f"{self.url}/metrics").text
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
        return sum(values)

    def wait_until_stored(self, count: int, *, timeout_s: float = 30.0) -> None:
        """Answers are stored in the background after the response: poll the counter."""
        deadline = time.monotonic() + timeout_s
        while self.metric("semcache_stored_total") < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} answers were stored")
            time.sleep(0.01)


GatewayFactory = Callable[..., AbstractContextManager[Gateway]]


@pytest.fixture
def gateway_config(tmp_path: Path, upstream: Upstream) -> GatewayConfig:
    return GatewayConfig(
        upstream=UpstreamConfig(api_base=f"{upstream.url}/v1", timeout_s=5, models=("sim-large", "sim-small")),
        cache=CacheConfig(similarity_threshold=0.85, ttl_s=3600, store=StoreConfig(path=str(tmp_path / "cache.db"))),
    )


@pytest.fixture
def start_gateway(gateway_config: GatewayConfig, embedder: CountingEmbedder, clock: FakeClock) -> GatewayFactory:
    """`with start_gateway(**overrides) as gw:` starts a gateway; several may run in one test."""

    @contextmanager
    def start(
        *,
        config: GatewayConfig | None = None,
        embedder_: Embedder | None = None,
        store: Store | None = None,
        clock_: Clock | None = None,
        **sections: Any,
    ) -> Iterator[Gateway]:
        cfg = replace(config or gateway_config, **sections)
        app = create_app(cfg, embedder=embedder_ or embedder, store=store, clock=clock_ or clock)
        with serve(app) as running:
            yield Gateway(url=running.url, config=cfg, server=running)

    return start


@pytest.fixture
def gateway(start_gateway: GatewayFactory) -> Iterator[Gateway]:
    with start_gateway() as running:
        yield running
