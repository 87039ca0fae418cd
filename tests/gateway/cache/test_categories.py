"""Category-aware caching through the gateway: per-category thresholds, TTLs, quotas, cacheable
flags, the category header, and live policy reload."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import AdminConfig, GatewayConfig
from tests.conftest import Gateway, GatewayFactory, Upstream
from tests.doubles import FakeClock

ADMIN_KEY = "sk-admin-test"


def policy(**overrides: dict[str, Any]) -> dict[str, Any]:
    """Two keyword-ruled categories with different thresholds/TTLs/quotas, and a non-cacheable one."""
    categories = {
        "realtime": {"cacheable": False, "keywords": ["weather", "stock price"]},
        "python": {"keywords": ["python"], "similarity_threshold": 0.99, "ttl_s": 1000, "max_entries": 100},
        "kotlin": {"keywords": ["kotlin"], "similarity_threshold": 0.9, "ttl_s": 100, "max_entries": 100},
        "default": {"similarity_threshold": 0.95, "ttl_s": 500, "max_entries": 2},
    }
    for name, changes in overrides.items():
        categories[name] = {**categories.get(name, {}), **changes}
    return {"categories": [{"name": name, **fields} for name, fields in categories.items()]}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy()))
    return path


@pytest.fixture
def categorized(start_gateway: GatewayFactory, gateway_config: GatewayConfig, policy_file: Path) -> Iterator[Gateway]:
    config = replace(gateway_config, policy=str(policy_file), admin=AdminConfig(api_key=ADMIN_KEY))
    with start_gateway(config=config) as gateway:
        yield gateway


def ask(gateway: Gateway, prompt: str) -> httpx.Response:
    body = {"model": "sim-large", "messages": [{"role": "user", "content": prompt}]}
    with gateway.http() as http:
        response = http.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-a"})
    assert response.status_code == 200, response.text
    return response


def reload(gateway: Gateway, key: str = ADMIN_KEY) -> httpx.Response:
    with gateway.http() as http:
        return http.post("/admin/reload", headers={"authorization": f"Bearer {key}"})


def test_the_same_similarity_hits_in_a_loose_category_and_misses_in_a_strict_one(categorized: Gateway) -> None:
    ask(categorized, "How do I reverse a list in Python?")
    ask(categorized, "How do I reverse a list in Kotlin?")
    categorized.wait_until_stored(2)

    strict = ask(categorized, "python: reverse a list")
    loose = ask(categorized, "kotlin: reverse a list")

    assert strict.headers["x-semcache-category"] == "python"
    assert loose.headers["x-semcache-category"] == "kotlin"
    # Both paraphrases are about as close to their originals (between the two thresholds) ...
    assert 0.9 <= float(strict.headers["x-semcache-similarity"]) < 0.99
    assert 0.9 <= float(loose.headers["x-semcache-similarity"]) < 0.99
    # ... and only the category decides.
    assert strict.headers["x-semcache"] == "miss"
    assert loose.headers["x-semcache"] == "hit"


def test_each_category_has_its_own_ttl(categorized: Gateway, clock: FakeClock) -> None:
    ask(categorized, "How do I reverse a list in Python?")
    ask(categorized, "How do I reverse a list in Kotlin?")
    categorized.wait_until_stored(2)

    clock.advance(150)  # past kotlin's 100 s, within python's 1000 s

    assert ask(categorized, "How do I reverse a list in Python?").headers["x-semcache"] == "exact"
    assert ask(categorized, "How do I reverse a list in Kotlin?").headers["x-semcache"] == "miss"


def test_non_cacheable_category_is_never_served_or_stored(categorized: Gateway, upstream: Upstream) -> None:
    first = ask(categorized, "What is the weather in Paris?")
    second = ask(categorized, "What is the weather in Paris?")

    for response in (first, second):
        assert response.headers["x-semcache"] == "bypass"
        assert response.headers["x-semcache-reason"] == "category-not-cacheable"
        assert response.headers["x-semcache-category"] == "realtime"
    assert len(upstream.state.received) == 2
    with sqlite3.connect(categorized.config.cache.store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (0,)


def test_quota_evicts_expired_first_then_the_least_valuable(categorized: Gateway, clock: FakeClock) -> None:
    # `default` holds 2 entries. A is used often, B never; then C arrives.
    ask(categorized, "Tell me a fun fact about octopuses.")  # A
    clock.advance(1)
    ask(categorized, "Give me a recipe for banana bread.")  # B
    categorized.wait_until_stored(2)
    for _ in range(3):
        assert ask(categorized, "Tell me a fun fact about octopuses.").headers["x-semcache"] == "exact"
    clock.advance(10)

    assert ask(categorized, "Suggest a name for a grey kitten.").headers["x-semcache-category"] == "default"  # C
    categorized.wait_until_stored(3)

    assert categorized.metric('semcache_evicted_total{category="default"}') == 1
    assert ask(categorized, "Tell me a fun fact about octopuses.").headers["x-semcache"] == "exact"
    assert ask(categorized, "Suggest a name for a grey kitten.").headers["x-semcache"] == "exact"
    assert ask(categorized, "Give me a recipe for banana bread.").headers["x-semcache"] == "miss"


def test_quota_prefers_evicting_an_expired_entry(categorized: Gateway, clock: FakeClock) -> None:
    ask(categorized, "Tell me a fun fact about octopuses.")
    categorized.wait_until_stored(1)
    for _ in range(3):
        ask(categorized, "Tell me a fun fact about octopuses.")  # valuable, but about to expire
    clock.advance(400)
    ask(categorized, "Give me a recipe for banana bread.")
    categorized.wait_until_stored(2)
    clock.advance(200)  # the octopus entry (ttl 500) has expired, the bread one has not

    ask(categorized, "Suggest a name for a grey kitten.")
    categorized.wait_until_stored(3)

    assert ask(categorized, "Give me a recipe for banana bread.").headers["x-semcache"] == "exact"


def test_exact_only_entries_count_against_the_quota(categorized: Gateway) -> None:
    # Prompts longer than the model's window are cached for exact repeats only; `default` holds 2.
    long = [f"Summarise report {name}: " + " ".join([f"{name} sales rose in every region"] * 80) for name in "ABC"]
    for number, prompt in enumerate(long, 1):
        assert ask(categorized, prompt).headers["x-semcache"] == "miss"
        categorized.wait_until_stored(number)

    assert categorized.metric('semcache_evicted_total{category="default"}') == 1
    # Newest first: asking the evicted one again would store it and evict another.
    assert [ask(categorized, prompt).headers["x-semcache"] for prompt in reversed(long)] == ["exact", "exact", "miss"]


def test_reload_keeps_the_cache_applies_ttls_and_drops_removed_categories(
    categorized: Gateway, policy_file: Path, clock: FakeClock
) -> None:
    ask(categorized, "How do I reverse a list in Python?")
    ask(categorized, "How do I reverse a list in Kotlin?")
    categorized.wait_until_stored(2)
    changed = policy(python={"ttl_s": 50})
    changed["categories"] = [category for category in changed["categories"] if category["name"] != "kotlin"]
    policy_file.write_text(yaml.safe_dump(changed))

    response = reload(categorized)

    assert response.status_code == 200, response.text
    assert response.json()["dropped"] == {"kotlin": 1}
    assert "kotlin" not in response.json()["categories"]
    assert ask(categorized, "How do I reverse a list in Python?").headers["x-semcache"] == "exact"
    kotlin = ask(categorized, "How do I reverse a list in Kotlin?")
    assert kotlin.headers["x-semcache"] == "miss"
    assert kotlin.headers["x-semcache-category"] == "default"
    clock.advance(60)  # the new, shorter TTL applies to the entry stored before the reload
    assert ask(categorized, "How do I reverse a list in Python?").headers["x-semcache"] == "miss"


def test_invalid_policy_is_rejected_and_the_old_one_stays(categorized: Gateway, policy_file: Path) -> None:
    ask(categorized, "How do I reverse a list in Python?")
    categorized.wait_until_stored(1)
    policy_file.write_text(yaml.safe_dump(policy(python={"similarity_threshold": 1.4, "ttl": 5})))

    response = reload(categorized)

    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "invalid_policy"
    assert "categories[1].similarity_threshold: must be in (0, 1], got 1.4" in body["problems"]
    assert any(problem.startswith("categories[1].ttl: unknown key") for problem in body["problems"])
    assert ask(categorized, "How do I reverse a list in Python?").headers["x-semcache"] == "exact"
    assert ask(categorized, "python: reverse a list").headers["x-semcache"] == "miss"  # still 0.99


def test_reload_needs_the_admin_key(categorized: Gateway) -> None:
    assert reload(categorized, key="sk-not-admin").status_code == 401
    with categorized.http() as http:
        assert http.get("/admin/stats").status_code == 401
        stats = http.get("/admin/stats", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert stats["categories"]["realtime"]["cacheable"] is False
    assert stats["categories"]["python"]["similarity_threshold"] == 0.99


def test_admin_routes_are_off_without_an_admin_key(gateway: Gateway) -> None:
    assert reload(gateway).status_code == 404


def test_example_config_and_policies_run_in_the_gateway(
    start_gateway: GatewayFactory, gateway_config: GatewayConfig
) -> None:
    from gateway.config import load_config

    example = load_config(Path(__file__).resolve().parents[3] / "config.example.yaml")
    assert example.policy is not None
    config = replace(gateway_config, policy=example.policy)
    with start_gateway(config=config) as gateway:
        assert ask(gateway, "What's the weather going to be like in Berlin tomorrow?").headers["x-semcache"] == "bypass"
        coding = ask(gateway, "How do I read a file line by line in Python?")
        assert coding.headers["x-semcache-category"] == "code"
