"""Multi-turn conversations through the real gateway with the openai client: a follow-up is only
ever answered inside its own conversation, however alike the follow-ups of different conversations
are ("Can you give an example?", "Tell me more"); a repeat of the same conversation does hit."""

from __future__ import annotations

from typing import Any

from tests.conftest import Gateway, Upstream

# (first question, follow-up): identical or near-identical follow-ups across conversations.
CONVERSATIONS = [
    ("How do I reverse a list in Python?", "Can you give an example?"),
    ("What causes the seasons on Earth?", "Can you give an example?"),
    ("Explain how a hash map works.", "Can you give me an example?"),  # 0.97 to the one above
    ("Who was Ada Lovelace?", "Tell me more"),
    ("What is the Krebs cycle?", "Tell me more"),
    ("What does inflation mean in economics?", "Tell me more."),
]


def chat(gateway: Gateway, messages: list[dict[str, str]]) -> tuple[str, dict[str, str], str]:
    """(x-semcache, headers, answer text) for one request with the openai client."""
    raw = gateway.client().chat.completions.with_raw_response.create(model="sim-large", messages=messages)  # type: ignore[arg-type]
    return raw.headers["x-semcache"], dict(raw.headers), raw.parse().choices[0].message.content or ""


def follow_up_messages(first: str, answer: str, follow_up: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": first},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": follow_up},
    ]


def received_follow_ups(upstream: Upstream) -> list[list[Any]]:
    return [body["messages"] for body in upstream.state.received if len(body["messages"]) == 3]


def test_a_follow_up_is_only_answered_inside_its_own_conversation(gateway: Gateway, upstream: Upstream) -> None:
    answers: list[str] = []
    stored = 0
    for first, follow_up in CONVERSATIONS:
        outcome, _, answer = chat(gateway, [{"role": "user", "content": first}])
        assert outcome == "miss"
        answers.append(answer)
        outcome, headers, _ = chat(gateway, follow_up_messages(first, answer, follow_up))
        # The same words were answered in an earlier conversation moments ago: still a miss here.
        assert outcome == "miss", f"{follow_up!r} after {first!r} was served from another conversation"
        assert "x-semcache-entry" not in headers
        stored += 2
        gateway.wait_until_stored(stored)  # the earlier conversations' answers are all in the cache

    # Every follow-up went to the upstream, each with its own conversation.
    sent = received_follow_ups(upstream)
    assert [messages[0]["content"] for messages in sent] == [first for first, _ in CONVERSATIONS]

    # A repeat of each conversation is served its own stored follow-up answer, from one entry each.
    entries = set()
    for (first, follow_up), answer in zip(CONVERSATIONS, answers, strict=True):
        outcome, headers, _ = chat(gateway, follow_up_messages(first, answer, follow_up))
        assert outcome == "exact"
        entries.add(headers["x-semcache-entry"])
    assert len(entries) == len(CONVERSATIONS)
    assert len(received_follow_ups(upstream)) == len(CONVERSATIONS)


def test_a_rephrased_follow_up_hits_in_its_own_conversation_only(gateway: Gateway, upstream: Upstream) -> None:
    first, follow_up = CONVERSATIONS[0]
    _, _, answer = chat(gateway, [{"role": "user", "content": first}])
    _, _, stored_answer = chat(gateway, follow_up_messages(first, answer, follow_up))
    other_first = CONVERSATIONS[1][0]
    _, _, other_answer = chat(gateway, [{"role": "user", "content": other_first}])
    gateway.wait_until_stored(3)

    same = chat(gateway, follow_up_messages(first, answer, "Could you give me an example?"))
    other = chat(gateway, follow_up_messages(other_first, other_answer, "Could you give me an example?"))
    # Same first question, a different answer in between: another conversation too.
    altered = chat(gateway, follow_up_messages(first, answer + " (edited)", follow_up))

    assert same[0] == "hit"  # by meaning, within the conversation
    assert same[2] == stored_answer
    assert other[0] == "miss"
    assert altered[0] == "miss"


def test_a_bare_follow_up_is_not_served_a_conversations_answer(gateway: Gateway) -> None:
    first, follow_up = CONVERSATIONS[3]
    _, _, answer = chat(gateway, [{"role": "user", "content": first}])
    chat(gateway, follow_up_messages(first, answer, follow_up))
    gateway.wait_until_stored(2)

    outcome, _, _ = chat(gateway, [{"role": "user", "content": follow_up}])

    assert outcome == "miss"
