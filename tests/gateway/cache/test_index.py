"""The HNSW index partitioned by scope, with random unit vectors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embeddings import Vector
from gateway.cache.index import _EXACT_SEARCH_MAX, IndexItem, Match, VectorIndex, similarity_from_distance
from gateway.errors import VectorIndexError

pytestmark = pytest.mark.anyio

DIMENSION = 32


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


@pytest.fixture
def index() -> Iterator[VectorIndex]:
    built = VectorIndex(DIMENSION, initial_capacity=16)
    yield built
    built.close()


def unit_vectors(rng: np.random.Generator, count: int) -> list[Vector]:
    raw = rng.standard_normal((count, DIMENSION)).astype(np.float32)
    return list(raw / np.linalg.norm(raw, axis=1, keepdims=True))


def items(
    vectors: list[Vector], *, scope: str, prefix: str, created_at: float = 1e9, expires_at: float = 1e12
) -> list[IndexItem]:
    return [
        IndexItem(entry_id=f"{prefix}{i}", scope=scope, vector=vector, created_at=created_at, expires_at=expires_at)
        for i, vector in enumerate(vectors)
    ]


def nudge(rng: np.random.Generator, vector: Vector, scale: float) -> Vector:
    moved = vector + scale * rng.standard_normal(DIMENSION).astype(np.float32)
    result: Vector = (moved / np.linalg.norm(moved)).astype(np.float32)
    return result


async def test_search_returns_best_first_with_similarity_in_unit_range(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    vectors = unit_vectors(rng, 10)
    await index.add(items(vectors, scope="s", prefix="e", created_at=100.0, expires_at=123.0))

    matches = await index.search(nudge(rng, vectors[3], 0.05), scope="s", k=10)

    assert len(matches) == 10
    assert matches[0].entry_id == "e3"
    assert matches[0].similarity > 0.95
    assert (matches[0].created_at, matches[0].expires_at) == (100.0, 123.0)
    similarities = [match.similarity for match in matches]
    assert similarities == sorted(similarities, reverse=True)
    assert all(0.0 <= similarity <= 1.0 for similarity in similarities)
    assert len({match.entry_id for match in matches}) == 10


async def test_an_exact_vector_has_similarity_one(index: VectorIndex, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 5)
    await index.add(items(vectors, scope="s", prefix="e"))

    (match,) = await index.search(vectors[2], scope="s", k=1)

    assert match.entry_id == "e2"
    assert match.similarity == pytest.approx(1.0, abs=1e-5)
    assert match.similarity <= 1.0


async def test_opposite_vector_is_clamped_to_zero(index: VectorIndex, rng: np.random.Generator) -> None:
    (vector,) = unit_vectors(rng, 1)
    await index.add(items([vector], scope="s", prefix="e"))

    (match,) = await index.search(-vector, scope="s", k=1)

    assert match.similarity == 0.0


async def test_k_is_capped_by_the_scope_size(index: VectorIndex, rng: np.random.Generator) -> None:
    await index.add(items(unit_vectors(rng, 3), scope="s", prefix="e"))

    assert len(await index.search(unit_vectors(rng, 1)[0], scope="s", k=50)) == 3


async def test_unknown_scope_finds_nothing(index: VectorIndex, rng: np.random.Generator) -> None:
    await index.add(items(unit_vectors(rng, 3), scope="s", prefix="e"))

    assert await index.search(unit_vectors(rng, 1)[0], scope="other", k=4) == []


async def test_a_scope_never_sees_another_scopes_entries(index: VectorIndex, rng: np.random.Generator) -> None:
    a_vectors, b_vectors = unit_vectors(rng, 20), unit_vectors(rng, 20)
    await index.add(items(a_vectors, scope="A", prefix="a"))
    await index.add(items(b_vectors, scope="B", prefix="b"))

    for vector in b_vectors:
        matches = await index.search(vector, scope="A", k=20)
        assert len(matches) == 20
        assert all(match.entry_id.startswith("a") for match in matches)
        assert matches[0].similarity < 0.99
    for i, vector in enumerate(b_vectors):
        (best, *_) = await index.search(vector, scope="B", k=1)
        assert best.entry_id == f"b{i}"


async def test_removed_entries_are_hidden(index: VectorIndex, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 10)
    await index.add(items(vectors, scope="s", prefix="e"))

    await index.remove(["e0", "e1", "no-such-entry"])

    assert len(index) == 8
    for vector in vectors[:2]:
        matches = await index.search(vector, scope="s", k=10)
        assert len(matches) == 8
        assert {"e0", "e1"}.isdisjoint(match.entry_id for match in matches)
        assert matches[0].similarity < 0.99


async def test_removing_every_entry_empties_the_scope(index: VectorIndex, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 3)
    await index.add(items(vectors, scope="s", prefix="e"))

    await index.remove(["e0", "e1", "e2"])

    assert len(index) == 0
    assert await index.search(vectors[0], scope="s", k=4) == []


async def test_deleted_slots_are_reused(rng: np.random.Generator) -> None:
    index = VectorIndex(DIMENSION, initial_capacity=8)
    try:
        first, second = unit_vectors(rng, 8), unit_vectors(rng, 8)
        await index.add(items(first, scope="s", prefix="old"))
        await index.remove([f"old{i}" for i in range(8)])

        await index.add(items(second, scope="s", prefix="new"))

        assert len(index) == 8
        # hnswlib's own element count (deleted ones included) did not grow: the freed slots were taken.
        assert index._hnsw.get_current_count() == 8
        for i, vector in enumerate(second):
            (best,) = await index.search(vector, scope="s", k=1)
            assert best.entry_id == f"new{i}"
            assert best.similarity == pytest.approx(1.0, abs=1e-5)
        for vector in first:
            matches = await index.search(vector, scope="s", k=8)
            assert all(match.entry_id.startswith("new") for match in matches)
    finally:
        index.close()


async def test_adding_an_existing_entry_id_replaces_it(index: VectorIndex, rng: np.random.Generator) -> None:
    old, new = unit_vectors(rng, 2)
    await index.add([IndexItem(entry_id="e", scope="s", vector=old, created_at=0.5, expires_at=1.0)])

    await index.add([IndexItem(entry_id="e", scope="t", vector=new, created_at=1.5, expires_at=2.0)])

    assert len(index) == 1
    assert await index.search(old, scope="s", k=4) == []
    (match,) = await index.search(new, scope="t", k=4)
    assert match.entry_id == "e"
    assert (match.created_at, match.expires_at) == (1.5, 2.0)
    assert match.similarity == pytest.approx(1.0, abs=1e-5)


async def test_the_index_grows_past_its_initial_capacity(rng: np.random.Generator) -> None:
    index = VectorIndex(DIMENSION, initial_capacity=4)
    try:
        vectors = unit_vectors(rng, 50)
        await index.add(items(vectors[:3], scope="s", prefix="e"))
        await index.add(items(vectors[3:], scope="s", prefix="f"))

        assert len(index) == 50
        ids = [f"e{i}" for i in range(3)] + [f"f{i}" for i in range(47)]
        for entry_id, vector in zip(ids, vectors, strict=True):
            (best,) = await index.search(vector, scope="s", k=1)
            assert best.entry_id == entry_id
    finally:
        index.close()


async def test_a_large_scope_takes_the_filtered_graph_path_and_finds_the_exact_vector(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    a_vectors, b_vectors = unit_vectors(rng, 600), unit_vectors(rng, 600)
    assert len(a_vectors) > _EXACT_SEARCH_MAX
    await index.add(items(a_vectors, scope="A", prefix="a"))
    await index.add(items(b_vectors, scope="B", prefix="b"))

    for i in range(0, 600, 37):
        matches = await index.search(a_vectors[i], scope="A", k=4)
        assert len(matches) == 4
        assert matches[0].entry_id == f"a{i}"
        assert matches[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert all(match.entry_id.startswith("a") for match in matches)
        assert [m.similarity for m in matches] == sorted((m.similarity for m in matches), reverse=True)
        # B's copy of the question sees only B, even though A's exact vector is in the graph.
        assert all(match.entry_id.startswith("b") for match in await index.search(a_vectors[i], scope="B", k=4))


async def test_the_filtered_path_skips_deleted_entries(index: VectorIndex, rng: np.random.Generator) -> None:
    vectors = unit_vectors(rng, 700)
    await index.add(items(vectors, scope="A", prefix="a"))

    await index.remove([f"a{i}" for i in range(0, 100)])

    for i in range(0, 100, 11):
        matches = await index.search(vectors[i], scope="A", k=4)
        assert len(matches) == 4
        assert all(int(match.entry_id[1:]) >= 100 for match in matches)
    (best,) = await index.search(vectors[650], scope="A", k=1)
    assert best.entry_id == "a650"


@pytest.mark.parametrize(
    ("distance", "similarity"),
    [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0), (-1e-6, 1.0), (-0.5, 1.0), (1.5, 0.0), (2.0, 0.0)],
)
def test_similarity_from_distance_clamps_to_unit_range(distance: float, similarity: float) -> None:
    assert similarity_from_distance(distance) == pytest.approx(similarity)
    assert 0.0 <= similarity_from_distance(distance) <= 1.0


async def test_entries_without_a_vector_count_and_can_be_evicted_but_are_never_found(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    [searchable] = items(unit_vectors(rng, 1), scope="s", prefix="e", created_at=0.0, expires_at=100.0)
    plain = IndexItem(entry_id="plain", scope="s", vector=None, created_at=0.0, expires_at=10.0)
    await index.add([searchable, plain])

    assert len(index) == 2
    assert searchable.vector is not None
    assert [match.entry_id for match in await index.search(searchable.vector, scope="s", k=4)] == ["e0"]
    await index.touch("plain", now=5.0)
    await index.touch("plain", now=5.0)
    assert await index.victims(1, now=5.0) == ["e0"]  # the plain entry was used twice, e0 never
    assert await index.victims(1, now=20.0) == ["plain"]  # expired entries go first
    await index.retime(ttl_s=1000.0)
    assert await index.victims(1, now=20.0) == ["e0"]  # a new TTL applies to plain entries too
    await index.remove(["plain"])
    assert len(index) == 1


class SlowIndex(VectorIndex):
    """A real index whose searches take far longer than any deadline (a huge scope, a starved CPU)."""

    def _search(self, vector: Vector, scope_key: str, k: int) -> list[Match]:
        time.sleep(0.5)
        return super()._search(vector, scope_key, k)


async def test_a_search_past_the_deadline_is_an_index_error(rng: np.random.Generator) -> None:
    index = SlowIndex(DIMENSION, initial_capacity=16, deadline_s=0.01)
    try:
        vectors = unit_vectors(rng, 2)
        await index.add(items(vectors, scope="s", prefix="e"))
        with pytest.raises(VectorIndexError, match="did not answer within 10 ms"):
            await index.search(vectors[0], scope="s", k=1)
        assert len(index) == 2  # a missed deadline loses nothing
    finally:
        await index.aclose()


async def test_a_closed_index_refuses_work_with_an_index_error(rng: np.random.Generator) -> None:
    index = VectorIndex(DIMENSION, initial_capacity=16)
    await index.add(items(unit_vectors(rng, 1), scope="s", prefix="e"))
    await index.aclose()

    with pytest.raises(VectorIndexError):
        await index.search(unit_vectors(rng, 1)[0], scope="s", k=1)


# Hypothesis' deadline and slow-generation check time the machine: speed lives in bench/, not here.
untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)

slots = st.lists(
    st.tuples(
        st.booleans(),  # searchable (a vector) or exact-only
        st.floats(0, 100),  # expires_at
        st.integers(0, 20),  # hits
        st.floats(0, 100),  # last used
    ),
    min_size=1,
    max_size=80,
)


@untimed
@given(entries=slots, count=st.integers(1, 10), now=st.floats(0, 100), sample_size=st.sampled_from([4, 32, 128]))
def test_victims_are_expired_first_then_the_least_valuable(
    entries: list[tuple[bool, float, int, float]], count: int, now: float, sample_size: int
) -> None:
    async def scenario() -> list[str]:
        index = VectorIndex(DIMENSION, initial_capacity=16, sample_size=sample_size, seed=7)
        try:
            vectors = unit_vectors(np.random.default_rng(len(entries)), len(entries))
            await index.add(
                [
                    IndexItem(
                        entry_id=f"e{i}",
                        scope="s",
                        vector=vectors[i] if searchable else None,
                        created_at=0.0,
                        expires_at=expires_at,
                        hit_count=hits,
                        last_used_at=last_used,
                    )
                    for i, (searchable, expires_at, hits, last_used) in enumerate(entries)
                ]
            )
            return await index.victims(count, now=now)
        finally:
            await index.aclose()

    victims = asyncio.run(scenario())

    expired = {f"e{i}" for i, (_, expires_at, _, _) in enumerate(entries) if expires_at <= now}
    assert len(victims) == min(count, len(entries)) == len(set(victims))
    # Every expired entry goes before any live one.
    assert len(expired & set(victims)) == min(count, len(expired))

    def value(i: int) -> float:
        _, _, hits, last_used = entries[i]
        return (1 + hits) / (1 + max(0.0, now - last_used))

    if len(entries) <= sample_size:  # small enough to weigh every entry: the exact order
        live = sorted((i for i in range(len(entries)) if f"e{i}" not in expired), key=value)
        live_victims = [int(victim[1:]) for victim in victims if victim not in expired]
        assert sorted(value(i) for i in live_victims) == pytest.approx([value(i) for i in live[: len(live_victims)]])
