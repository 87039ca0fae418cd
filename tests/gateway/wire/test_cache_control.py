"""Per-request cache directives: our spellings and LiteLLM's, from headers and from the body."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.wire.cache_control import MAX_NAMESPACE_CHARS, CacheControl, parse_cache_control

seconds = st.integers(0, 10**7) | st.floats(0, 1e7, allow_nan=False)
positive_seconds = st.integers(1, 10**7) | st.floats(1e-3, 1e7, allow_nan=False)
names = st.text(st.characters(categories=("L", "N", "P")), min_size=1, max_size=MAX_NAMESPACE_CHARS)


def test_nothing_given_is_the_default() -> None:
    assert parse_cache_control({}, None) == CacheControl()
    assert parse_cache_control({}, {}) == CacheControl()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"no_cache": True}, CacheControl(lookup=False)),
        ({"no-cache": True}, CacheControl(lookup=False)),
        ({"no_store": True}, CacheControl(store=False)),
        ({"no-store": True}, CacheControl(store=False)),
        ({"no-cache": False, "no-store": False}, CacheControl()),
        ({"max_age": 60}, CacheControl(max_age_s=60)),
        ({"s-maxage": 60}, CacheControl(max_age_s=60)),
        ({"s-max-age": 60}, CacheControl(max_age_s=60)),
        ({"threshold": 0.97}, CacheControl(threshold=0.97)),
        ({"ttl": 300}, CacheControl(ttl_s=300)),
        ({"namespace": "team-a"}, CacheControl(namespace="team-a")),
        ({"use-cache": True}, CacheControl()),  # LiteLLM's opt-in: this cache is always on
        ({"ttl": None, "namespace": None, "s-maxage": None, "no-cache": None}, CacheControl()),  # null: unset
        ({"max_age": 600, "s-maxage": 60}, CacheControl(max_age_s=60)),  # the stricter one
    ],
)
def test_each_spelling(body: dict[str, Any], expected: CacheControl) -> None:
    assert parse_cache_control({}, body) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("no-cache", CacheControl(lookup=False)),
        ("no-store", CacheControl(store=False)),
        ("max-age=60", CacheControl(max_age_s=60)),
        ("s-maxage=60", CacheControl(max_age_s=60)),
        ('S-MaxAge="30", max-age=90', CacheControl(max_age_s=30)),
        ("no-cache, no-store, s-maxage=5", CacheControl(lookup=False, store=False, max_age_s=5)),
    ],
)
def test_each_header(header: str, expected: CacheControl) -> None:
    assert parse_cache_control({"cache-control": header}, None) == expected


@given(
    lookup_flag=st.sampled_from([None, "no_cache", "no-cache"]),
    store_flag=st.sampled_from([None, "no_store", "no-store"]),
    max_age=st.none() | st.tuples(st.sampled_from(["max_age", "s-maxage", "s-max-age"]), seconds),
    header_max_age=st.none() | seconds,
    ttl=st.none() | positive_seconds,
    namespace=st.none() | names,
)
def test_any_mix_of_spellings(
    *,
    lookup_flag: str | None,
    store_flag: str | None,
    max_age: tuple[str, float] | None,
    header_max_age: float | None,
    ttl: float | None,
    namespace: str | None,
) -> None:
    body: dict[str, Any] = {}
    if lookup_flag:
        body[lookup_flag] = True
    if store_flag:
        body[store_flag] = True
    if max_age:
        body[max_age[0]] = max_age[1]
    if ttl is not None:
        body["ttl"] = ttl
    if namespace is not None:
        body["namespace"] = namespace
    headers = {} if header_max_age is None else {"cache-control": f"s-maxage={header_max_age}"}

    control = parse_cache_control(headers, body)

    ages = [float(age) for age in (header_max_age, max_age[1] if max_age else None) if age is not None]
    assert control == CacheControl(
        lookup=lookup_flag is None,
        store=store_flag is None,
        max_age_s=min(ages) if ages else None,
        ttl_s=ttl,
        namespace=namespace,
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"ttl": 0}, "cache.ttl"),
        ({"ttl": -5}, "cache.ttl"),
        ({"ttl": "soon"}, "cache.ttl"),
        ({"ttl": True}, "cache.ttl"),
        ({"ttl": float("inf")}, "cache.ttl"),
        ({"s-maxage": -1}, "cache.s-maxage"),
        ({"s-max-age": "old"}, "cache.s-max-age"),
        ({"max_age": float("nan")}, "cache.max_age"),
        ({"namespace": ""}, "cache.namespace"),
        ({"namespace": "x" * (MAX_NAMESPACE_CHARS + 1)}, "cache.namespace"),
        ({"namespace": 7}, "cache.namespace"),
        ({"namespace": "a\nb"}, "cache.namespace"),
        ({"no-cache": "yes"}, "cache.no-cache"),
        ({"no-store": 1}, "cache.no-store"),
        ({"use-cache": "true"}, "cache.use-cache"),
        ({"threshold": 1.5}, "cache.threshold"),
        ({"ttl_s": 5}, "cache"),  # unknown key
    ],
)
def test_bad_values_name_their_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_cache_control({}, body)
    assert raised.value.status_code == 400
    assert raised.value.body()["error"]["param"] == param
    assert raised.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("header", ["s-maxage=-3", "s-maxage=soon", "max-age=nan"])
def test_bad_header_values_are_400(header: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_cache_control({"cache-control": header}, None)
    assert raised.value.body()["error"]["param"].startswith("Cache-Control")
