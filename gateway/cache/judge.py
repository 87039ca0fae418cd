"""Whether a fresh answer from the upstream is equivalent to a cached one: the label of a verified
threshold's observation (`policies.verified`). Judging runs after the client has its answer, in the
background (`JudgeQueue`: bounded queue, bounded concurrency), never on the request path.

    judge = DefaultJudge(batcher)                       # text, tool calls, JSON, answer embeddings
    queue = JudgeQueue(judge, max_queue=256, concurrency=2)
    queue.submit(JudgeJob(cached=entry.response, fresh=answer, on_judgement=record))   # False: dropped
    await queue.aclose(timeout_s=5.0)

A judgement whose `method` is "undecided" (no text to compare, the embedder or the LLM judge failed)
says nothing: record no observation for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from embeddings import EmbedderError, EmbeddingBatcher
from gateway.cache.tasks import TaskTracker
from gateway.upstream import import_litellm
from gateway.wire import message_text

logger = logging.getLogger("semcache.judge")

UNDECIDED = "undecided"


@dataclass(frozen=True, slots=True, kw_only=True)
class Judgement:
    """`method`: what decided ("text", "tool-calls", "json", "embedding", "llm"), or "undecided"
    (then `equivalent` is False and means nothing)."""

    equivalent: bool
    method: str

    @property
    def decided(self) -> bool:
        return self.method != UNDECIDED


_UNDECIDED = Judgement(equivalent=False, method=UNDECIDED)


@runtime_checkable
class Judge(Protocol):
    """Compares two OpenAI completion responses (chat or text), the cached one and a fresh one."""

    async def equivalent(self, cached: Mapping[str, Any], fresh: Mapping[str, Any]) -> Judgement: ...


# --- what an answer says -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Answer:
    # None: the answer carries no text (images, audio, a refusal object...).
    text: str | None
    # Sorted (name, canonical JSON arguments); None: no tool calls.
    tool_calls: tuple[tuple[str, str], ...] | None


def _canonical_arguments(arguments: Any) -> str:
    # Arguments arrive as a JSON string; one that does not parse is compared as it is.
    value = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except ValueError:
            return arguments
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _answer(response: Mapping[str, Any]) -> _Answer:
    choices = response.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    if not isinstance(message, Mapping):
        text = choice.get("text")
        return _Answer(text=text if isinstance(text, str) else None, tool_calls=None)
    calls = message.get("tool_calls")
    tool_calls = None
    if isinstance(calls, list) and calls:
        functions = [call.get("function") or {} for call in calls if isinstance(call, Mapping)]
        tool_calls = tuple(sorted((str(f.get("name")), _canonical_arguments(f.get("arguments"))) for f in functions))
    return _Answer(text=message_text(message) if message.get("content") is not None else None, tool_calls=tool_calls)


# Words and numbers ("3.5", "U.S", "don't" stay whole), and the symbols that change a meaning
# (a sign, a percentage, a currency): everything else (other punctuation, spacing, case) is dropped.
_TOKENS = re.compile(r"[^\W_]+(?:['\u2019.,][^\W_]+)*|[-+\u2212%$\u20ac\u00a3<>=]")


def normalized(text: str) -> tuple[str, ...]:
    """The text as compared: case-folded words, numbers and meaningful symbols, in order."""
    return tuple(_TOKENS.findall(text.casefold()))


_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def _json_value(text: str) -> tuple[bool, Any]:
    """(True, value) for an object or array (a fenced code block is unwrapped); scalars are text."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    if not stripped.startswith(("{", "[")):
        return False, None
    try:
        return True, json.loads(stripped)
    except ValueError:
        return False, None


class DefaultJudge:
    """In order: normalized text equality; tool calls (same names, JSON-equal arguments, in any
    order); JSON content (both parsed and compared); then the two answers' embeddings, equivalent
    at a cosine of at least `min_similarity` (a strict bar: answers that merely share a topic embed
    at ~0.7-0.9). Embedding runs on the batcher's model thread."""

    def __init__(self, batcher: EmbeddingBatcher, *, min_similarity: float = 0.95) -> None:
        if not 0.0 < min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in (0, 1], got {min_similarity!r}")
        self._batcher = batcher
        self._min_similarity = min_similarity

    async def equivalent(self, cached: Mapping[str, Any], fresh: Mapping[str, Any]) -> Judgement:
        old, new = _answer(cached), _answer(fresh)
        if old.tool_calls is not None or new.tool_calls is not None:
            return Judgement(equivalent=old.tool_calls == new.tool_calls, method="tool-calls")
        if old.text is None or new.text is None:
            return _UNDECIDED
        old_words, new_words = normalized(old.text), normalized(new.text)
        if old_words == new_words:
            return Judgement(equivalent=True, method="text")
        (old_is_json, old_value), (new_is_json, new_value) = _json_value(old.text), _json_value(new.text)
        if old_is_json or new_is_json:
            return Judgement(equivalent=old_is_json and new_is_json and old_value == new_value, method="json")
        if not old_words or not new_words:
            return Judgement(equivalent=False, method="text")
        return await self._by_embedding(old.text, new.text)

    async def _by_embedding(self, cached: str, fresh: str) -> Judgement:
        try:
            first, second = await self._batcher.embed_many([cached, fresh])
        except EmbedderError as exc:
            logger.warning("judge: embedding failed: %s", exc)
            return _UNDECIDED
        if first.truncated or second.truncated:
            # Only the beginnings were embedded: two answers that differ later would look equal.
            return _UNDECIDED
        similarity = float(np.dot(first.vector, second.vector))
        return Judgement(equivalent=similarity >= self._min_similarity, method="embedding")


# --- an LLM as the judge -------------------------------------------------------------------------

DEFAULT_PROMPT = """Two answers were given to the same question. Do they say the same thing, so that
a user who asked it would be as well served by either? Reply with one word: yes or no.

Answer A:
{cached}

Answer B:
{fresh}"""


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMJudgeConfig:
    """`model` as litellm names it ("openai/gpt-4o-mini"); `prompt` with `{cached}` and `{fresh}`."""

    model: str
    prompt: str = DEFAULT_PROMPT
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    max_tokens: int = 5


_VERDICT_WORDS = re.compile(r"\b(yes|no)\b")


def parse_verdict(reply: str) -> bool | None:
    """True for "yes", False for "no" (any case, any punctuation around it); None when the reply
    has neither word, or both."""
    found = set(_VERDICT_WORDS.findall(reply.casefold()))
    return found == {"yes"} if len(found) == 1 else None


class LiteLLMJudge:
    """Asks a model through litellm. Never raises: any error or an unclear reply is undecided."""

    def __init__(self, config: LLMJudgeConfig) -> None:
        self._config = config
        self._litellm = import_litellm()
        self.errors = 0

    async def equivalent(self, cached: Mapping[str, Any], fresh: Mapping[str, Any]) -> Judgement:
        old, new = _answer(cached), _answer(fresh)
        if old.text is None or new.text is None:
            return _UNDECIDED
        # Plain replacement, not str.format: a user's template may hold braces (JSON examples).
        prompt = self._config.prompt.replace("{cached}", old.text).replace("{fresh}", new.text)
        try:
            async with asyncio.timeout(self._config.timeout_s):
                response = await self._litellm.acompletion(
                    model=self._config.model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=0,
                    max_tokens=self._config.max_tokens,
                    api_base=self._config.api_base,
                    api_key=self._config.api_key or "no-key",
                    timeout=self._config.timeout_s,
                    max_retries=0,
                )
            reply = response.choices[0].message.content or ""
        except Exception as exc:  # fail-open boundary: a failed judge records nothing
            self.errors += 1
            logger.warning("llm judge failed: %s: %s", type(exc).__name__, exc)
            return _UNDECIDED
        verdict = parse_verdict(str(reply))
        return _UNDECIDED if verdict is None else Judgement(equivalent=verdict, method="llm")


# --- the background runner -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeJob:
    """Judge `fresh` against `cached`, then hand the judgement to `on_judgement` (which records the
    observation)."""

    cached: Mapping[str, Any]
    fresh: Mapping[str, Any]
    on_judgement: Callable[[Judgement], Awaitable[None]]


class JudgeQueue:
    """At most `max_queue` jobs waiting or being judged, `concurrency` of them at once; past that a
    job is dropped and counted (an observation missed costs little, unbounded work costs a gateway).
    Each job is a tracked task, drained by `aclose`."""

    def __init__(self, judge: Judge, *, max_queue: int, concurrency: int, job_timeout_s: float = 60.0) -> None:
        if max_queue < 1 or concurrency < 1:
            raise ValueError("max_queue and concurrency must be >= 1")
        self._judge = judge
        self._max_queue = max_queue
        self._slots = asyncio.Semaphore(concurrency)
        self._job_timeout_s = job_timeout_s
        self._tasks = TaskTracker()
        self._closed = False
        self.accepted = 0
        self.dropped = 0
        self.judged = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, job: JudgeJob) -> bool:
        """Queue a job (from the event loop); False when the queue is full or closed: dropped."""
        if self._closed or len(self._tasks) >= self._max_queue:
            self.dropped += 1
            return False
        self.accepted += 1
        self._tasks.spawn(self._run(job), name="semcache-judge")
        return True

    async def _run(self, job: JudgeJob) -> None:
        async with self._slots:
            try:
                async with asyncio.timeout(self._job_timeout_s):
                    judgement = await self._judge.equivalent(job.cached, job.fresh)
                    await job.on_judgement(judgement)
            except Exception:  # fail-open boundary: background work never fails a request
                self.failed += 1
                logger.exception("judge job failed")
                return
            self.judged += 1

    async def wait_idle(self, *, timeout_s: float) -> None:
        """Wait until the jobs queued so far are judged (a replay's step; past `timeout_s` they are
        cancelled, as at close)."""
        await self._tasks.drain(timeout_s=timeout_s)

    async def aclose(self, *, timeout_s: float) -> None:
        """Refuse new jobs and wait for the queued ones; past `timeout_s` they are cancelled."""
        self._closed = True
        await self._tasks.drain(timeout_s=timeout_s)
