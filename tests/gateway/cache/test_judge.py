"""The judge of a fresh answer against a cached one (text, tool calls, JSON, answer embeddings with
the real model, an LLM through litellm against the simulated upstream) and its bounded background
queue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from embeddings import Embedder, EmbeddingBatcher
from gateway.cache.judge import (
    DefaultJudge,
    Judge,
    JudgeJob,
    Judgement,
    JudgeQueue,
    LiteLLMJudge,
    LLMJudgeConfig,
    normalized,
    parse_verdict,
)
from tests.conftest import Upstream
from tests.servers import free_port


def chat(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def call(name: str, arguments: Any) -> dict[str, Any]:
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": encoded}}


def judged(embedder: Embedder, cached: Mapping[str, Any], fresh: Mapping[str, Any]) -> Judgement:
    async def scenario() -> Judgement:
        async with EmbeddingBatcher(embedder) as batcher:
            judge: Judge = DefaultJudge(batcher)
            return await judge.equivalent(cached, fresh)

    return asyncio.run(scenario())


# --- the default judge -----------------------------------------------------------------------------


def test_text_that_differs_in_case_spacing_and_punctuation_is_equal(real_embedder: Embedder) -> None:
    judgement = judged(real_embedder, chat("The answer is Paris."), chat("  the answer is   PARIS "))

    assert judgement == Judgement(equivalent=True, method="text")


def test_normalization_keeps_what_changes_a_meaning() -> None:
    assert normalized("It is -5 degrees.") != normalized("It is 5 degrees")
    assert normalized("3.5%") != normalized("35%")
    assert normalized("Hello,   World!") == normalized("hello world")


def test_paraphrased_answers_are_equivalent_by_embedding(real_embedder: Embedder) -> None:
    judgement = judged(
        real_embedder,
        chat("To reverse a list in Python, call my_list.reverse() or use slicing: my_list[::-1]."),
        chat("In Python you can reverse a list with slicing, my_list[::-1], or in place with my_list.reverse()."),
    )
    assert judgement == Judgement(equivalent=True, method="embedding")
    assert judged(
        real_embedder, chat("The capital of France is Paris."), chat("Paris is the capital of France.")
    ).equivalent


@pytest.mark.parametrize(
    ("cached", "fresh"),
    [
        ("The capital of France is Paris.", "The capital of Germany is Berlin."),
        ("Water boils at 100 degrees Celsius at sea level.", "Water freezes at 0 degrees Celsius at sea level."),
        ("To reverse a list in Python, call my_list.reverse().", "To sort a list in Python, call my_list.sort()."),
    ],
)
def test_different_answers_are_not(real_embedder: Embedder, cached: str, fresh: str) -> None:
    assert judged(real_embedder, chat(cached), chat(fresh)) == Judgement(equivalent=False, method="embedding")


def test_tool_calls_compare_names_and_json_arguments(real_embedder: Embedder) -> None:
    cached = chat(None, [call("get_weather", {"city": "Paris", "unit": "c"}), call("get_time", {"zone": "CET"})])
    reordered = chat(
        None, [call("get_time", '{"zone":"CET"}'), call("get_weather", '{ "unit": "c", "city": "Paris" }')]
    )
    other_city = chat(None, [call("get_weather", {"city": "Lyon", "unit": "c"}), call("get_time", {"zone": "CET"})])

    assert judged(real_embedder, cached, reordered) == Judgement(equivalent=True, method="tool-calls")
    assert judged(real_embedder, cached, other_city) == Judgement(equivalent=False, method="tool-calls")
    assert judged(real_embedder, cached, chat("It is sunny in Paris.")) == Judgement(
        equivalent=False, method="tool-calls"
    )


def test_json_content_is_parsed_and_compared(real_embedder: Embedder) -> None:
    cached = chat('{"city": "Paris", "population": 2102650, "tags": ["capital", "europe"]}')
    fenced = chat('```json\n{"tags": ["capital", "europe"], "population": 2102650, "city": "Paris"}\n```')
    changed = chat('{"city": "Paris", "population": 2102651, "tags": ["capital", "europe"]}')

    assert judged(real_embedder, cached, fenced) == Judgement(equivalent=True, method="json")
    assert judged(real_embedder, cached, changed) == Judgement(equivalent=False, method="json")
    assert judged(real_embedder, cached, chat("Paris has 2.1 million people.")).method == "json"


def test_text_completions_are_compared_too(real_embedder: Embedder) -> None:
    def text(value: str) -> dict[str, Any]:
        return {"object": "text_completion", "choices": [{"index": 0, "text": value, "finish_reason": "stop"}]}

    assert judged(real_embedder, text("Paris."), text("paris")) == Judgement(equivalent=True, method="text")


def test_answers_without_text_or_past_the_models_window_are_undecided(real_embedder: Embedder) -> None:
    long_a = "The first part is the same for both answers. " * 100 + "Then one ends this way."
    long_b = "The first part is the same for both answers. " * 100 + "And the other ends quite differently."

    assert not judged(real_embedder, chat(None), chat("Paris")).decided
    assert not judged(real_embedder, chat(long_a), chat(long_b)).decided


def test_the_strict_bar_is_checked(real_embedder: Embedder) -> None:
    async def scenario() -> None:
        async with EmbeddingBatcher(real_embedder) as batcher:
            with pytest.raises(ValueError, match="min_similarity"):
                DefaultJudge(batcher, min_similarity=0.0)

    asyncio.run(scenario())


# --- the LLM judge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [("Yes", True), ("no.", False), ("**YES**, they match", True), ("No - B adds a date", False),
     ("Maybe", None), ("yes or no: no", None), ("", None)],
)  # fmt: skip
def test_the_llm_reply_is_read_as_yes_or_no(reply: str, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict


def test_the_llm_judge_asks_the_model_and_never_raises(upstream: Upstream) -> None:
    """The simulated upstream answers with the prompt it got: a template with one "yes" in it reads as
    yes, the default one ("reply yes or no") as undecided, and an unreachable model as undecided."""

    async def scenario() -> tuple[Judgement, Judgement, Judgement, int]:
        echoing = LiteLLMJudge(LLMJudgeConfig(model="openai/sim-judge", api_base=f"{upstream.url}/v1",
                                              prompt="A: {cached}. B: {fresh}. Same: yes", timeout_s=10))  # fmt: skip
        default = LiteLLMJudge(LLMJudgeConfig(model="openai/sim-judge", api_base=f"{upstream.url}/v1", timeout_s=10))
        closed = LiteLLMJudge(LLMJudgeConfig(model="openai/sim-judge", api_base=f"http://127.0.0.1:{free_port()}/v1",
                                             timeout_s=10))  # fmt: skip
        answers = (chat("Paris"), chat("It is Paris"))
        results = [await judge.equivalent(*answers) for judge in (echoing, default, closed)]
        return results[0], results[1], results[2], closed.errors

    asked, unclear, unreachable, errors = asyncio.run(scenario())

    assert asked == Judgement(equivalent=True, method="llm")
    assert not unclear.decided
    assert not unreachable.decided and errors == 1
    prompts = [body["messages"][0]["content"] for body in upstream.state.received]
    assert "A: Paris. B: It is Paris. Same: yes" in prompts
    assert any("Answer A:\nParis\n\nAnswer B:\nIt is Paris" in prompt for prompt in prompts)


# --- the queue -------------------------------------------------------------------------------------


class GatedJudge:
    """Judges everything equivalent once its gate opens; counts how many judge at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.running = 0
        self.most_running = 0
        self.started = 0

    async def equivalent(self, cached: Mapping[str, Any], fresh: Mapping[str, Any]) -> Judgement:
        self.started += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return Judgement(equivalent=True, method="gated")


class CrashingJudge:
    async def equivalent(self, cached: Mapping[str, Any], fresh: Mapping[str, Any]) -> Judgement:
        raise RuntimeError("judge crashed")


_gated: Judge = GatedJudge()


def collector() -> tuple[list[Judgement], Callable[[Judgement], Awaitable[None]]]:
    results: list[Judgement] = []

    async def on_judgement(judgement: Judgement) -> None:
        results.append(judgement)

    return results, on_judgement


async def settle(predicate: Callable[[], bool]) -> None:
    """Let the queued tasks run until `predicate` holds (event-loop turns, not time)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the queue never got there")


def test_the_queue_is_bounded_and_drained() -> None:
    async def scenario() -> None:
        judge = GatedJudge()
        queue = JudgeQueue(judge, max_queue=3, concurrency=2)
        results, on_judgement = collector()
        job = JudgeJob(cached=chat("a"), fresh=chat("b"), on_judgement=on_judgement)

        accepted = [queue.submit(job) for _ in range(5)]
        await settle(lambda: judge.started == 2)

        assert accepted == [True, True, True, False, False]
        assert (queue.accepted, queue.dropped, queue.pending) == (3, 2, 3)
        assert judge.most_running == 2  # the third waits for a slot
        judge.gate.set()
        await queue.aclose(timeout_s=30)
        assert len(results) == 3 and queue.judged == 3 and queue.pending == 0
        assert judge.most_running == 2
        assert not queue.submit(job) and queue.dropped == 3  # closed

    asyncio.run(scenario())


def test_a_stuck_job_is_cancelled_at_close_and_a_crashing_one_is_counted() -> None:
    async def scenario() -> None:
        stuck = JudgeQueue(GatedJudge(), max_queue=2, concurrency=1)
        crashing = JudgeQueue(CrashingJudge(), max_queue=2, concurrency=1)
        results, on_judgement = collector()
        job = JudgeJob(cached=chat("a"), fresh=chat("b"), on_judgement=on_judgement)

        assert stuck.submit(job) and crashing.submit(job)
        await crashing.aclose(timeout_s=30)
        await stuck.aclose(timeout_s=0.01)

        assert crashing.failed == 1 and crashing.judged == 0
        assert stuck.pending == 0 and stuck.judged == 0
        assert results == []

    asyncio.run(scenario())


def test_queue_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        JudgeQueue(CrashingJudge(), max_queue=0, concurrency=1)
