"""POST /v1/feedback through the real gateway: a bad rating removes the entry and tightens its
category's threshold, good ones relax it slowly down to the configured one, only the caller's own
hits can be rated, and the state survives a restart. Also `SemanticCache.feedback`, with a verifier."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from dataclasses import replace
from typing import Any

import httpx
import pytest

from embeddings import Embedder
from gateway import CacheHit, CacheMiss, GatewayConfig, InvalidRequest, SemanticCache
from gateway.config import AdminConfig, FeedbackConfig, key_digest
from gateway.errors import AlreadyRated, HitNotFound
from tests.bodies import answer, chat
from tests.conftest import Gateway, GatewayFactory, Upstream
from tests.doubles import BrokenStore, FakeClock

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "python: reverse a list"  # 0.98 to QUESTION
CLOSER = "How do I reverse a list in Python"  # 0.999 to QUESTION
FLOOR = 0.85  # gateway_config's similarity_threshold
ADMIN_KEY = "sk-admin-test"
KEY_A = "sk-test-tenant-a"
KEY_B = "sk-test-tenant-b"


def ask(gateway: Gateway, prompt: str, *, api_key: str = KEY_A) -> tuple[str, dict[str, str], str]:
    """(x-semcache, headers, response id)."""
    raw = gateway.client(api_key).chat.completions.with_raw_response.create(
        model="sim-large", messages=[{"role": "user", "content": prompt}]
    )
    return raw.headers["x-semcache"], dict(raw.headers), raw.parse().id


def rate(gateway: Gateway, body: Any, *, api_key: str = KEY_A) -> httpx.Response:
    with gateway.http() as http:
        if isinstance(body, bytes):
            return http.post("/v1/feedback", content=body, headers={"authorization": f"Bearer {api_key}"})
        return http.post("/v1/feedback", json=body, headers={"authorization": f"Bearer {api_key}"})


def threshold_gauge(gateway: Gateway, category: str = "default") -> float:
    return gateway.metric(f'semcache_similarity_threshold{{category="{category}"}}')


def stats(gateway: Gateway) -> dict[str, Any]:
    with gateway.http() as http:
        response = http.get("/admin/stats", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["categories"]["default"]
    return result


def paraphrase_hit(gateway: Gateway, *, api_key: str = KEY_A) -> tuple[dict[str, str], str]:
    """Store QUESTION, then get a semantic hit on it with PARAPHRASE: (headers, response id)."""
    stored = gateway.metric("semcache_stored_total")
    assert ask(gateway, QUESTION, api_key=api_key)[0] == "miss"
    gateway.wait_until_stored(int(stored) + 1)
    outcome, headers, response_id = ask(gateway, PARAPHRASE, api_key=api_key)
    assert outcome == "hit"
    return headers, response_id


# Most tests here show what ratings do to a threshold when the gateway trusts every caller and lets
# one rating move it all the way (the rule itself); the defaults (only listed tenants move
# thresholds, by at most feedback.max_step a rating) have tests of their own.
TRUSTING = FeedbackConfig(moves_thresholds="everyone", max_step=1.0)


@pytest.fixture
def gateway_config(gateway_config: GatewayConfig) -> GatewayConfig:
    return replace(gateway_config, feedback=TRUSTING)


@pytest.fixture
def admin_gateway(start_gateway: GatewayFactory) -> Any:
    with start_gateway(admin=AdminConfig(api_key=ADMIN_KEY)) as gateway:
        yield gateway


def test_a_bad_hit_is_removed_and_its_similarity_no_longer_served(admin_gateway: Gateway, upstream: Upstream) -> None:
    gateway = admin_gateway
    headers, response_id = paraphrase_hit(gateway)
    similarity = float(headers["x-semcache-similarity"])
    assert threshold_gauge(gateway) == FLOOR

    response = rate(gateway, {"id": response_id, "rating": "bad"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "semcache.feedback"
    assert body["entry"] == headers["x-semcache-entry"]
    assert (body["rating"], body["category"], body["counted"], body["entry_removed"]) == ("bad", "default", True, True)
    assert body["similarity"] == pytest.approx(similarity, abs=1e-4)
    assert body["threshold"] > similarity
    # The entry is gone: the original question goes upstream again and is stored afresh ...
    assert ask(gateway, QUESTION)[0] == "miss"
    gateway.wait_until_stored(2)
    # ... and the paraphrase, as close to it as before, is below the raised threshold now.
    outcome, again, _ = ask(gateway, PARAPHRASE)
    assert outcome == "miss"
    assert float(again["x-semcache-similarity"]) == pytest.approx(similarity, abs=1e-4)
    assert float(again["x-semcache-similarity"]) >= FLOOR  # it would have hit before the rating
    assert len(upstream.state.received) == 3
    assert threshold_gauge(gateway) == pytest.approx(body["threshold"])
    seen = stats(gateway)
    assert seen["similarity_threshold"] == FLOOR
    assert seen["effective_threshold"] == pytest.approx(body["threshold"])
    assert seen["feedback"] == {
        "ratings": 1, "bad": 1, "target_error_rate": 0.05, "floor": FLOOR, "max_threshold": 1.0,
    }  # fmt: skip
    assert gateway.metric('semcache_feedback_total{category="default",rating="bad"}') == 1


def test_good_ratings_relax_the_threshold_slowly_and_never_below_the_configured_one(
    start_gateway: GatewayFactory,
) -> None:
    # A lenient controller, so that a few ratings make the point: the share of bad ratings (point
    # estimate) may be 30 %, and each good rating lowers the threshold by 0.04 at most.
    feedback = replace(TRUSTING, target_error_rate=0.3, confidence=0.5, relax_step=0.04)
    with start_gateway(feedback=feedback) as gateway:
        _, response_id = paraphrase_hit(gateway)
        tightened = rate(gateway, {"id": response_id, "rating": "bad"}).json()["threshold"]
        assert ask(gateway, QUESTION)[0] == "miss"  # stored again: its entry was removed
        gateway.wait_until_stored(2)

        thresholds = [tightened]
        for _ in range(8):
            outcome, _, hit_id = ask(gateway, CLOSER)  # 0.999: served above the raised threshold
            assert outcome == "hit"
            response = rate(gateway, {"id": hit_id, "rating": "good"})
            assert response.status_code == 200, response.text
            assert response.json()["entry_removed"] is False
            thresholds.append(response.json()["threshold"])

        steps = [before - after for before, after in itertools.pairwise(thresholds)]
        assert all(0 <= step <= 0.04 + 1e-9 for step in steps)  # never up, never faster than relax_step
        assert steps[:2] == [0, 0]  # 1 bad in 2 or 3 rated: still above 30 %
        assert thresholds[-1] == FLOOR  # back at the configured threshold, and no lower
        assert min(thresholds) == FLOOR
        assert ask(gateway, PARAPHRASE)[0] == "hit"  # served again


def test_another_tenant_cannot_rate_your_hits(admin_gateway: Gateway) -> None:
    gateway = admin_gateway
    headers, response_id = paraphrase_hit(gateway, api_key=KEY_A)
    entry = headers["x-semcache-entry"]

    for body in ({"id": response_id, "rating": "bad"}, {"entry": entry, "rating": "bad"},
                 {"id": response_id, "entry": entry, "rating": "good"}):  # fmt: skip
        response = rate(gateway, body, api_key=KEY_B)
        assert response.status_code == 404, body
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] in ("hit_not_found", "entry_not_found")  # as for an entry that does not exist

    # Nothing changed: the entry is served, the threshold is the configured one, nothing counted.
    assert ask(gateway, PARAPHRASE, api_key=KEY_A)[0] == "hit"
    assert stats(gateway)["effective_threshold"] == FLOOR
    assert stats(gateway)["feedback"]["ratings"] == 0
    with sqlite3.connect(gateway.config.cache.store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM entries WHERE entry_id = ?", (entry,)).fetchone() == (1,)
    # The owner can.
    assert rate(gateway, {"entry": entry, "rating": "bad"}, api_key=KEY_A).status_code == 200


def test_a_hit_is_rated_once(gateway: Gateway) -> None:
    _, response_id = paraphrase_hit(gateway)
    assert rate(gateway, {"id": response_id, "rating": "good"}).status_code == 200

    again = rate(gateway, {"id": response_id, "rating": "bad"})

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_rated"
    assert ask(gateway, PARAPHRASE)[0] == "hit"  # the second rating did nothing


def test_a_bad_exact_hit_removes_the_entry_but_says_nothing_about_the_threshold(gateway: Gateway) -> None:
    ask(gateway, QUESTION)
    gateway.wait_until_stored(1)
    outcome, _, response_id = ask(gateway, QUESTION)
    assert outcome == "exact"

    body = rate(gateway, {"id": response_id, "rating": "bad"}).json()

    assert (body["counted"], body["entry_removed"], body["similarity"]) == (False, True, None)
    assert body["threshold"] == FLOOR
    assert ask(gateway, QUESTION)[0] == "miss"


def test_thresholds_survive_a_restart_and_old_hits_are_rated_by_entry(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    with start_gateway() as gateway:
        _, response_id = paraphrase_hit(gateway)
        raised = rate(gateway, {"id": response_id, "rating": "bad"}).json()["threshold"]
        ask(gateway, QUESTION)
        gateway.wait_until_stored(2)
        _, headers, old_id = ask(gateway, CLOSER)
        old_entry = headers["x-semcache-entry"]

    with start_gateway() as gateway:  # the same SQLite file
        assert threshold_gauge(gateway) == pytest.approx(raised)
        assert ask(gateway, PARAPHRASE)[0] == "miss"
        # The hit served before the restart is not remembered: its id alone is unknown ...
        unknown = rate(gateway, {"id": old_id, "rating": "bad"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "hit_not_found"
        # ... its entry is, to its own tenant only; a bad rating removes it, the threshold stays.
        assert rate(gateway, {"entry": old_entry, "rating": "bad"}, api_key=KEY_B).status_code == 404
        body = rate(gateway, {"id": old_id, "entry": old_entry, "rating": "bad"}).json()
        assert (body["counted"], body["entry_removed"]) == (False, True)
        assert body["threshold"] == pytest.approx(raised)
        assert ask(gateway, QUESTION)[0] == "miss"


@pytest.mark.parametrize(
    ("payload", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (b'["bad"]', 400, None, None),
        (b'{"id": "chatcmpl-x"}', 400, "rating", None),
        (b'{"id": "chatcmpl-x", "rating": "meh"}', 400, "rating", None),
        (b'{"id": "chatcmpl-x", "rating": true}', 400, "rating", None),
        (b'{"rating": "bad"}', 400, "id", None),
        (b'{"id": 7, "rating": "bad"}', 400, "id", None),
        (b'{"entry": "", "rating": "bad"}', 400, "entry", None),
        (b'{"entry": "abc", "rating": "bad", "similarity": 0.5}', 400, "similarity", "unknown_parameter"),
        (b'{"id": "chatcmpl-never-served", "rating": "bad"}', 404, "id", "hit_not_found"),
        (b'{"entry": "0123456789abcdef0123456789abcdef", "rating": "bad"}', 404, "entry", "entry_not_found"),
    ],
)
def test_bad_input_gets_an_openai_style_error(
    gateway: Gateway, payload: bytes, status: int, param: str | None, code: str | None
) -> None:
    response = rate(gateway, payload)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["param"] == param
    assert error["code"] == code


def test_an_id_and_an_entry_of_different_hits_are_refused(gateway: Gateway) -> None:
    _, response_id = paraphrase_hit(gateway)

    response = rate(gateway, {"id": response_id, "entry": "0" * 32, "rating": "bad"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "entry"
    assert ask(gateway, PARAPHRASE)[0] == "hit"


@pytest.mark.parametrize("state", ["not json", '["not", "an", "object"]'])
def test_a_damaged_feedback_state_does_not_stop_the_index_being_rebuilt(
    start_gateway: GatewayFactory, state: str
) -> None:
    with start_gateway() as gateway:
        paraphrase_hit(gateway)
    with sqlite3.connect(gateway.config.cache.store.path) as db:
        db.execute("INSERT OR REPLACE INTO feedback (category, state) VALUES ('default', ?)", (state,))

    with start_gateway() as gateway:  # the same file
        assert ask(gateway, PARAPHRASE)[0] == "hit"  # the index was rebuilt all the same
        assert gateway.metric('semcache_fail_open_total{stage="rebuild"}') == 0


def test_a_store_outage_gives_a_503_never_a_500(start_gateway: GatewayFactory) -> None:
    with start_gateway(store=BrokenStore()) as gateway:
        response = rate(gateway, {"entry": "0" * 32, "rating": "bad"})
        assert gateway.metric('semcache_fail_open_total{stage="feedback"}') == 1  # the rating (start counts as rebuild)

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["code"] == "store_unavailable"


def test_the_feedback_route_is_not_forwarded_upstream(gateway: Gateway, upstream: Upstream) -> None:
    rate(gateway, {"rating": "bad"})
    assert upstream.state.received == []


# --- the library API -----------------------------------------------------------------------------


class AcceptingVerifier:
    """A verifier that accepts every candidate from its floor up (the engine's contract only)."""

    floor = 0.5

    def accepts(self, *, query: str, candidate: str, similarity: float) -> bool:
        return True


async def paraphrase_hit_in(cache: SemanticCache) -> CacheHit:
    """Store QUESTION's answer for tenant sk-a, then look up PARAPHRASE: a semantic hit."""
    miss = await cache.lookup(chat(QUESTION), api_key="sk-a")
    assert isinstance(miss, CacheMiss)
    await cache.remember(miss, answer("Use reversed()."))
    hit = await cache.lookup(chat(PARAPHRASE), api_key="sk-a")
    assert isinstance(hit, CacheHit)
    return hit


def test_library_feedback_with_a_verifier_raises_its_similarity_floor(
    gateway_config: GatewayConfig, real_embedder: Embedder, clock: FakeClock
) -> None:
    async def scenario() -> None:
        cache = SemanticCache(gateway_config, embedder=real_embedder, clock=clock, verifier=AcceptingVerifier())
        async with cache:
            hit = await paraphrase_hit_in(cache)
            assert cache.engine.thresholds() == {"default": 0.5}  # the verifier's floor

            with pytest.raises(HitNotFound):
                await cache.feedback(rating="bad", response_id=hit.answer["id"], api_key="sk-b")
            with pytest.raises(InvalidRequest):
                await cache.feedback(rating="bad", api_key="sk-a")
            result = await cache.feedback(rating="bad", response_id=hit.answer["id"], api_key="sk-a")
            with pytest.raises(AlreadyRated):
                await cache.feedback(rating="bad", entry_id=hit.entry_id, api_key="sk-a")

            assert result.counted and result.entry_removed
            assert result.threshold is not None and result.threshold > hit.similarity
            miss = await cache.lookup(chat(QUESTION), api_key="sk-a")
            assert isinstance(miss, CacheMiss)
            await cache.remember(miss, answer("Use reversed()."))
            again = await cache.lookup(chat(PARAPHRASE), api_key="sk-a")
            assert isinstance(again, CacheMiss)  # the verifier would accept it; the floor does not
            assert again.best_similarity == pytest.approx(hit.similarity)

    asyncio.run(scenario())


def test_a_category_feedback_cannot_raise_beyond_its_ceiling(
    tmp_path: Any, gateway_config: GatewayConfig, real_embedder: Embedder, clock: FakeClock
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "categories:\n  - name: default\n    similarity_threshold: 0.85\n    feedback: {max_threshold: 0.85}\n"
    )

    async def scenario() -> None:
        async with SemanticCache(replace(gateway_config, policy=str(policy)), embedder=real_embedder,
                                 clock=clock) as cache:  # fmt: skip
            hit = await paraphrase_hit_in(cache)

            result = await cache.feedback(rating="bad", entry_id=hit.entry_id, api_key="sk-a")

            assert (result.counted, result.entry_removed, result.threshold) == (True, True, 0.85)

    asyncio.run(scenario())


def test_a_category_that_leaves_the_policy_takes_its_feedback_with_it(
    tmp_path: Any, gateway_config: GatewayConfig, real_embedder: Embedder, clock: FakeClock
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "categories:\n  - name: code\n    keywords: [python]\n    similarity_threshold: 0.85\n"
        "  - name: default\n    similarity_threshold: 0.9\n"
    )

    async def scenario() -> None:
        async with SemanticCache(replace(gateway_config, policy=str(policy)), embedder=real_embedder,
                                 clock=clock) as cache:  # fmt: skip
            hit = await paraphrase_hit_in(cache)
            assert hit.category == "code"
            await cache.feedback(rating="bad", response_id=hit.answer["id"], api_key="sk-a")
            assert cache.engine.thresholds()["code"] > 0.98
            assert "code" in await cache.engine.store.feedback_states()

            policy.write_text("categories:\n  - name: default\n    similarity_threshold: 0.9\n")
            await cache.reload_policy()
            assert cache.engine.thresholds() == {"default": 0.9}
            assert await cache.engine.store.feedback_states() == {}

            policy.write_text(
                "categories:\n  - name: code\n    keywords: [python]\n    similarity_threshold: 0.85\n"
                "  - name: default\n    similarity_threshold: 0.9\n"
            )
            await cache.reload_policy()  # back, and starting afresh
            assert cache.engine.thresholds()["code"] == 0.85

    asyncio.run(scenario())


def test_by_default_only_listed_tenants_move_thresholds(
    gateway_config: GatewayConfig, real_embedder: Embedder, clock: FakeClock
) -> None:
    config = replace(  # no `moves_thresholds`: "listed_tenants"
        gateway_config,
        tenant_by_key_sha256={key_digest("sk-listed"): "team-a"},
        feedback=FeedbackConfig(max_step=1.0),
    )

    async def scenario() -> None:
        async with SemanticCache(config, embedder=real_embedder, clock=clock) as cache:
            for key, moves in (("sk-unknown", False), ("sk-listed", True)):
                miss = await cache.lookup(chat(QUESTION), api_key=key)
                assert isinstance(miss, CacheMiss)
                await cache.remember(miss, answer("Use reversed()."))
                hit = await cache.lookup(chat(PARAPHRASE), api_key=key)
                assert isinstance(hit, CacheHit)

                result = await cache.feedback(rating="bad", entry_id=hit.entry_id, api_key=key)

                assert result.entry_removed  # anyone may remove a bad answer of their own
                assert result.counted is moves
                if moves:
                    assert result.threshold is not None and result.threshold > hit.similarity
                else:
                    assert result.threshold == 0.85  # the unknown key's rating left it where it was

    asyncio.run(scenario())


def test_without_listed_tenants_a_rating_removes_the_hit_but_moves_no_threshold_by_default(
    start_gateway: GatewayFactory,
) -> None:
    with start_gateway(feedback=FeedbackConfig()) as gateway:
        _, response_id = paraphrase_hit(gateway)

        body = rate(gateway, {"id": response_id, "rating": "bad"}).json()

        assert (body["entry_removed"], body["counted"], body["threshold"]) == (True, False, FLOOR)
        assert threshold_gauge(gateway) == FLOOR  # one unknown key cannot tighten it for everyone


def test_one_bad_rating_moves_a_threshold_by_at_most_max_step(start_gateway: GatewayFactory) -> None:
    with start_gateway(feedback=FeedbackConfig(moves_thresholds="everyone")) as gateway:
        headers, response_id = paraphrase_hit(gateway)
        assert float(headers["x-semcache-similarity"]) > FLOOR + 0.1  # the unbounded rule would jump past it

        body = rate(gateway, {"id": response_id, "rating": "bad"}).json()

        assert body["counted"] is True
        assert body["threshold"] == pytest.approx(FLOOR + 0.01)


def test_an_entry_of_a_namespace_can_be_rated_by_its_tenant_after_a_restart(
    gateway_config: GatewayConfig, real_embedder: Embedder, clock: FakeClock
) -> None:
    from gateway import CacheControl

    team = CacheControl(namespace="team-a")

    async def scenario() -> None:
        async with SemanticCache(gateway_config, embedder=real_embedder, clock=clock) as cache:
            miss = await cache.lookup(chat(QUESTION), api_key="sk-a", control=team)
            assert isinstance(miss, CacheMiss)
            await cache.remember(miss, answer("Use reversed()."))
            hit = await cache.lookup(chat(PARAPHRASE), api_key="sk-a", control=team)
            assert isinstance(hit, CacheHit)
        # Restarted: the served hit is forgotten, so ownership is rebuilt from the stored request.
        async with SemanticCache(gateway_config, embedder=real_embedder, clock=clock) as cache:
            with pytest.raises(HitNotFound):
                await cache.feedback(rating="bad", entry_id=hit.entry_id, api_key="sk-b")
            result = await cache.feedback(rating="bad", entry_id=hit.entry_id, api_key="sk-a")
            assert result.entry_removed
            assert isinstance(await cache.lookup(chat(QUESTION), api_key="sk-a", control=team), CacheMiss)

    asyncio.run(scenario())
