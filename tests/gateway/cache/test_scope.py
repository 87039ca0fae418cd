"""Cache keys: the scope partitions by everything that can change an answer, and by nothing else."""

from __future__ import annotations

import copy
import hashlib
import json
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.cache.scope import CacheKey, Uncacheable, cache_key, normalize_prompt, tenant_for
from gateway.wire import parse_chat_request, parse_text_request

# Hypothesis' deadline and slow-generation check time the machine: speed lives in bench/, not here.
untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.text(alphabet=st.characters(categories=("L", "N", "P")), min_size=1, max_size=12)
prompts = st.lists(words, min_size=1, max_size=8).map(" ".join)
turns = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": prompts}), max_size=3
)
json_scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8)
tool_specs = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.text(alphabet="abcdefghij_", min_size=1, max_size=8)},
                optional={"description": st.text(max_size=20)},
            ),
        }
    ),
    min_size=1,
    max_size=3,
)

# Every parameter that can change an answer, each with the values a request may carry.
ANSWER_PARAMETERS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["sim-large", "sim-small", "gpt-4o", "llama-3"]),
    "temperature": st.floats(0, 2, allow_nan=False),
    "top_p": st.floats(0, 1, allow_nan=False),
    "max_tokens": st.integers(1, 100_000),
    "seed": st.integers(-(2**31), 2**31),
    "stop": st.text(min_size=1, max_size=4) | st.lists(st.text(min_size=1, max_size=4), max_size=3),
    "tools": tool_specs,
    "tool_choice": st.sampled_from(["none", "auto", "required"])
    | st.builds(lambda name: {"type": "function", "function": {"name": name}}, st.text(min_size=1, max_size=6)),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}])
    | st.builds(
        lambda name: {"type": "json_schema", "json_schema": {"name": name, "schema": {"type": "object"}}},
        st.text(min_size=1, max_size=6),
    ),
}
NEUTRAL_PARAMETERS: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "user": st.text(max_size=16),
    "metadata": st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
}


@st.composite
def request_bodies(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(prompts)})
    messages.extend(draw(turns))
    messages.append({"role": "user", "content": draw(prompts)})
    body: dict[str, Any] = {"model": draw(ANSWER_PARAMETERS["model"]), "messages": messages}
    for name in draw(st.sets(st.sampled_from(sorted(set(ANSWER_PARAMETERS) - {"model"})))):
        body[name] = draw(ANSWER_PARAMETERS[name])
    for name in draw(st.sets(st.sampled_from(sorted(NEUTRAL_PARAMETERS)))):
        body[name] = draw(NEUTRAL_PARAMETERS[name])
    return body


tenants = st.text(min_size=1, max_size=12)


def key_of(body: dict[str, Any], tenant: str = "team-a") -> CacheKey:
    key = cache_key(parse_chat_request(body), tenant=tenant)
    assert isinstance(key, CacheKey), key
    return key


@untimed
@given(body=request_bodies(), tenant=tenants)
def test_cache_key_is_deterministic(body: dict[str, Any], tenant: str) -> None:
    reordered = dict(reversed(list(copy.deepcopy(body).items())))

    assert key_of(body, tenant) == key_of(copy.deepcopy(body), tenant) == key_of(reordered, tenant)


@untimed
@given(body=request_bodies(), tenant=tenants, other=tenants)
def test_tenant_changes_scope(body: dict[str, Any], tenant: str, other: str) -> None:
    assume(tenant != other)

    assert key_of(body, tenant).scope != key_of(body, other).scope


@untimed
@given(body=request_bodies(), data=st.data(), name=st.sampled_from(sorted(ANSWER_PARAMETERS)))
def test_any_answer_parameter_changes_scope(body: dict[str, Any], data: st.DataObject, name: str) -> None:
    changed = copy.deepcopy(body)
    changed[name] = data.draw(ANSWER_PARAMETERS[name], label=name)
    assume(changed.get(name) != body.get(name))

    before, after = key_of(body), key_of(changed)

    assert before.scope != after.scope
    assert before.exact != after.exact


@untimed
@given(body=request_bodies(), name=st.sampled_from(sorted(set(ANSWER_PARAMETERS) - {"model"})))
def test_adding_or_dropping_a_parameter_changes_scope(body: dict[str, Any], name: str) -> None:
    dropped = {key: value for key, value in body.items() if key != name}
    assume(name in body)

    assert key_of(body).scope != key_of(dropped).scope


@untimed
@given(body=request_bodies(), prompt=prompts)
def test_system_prompt_changes_scope(body: dict[str, Any], prompt: str) -> None:
    messages = body["messages"]
    if messages[0]["role"] == "system":
        assume(messages[0]["content"] != prompt)
        changed_messages = [{"role": "system", "content": prompt}, *messages[1:]]
    else:
        changed_messages = [{"role": "system", "content": prompt}, *messages]

    assert key_of(body).scope != key_of({**body, "messages": changed_messages}).scope


@untimed
@given(body=request_bodies(), data=st.data())
def test_any_prior_turn_changes_scope(body: dict[str, Any], data: st.DataObject) -> None:
    context = body["messages"][:-1]
    assume(context)
    index = data.draw(st.integers(0, len(context) - 1), label="turn")
    changed = copy.deepcopy(body)
    changed["messages"][index]["content"] += " (edited)"

    assert key_of(body).scope != key_of(changed).scope


@untimed
@given(body=request_bodies())
def test_dropping_a_prior_turn_changes_scope(body: dict[str, Any]) -> None:
    assume(len(body["messages"]) > 1)
    changed = {**body, "messages": body["messages"][1:]}

    assert key_of(body).scope != key_of(changed).scope


@untimed
@given(body=request_bodies(), prompt=prompts)
def test_the_last_user_message_changes_only_the_exact_key(body: dict[str, Any], prompt: str) -> None:
    assume(normalize_prompt(prompt) != normalize_prompt(body["messages"][-1]["content"]))
    changed = {**body, "messages": [*body["messages"][:-1], {"role": "user", "content": prompt}]}

    before, after = key_of(body), key_of(changed)

    assert before.scope == after.scope
    assert before.exact != after.exact
    assert after.prompt == normalize_prompt(prompt)


@untimed
@given(body=request_bodies(), data=st.data(), name=st.sampled_from(sorted(NEUTRAL_PARAMETERS)))
def test_stream_user_and_metadata_do_not_change_the_key(body: dict[str, Any], data: st.DataObject, name: str) -> None:
    changed = copy.deepcopy(body)
    changed[name] = data.draw(NEUTRAL_PARAMETERS[name], label=name)
    dropped = {key: value for key, value in body.items() if key != name}

    assert key_of(body) == key_of(changed) == key_of(dropped)


@untimed
@given(
    body=request_bodies(),
    sentence=st.lists(words, min_size=1, max_size=8),
    gaps=st.lists(st.text(alphabet=" \t\n\r\u00a0\u2003", min_size=1, max_size=4), min_size=9, max_size=9),
    edges=st.tuples(st.text(alphabet=" \t\n", max_size=3), st.text(alphabet=" \t\n", max_size=3)),
)
def test_whitespace_only_differences_give_the_same_exact_key(
    body: dict[str, Any], sentence: list[str], gaps: list[str], edges: tuple[str, str]
) -> None:
    plain = " ".join(sentence)
    spaced = edges[0] + "".join(word + gap for word, gap in zip(sentence, gaps, strict=False)).rstrip() + edges[1]
    one = {**body, "messages": [*body["messages"][:-1], {"role": "user", "content": plain}]}
    other = {**body, "messages": [*body["messages"][:-1], {"role": "user", "content": spaced}]}

    assert key_of(one) == key_of(other)
    assert key_of(one).prompt == unicodedata.normalize("NFC", plain)


def test_unicode_composition_does_not_change_the_exact_key() -> None:
    composed = {"model": "m", "messages": [{"role": "user", "content": "caf\u00e9 au lait"}]}
    decomposed = {"model": "m", "messages": [{"role": "user", "content": "cafe\u0301 au lait"}]}

    assert key_of(composed) == key_of(decomposed)


def test_case_and_punctuation_do_change_the_exact_key() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "Is it safe?"}]}
    lower = {"model": "m", "messages": [{"role": "user", "content": "is it safe"}]}

    assert key_of(base).scope == key_of(lower).scope
    assert key_of(base).exact != key_of(lower).exact


def test_text_parts_are_keyed_like_the_same_text() -> None:
    as_string = {"model": "m", "messages": [{"role": "user", "content": "line one\nline two"}]}
    as_parts = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "line one"}, {"type": "text", "text": "line two"}]}
        ],
    }

    assert key_of(as_string) == key_of(as_parts)


@untimed
@given(body=request_bodies(), n=st.integers(2, 16))
def test_n_above_one_is_uncacheable(body: dict[str, Any], n: int) -> None:
    assert cache_key(parse_chat_request({**body, "n": n}), tenant="t") == Uncacheable(reason="n>1")


@untimed
@given(body=request_bodies())
def test_n_of_one_is_keyed_like_no_n(body: dict[str, Any]) -> None:
    assert key_of({**body, "n": 1}) == key_of({key: value for key, value in body.items() if key != "n"})


@pytest.mark.parametrize(
    "last",
    [
        {"role": "assistant", "content": "an answer"},
        {"role": "system", "content": "be brief"},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
    ],
)
def test_last_message_not_from_the_user_is_uncacheable(last: dict[str, Any]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}, last]}

    assert cache_key(parse_chat_request(body), tenant="t") == Uncacheable(reason="last-message-not-user")


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}],
        [{"type": "text", "text": "what is in this picture?"}, {"type": "image_url", "image_url": {"url": "x"}}],
        [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}],
    ],
)
def test_image_and_other_non_text_content_is_uncacheable(content: list[dict[str, Any]]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}

    assert cache_key(parse_chat_request(body), tenant="t") == Uncacheable(reason="non-text-prompt")


@untimed
@given(prompt=prompts, model=ANSWER_PARAMETERS["model"])
def test_chat_and_text_completions_never_share_a_scope(prompt: str, model: str) -> None:
    chat_key = key_of({"model": model, "messages": [{"role": "user", "content": prompt}]})
    text_key = cache_key(parse_text_request({"model": model, "prompt": prompt}), tenant="team-a")

    assert isinstance(text_key, CacheKey)
    assert text_key.prompt == chat_key.prompt
    assert text_key.scope != chat_key.scope
    assert text_key.exact != chat_key.exact


def test_extras_on_the_last_message_change_scope() -> None:
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    named = {"model": "m", "messages": [{"role": "user", "content": "hi", "name": "alice"}]}

    assert key_of(plain).scope != key_of(named).scope


api_keys = st.text(min_size=1, max_size=40).map(lambda tail: f"sk-{tail}")


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@untimed
@given(listed=st.dictionaries(api_keys, st.text(min_size=1, max_size=10), min_size=1, max_size=5))
def test_listed_keys_map_to_their_tenant(listed: dict[str, str]) -> None:
    by_digest = {sha(key): tenant for key, tenant in listed.items()}

    for key, tenant in listed.items():
        assert tenant_for(key, by_digest) == f"tenant:{tenant}"


def test_a_tenant_named_anonymous_does_not_share_with_keyless_callers() -> None:
    assert tenant_for("sk-a", {sha("sk-a"): "anonymous"}) != tenant_for(None, {sha("sk-a"): "anonymous"})


@untimed
@given(
    listed=st.dictionaries(api_keys, st.text(min_size=1, max_size=10), max_size=5),
    first=api_keys,
    second=api_keys,
)
def test_unlisted_keys_are_isolated_tenants_of_their_own(listed: dict[str, str], first: str, second: str) -> None:
    assume(first != second and first not in listed and second not in listed)
    by_digest = {sha(key): tenant for key, tenant in listed.items()}

    first_tenant, second_tenant = tenant_for(first, by_digest), tenant_for(second, by_digest)

    assert first_tenant != second_tenant
    assert first_tenant == tenant_for(first, by_digest)
    assert first_tenant.startswith("key:") and second_tenant.startswith("key:")
    assert first not in first_tenant  # the raw key never appears in a tenant name
    assert {first_tenant, second_tenant}.isdisjoint(listed.values())
    assert "anonymous" not in (first_tenant, second_tenant)


@pytest.mark.parametrize("api_key", [None, ""])
def test_no_key_is_the_anonymous_tenant(api_key: str | None) -> None:
    assert tenant_for(api_key, {sha("sk-a"): "team-a"}) == "anonymous"


namespaces = st.none() | st.text(min_size=1, max_size=128)


@untimed
@given(prompt=prompts, one=namespaces, other=namespaces, tenant=st.sampled_from(["anonymous", "tenant:a"]))
def test_a_namespace_is_a_partition_of_its_own(prompt: str, one: str | None, other: str | None, tenant: str) -> None:
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": prompt}]})
    first = cache_key(request, tenant=tenant, namespace=one)
    second = cache_key(request, tenant=tenant, namespace=other)
    assert isinstance(first, CacheKey) and isinstance(second, CacheKey)
    assert (first.scope == second.scope) == (one == other)
    assert (first.exact == second.exact) == (one == other)
    # Within a namespace, tenants stay apart.
    elsewhere = cache_key(request, tenant="tenant:b", namespace=one)
    assert isinstance(elsewhere, CacheKey) and elsewhere.scope != first.scope


def test_without_a_namespace_the_key_is_what_it_always_was() -> None:
    # Entries stored before namespaces existed keep their keys: no namespace adds nothing to the digest.
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert cache_key(request, tenant="anonymous", namespace=None) == cache_key(request, tenant="anonymous")
    key = cache_key(request, tenant="anonymous")
    assert isinstance(key, CacheKey)
    expected = {"tenant": "anonymous", "endpoint": "chat", "parameters": {"model": "m"}, "context": []}
    canonical = json.dumps(expected, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert key.scope == hashlib.sha256(canonical.encode()).hexdigest()
