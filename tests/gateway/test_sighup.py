"""`kill -HUP <pid>` reloads the policy of a running `semcache serve`: a real process, since the
handler is only installed where the event loop runs in the main thread (never under the in-thread
test servers, which is why /admin/reload is tested elsewhere and the signal here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.http.simulated_upstream import UpstreamState, create_upstream_app
from tests.servers import free_port, serve

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY_ENV = "SEMCACHE_TEST_SIGHUP_ADMIN_KEY"
ADMIN_KEY = "sk-admin-sighup"
PYTHON_QUESTION = "How do I reverse a list in Python?"


def policy(**overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword-ruled categories (no exemplars: nothing to embed at a reload); `None` drops one."""
    categories: dict[str, dict[str, Any] | None] = {
        "realtime": {"cacheable": False, "keywords": ["weather"]},
        "python": {"keywords": ["python"], "similarity_threshold": 0.99, "ttl_s": 1000, "max_entries": 100},
        "kotlin": {"keywords": ["kotlin"], "similarity_threshold": 0.9, "ttl_s": 100, "max_entries": 100},
        "default": {"similarity_threshold": 0.95, "ttl_s": 500, "max_entries": 10},
    }
    for name, changes in overrides.items():
        categories[name] = None if changes is None else {**(categories.get(name) or {}), **changes}
    return {"categories": [{"name": name, **fields} for name, fields in categories.items() if fields is not None]}


@dataclass(frozen=True, slots=True)
class Served:
    url: str
    process: subprocess.Popen[bytes]
    policy_file: Path
    log: Path

    def ask(self, prompt: str) -> httpx.Response:
        body = {"model": "sim-large", "messages": [{"role": "user", "content": prompt}]}
        response = httpx.post(
            f"{self.url}/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-a"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/admin/stats", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        assert response.status_code == 200, response.text
        categories: dict[str, Any] = response.json()["categories"]
        return categories

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def hang_up(self, new_policy: dict[str, Any] | str) -> None:
        text = new_policy if isinstance(new_policy, str) else yaml.safe_dump(new_policy)
        self.policy_file.write_text(text, encoding="utf-8")
        self.process.send_signal(signal.SIGHUP)

    def wait_for(self, condition: Callable[[], bool], what: str, *, timeout_s: float = 30.0) -> None:
        """The reload runs as a background task after the signal: poll for its effect."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.process.poll() is None, f"the gateway exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s\n{self.output()}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve(create_upstream_app(UpstreamState())) as running:
        yield running.url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream_url: str) -> Iterator[Served]:
    """One `semcache serve` process for the module (the model load is the slow part)."""
    folder = tmp_path_factory.mktemp("sighup")
    policy_file = folder / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy()), encoding="utf-8")
    config = {
        "upstream": {"api_base": f"{upstream_url}/v1", "timeout_s": 10, "models": ["sim-large"]},
        "policy": str(policy_file),
        "cache": {"store": {"kind": "sqlite", "path": str(folder / "cache.db")}},
        "admin": {"api_key_env": ADMIN_KEY_ENV},
    }
    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = folder / "serve.log"
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_file), "--port", str(port)],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, ADMIN_KEY_ENV: ADMIN_KEY},
        )
    running = Served(url=f"http://127.0.0.1:{port}", process=process, policy_file=policy_file, log=log)
    try:
        running.wait_for(lambda: _ready(running.url), "the gateway became ready", timeout_s=120)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _store(served: Served, prompt: str) -> None:
    """Ask until the answer is served from the cache: it is stored in the background."""
    served.ask(prompt)
    served.wait_for(lambda: served.ask(prompt).headers["x-semcache"] == "exact", f"{prompt!r} was stored")


def test_sighup_applies_the_edited_policy_and_keeps_the_cache(served: Served) -> None:
    _store(served, PYTHON_QUESTION)
    _store(served, "How do I reverse a list in Kotlin?")
    before = served.stats()
    assert before["python"]["indexed"] == 1
    assert before["kotlin"]["indexed"] == 1

    served.hang_up(policy(python={"similarity_threshold": 0.97, "ttl_s": 2000}, kotlin=None))
    served.wait_for(lambda: served.stats()["python"]["similarity_threshold"] == 0.97, "the new policy is in force")

    after = served.stats()
    assert (after["python"]["similarity_threshold"], after["python"]["ttl_s"]) == (0.97, 2000)
    assert after["python"]["indexed"] == 1  # kept, and still in its index
    assert after["python"]["max_entries"] == before["python"]["max_entries"]
    assert "kotlin" not in after  # a removed category's entries are dropped with it
    assert served.process.poll() is None  # SIGHUP reloads; it does not end the process
    python = served.ask(PYTHON_QUESTION)
    assert python.headers["x-semcache"] == "exact"  # the entry stored before the reload survived
    assert python.headers["x-semcache-category"] == "python"
    kotlin = served.ask("How do I reverse a list in Kotlin?")
    assert kotlin.headers["x-semcache"] == "miss"
    assert kotlin.headers["x-semcache-category"] == "default"
    assert "SIGHUP: policy reloaded (realtime, python, default)" in served.output()


def test_sighup_with_an_invalid_policy_keeps_the_old_one_and_keeps_serving(served: Served) -> None:
    served.hang_up(policy(python={"similarity_threshold": 0.98}))
    served.wait_for(lambda: served.stats()["python"]["similarity_threshold"] == 0.98, "the valid policy is in force")
    _store(served, PYTHON_QUESTION)
    in_force = served.stats()
    rejections = served.output().count("SIGHUP: policy rejected")

    served.hang_up(policy(python={"similarity_threshold": 1.4, "ttl": 5}))
    served.wait_for(lambda: served.output().count("SIGHUP: policy rejected") > rejections, "the reload was refused")

    log = served.output()
    assert "categories[1].similarity_threshold: must be in (0, 1], got 1.4" in log
    assert "categories[1].ttl: unknown key" in log
    assert served.process.poll() is None
    assert served.stats() == in_force
    assert served.ask(PYTHON_QUESTION).headers["x-semcache"] == "exact"

    served.hang_up("categories: [oops\n")  # not even YAML
    served.wait_for(lambda: served.output().count("SIGHUP: policy rejected") > rejections + 1, "the reload was refused")
    assert served.stats() == in_force
    assert served.ask(PYTHON_QUESTION).headers["x-semcache"] == "exact"
