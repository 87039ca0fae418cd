"""The routing decision: a pure choice among deployments, so its invariants are properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.routing import Candidate, Tier, choose, other

tiers: st.SearchStrategy[Tier] = st.sampled_from(["small", "large"])


@st.composite
def fleets(draw: st.DrawFn) -> list[Candidate]:
    size = draw(st.integers(0, 6))
    return [
        Candidate(name=f"d{i}", tier=draw(tiers), load=draw(st.floats(0, 3)), healthy=draw(st.booleans()))
        for i in range(size)
    ]


@given(fleets(), tiers, st.booleans(), st.floats(0.1, 1.0), st.sets(st.sampled_from([f"d{i}" for i in range(6)])))
def test_a_choice_is_a_ready_deployment_or_shed(
    fleet: list[Candidate], preferred: Tier, offload: bool, watermark: float, exclude: set[str]
) -> None:
    choice = choose(fleet, preferred=preferred, offload=offload, high_watermark=watermark, exclude=frozenset(exclude))
    ready = [c for c in fleet if c.healthy and c.load < 1.0 and c.name not in exclude]

    if choice.name is None:
        assert choice.reason == "shed"
        # Shed only when nothing the category may use has room.
        assert not [c for c in ready if c.tier == preferred or offload or not any(d.tier == preferred for d in fleet)]
        return
    chosen = next(c for c in fleet if c.name == choice.name)
    assert chosen in ready  # never a deployment excluded, cooling down or at capacity
    if chosen.tier == preferred:
        assert choice.reason == "preferred"
        assert chosen.load == min(c.load for c in ready if c.tier == preferred)  # the least loaded
    else:
        assert offload or choice.reason == "other-tier"
    if choice.reason == "offload-overload":
        home = min(c.load for c in ready if c.tier == preferred)
        assert home >= watermark and chosen.load < home


def test_the_preferred_tier_first_then_offload_past_the_watermark_then_shed() -> None:
    small = Candidate(name="small-1", tier="small", load=0.2)
    busy_large = Candidate(name="large-1", tier="large", load=0.9)
    idle_large = Candidate(name="large-1", tier="large", load=0.1)

    assert choose([small, idle_large], preferred="large").name == "large-1"
    assert choose([small, busy_large], preferred="large", high_watermark=0.8).reason == "offload-overload"
    assert choose([small, busy_large], preferred="large", offload=False).name == "large-1"
    full = Candidate(name="large-1", tier="large", load=1.0)
    assert choose([small, full], preferred="large").reason == "fallback-unhealthy"
    assert choose([small, full], preferred="large", offload=False).name is None
    assert choose([full], preferred="large").reason == "shed"


def test_a_retry_never_goes_back_to_the_deployment_that_failed() -> None:
    a = Candidate(name="a", tier="small", load=0.0)
    b = Candidate(name="b", tier="small", load=0.5)

    assert choose([a, b], preferred="small").name == "a"
    assert choose([a, b], preferred="small", exclude=frozenset({"a"})).name == "b"
    assert choose([a, b], preferred="small", exclude=frozenset({"a", "b"})).name is None


def test_a_tier_that_is_not_deployed_sends_its_misses_to_the_other() -> None:
    only_small = [Candidate(name="s", tier="small", load=0.9)]
    assert choose(only_small, preferred="large", offload=False).reason == "other-tier"
    assert other("small") == "large"
    assert other("large") == "small"
