"""Multi-turn: a follow-up question is only ever answered inside its own conversation.

    .venv/bin/python bench/multiturn.py [--thresholds 0.85,0.9,0.95] [--data PATH]
        [--output bench/out/multiturn.md]

Data: ../shared/data/multiturn/followups_dev.jsonl (MeanCache's context-dependent follow-ups:
main_query, main_response, follow_up, follow_up_response; third-party): read by path, never copied
here. Without it the benchmark says so and exits 0. Identical rows are one conversation.

Through the real lookup path — the gateway's scope keys (`gateway.cache.scope.cache_key` of OpenAI chat
requests), `CacheEngine.lookup` / `remember`, a real SqliteStore in a temporary folder, the
engine's hnswlib index, an EmbeddingBatcher over the real model (each text embedded once per run and
served from memory) — at each threshold:

  1. store every conversation's main turn ([user main_query] → main_response) and its follow-up
     ([user main_query, assistant main_response, user follow_up] → follow_up_response);
  2. replay every follow-up in every conversation's context, its own and each other one. A hit
     whose entry was stored by another conversation than the one whose context was sent is a
     cross-conversation hit: it must never happen. Hits in the own context are counted too (each
     should be an exact hit), and so are hits, in some conversation's context, on that
     conversation's own follow-up answer by another conversation's follow-up text;
  3. in the same run, the naive baseline: a cache keyed on the last message only (the same key
     with the earlier turns left out, as a cache that embeds only the last user message and
     partitions by tenant and model would do). (a) Stream: the follow-ups in file order, each
     looked up before it is stored. (b) Leave-one-out: every follow-up against every other
     conversation's stored follow-up. A hit there serves another conversation's answer; also
     counted: those whose answer text differs from the conversation's own reference answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality import MemoEmbedder  # noqa: E402
from embeddings import Embedder, EmbeddingBatcher, SentenceTransformerEmbedder  # noqa: E402
from embeddings.batcher import BatcherConfig  # noqa: E402
from gateway.cache.catalog import Catalog  # noqa: E402
from gateway.cache.decisions import Decision, Hit, Miss  # noqa: E402
from gateway.cache.engine import ActivePolicy, CacheEngine, LookupSettings  # noqa: E402
from gateway.cache.scope import CacheKey, cache_key  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.stores import SqliteStore  # noqa: E402
from gateway.wire import parse_chat_request  # noqa: E402
from gateway.wire.cache_control import CacheControl  # noqa: E402
from policies import CategoryClassifier, parse_policy  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "multiturn" / "followups_dev.jsonl"
MODEL = "bench-model"
TENANT = "key:bench"
NOW = 1_800_000_000.0
BATCH = 64
CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class Conversation:
    main_query: str
    main_response: str
    follow_up: str
    follow_up_response: str

    def main_messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.main_query}]

    def context(self) -> list[dict[str, str]]:
        return [*self.main_messages(), {"role": "assistant", "content": self.main_response}]


def read_conversations(path: Path) -> tuple[list[Conversation], int]:
    """Distinct conversations in file order, and the number of rows read."""
    rows = 0
    seen: dict[Conversation, None] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            rows += 1
            seen.setdefault(
                Conversation(
                    main_query=str(row["main_query"]),
                    main_response=str(row["main_response"]),
                    follow_up=str(row["follow_up"]),
                    follow_up_response=str(row["follow_up_response"]),
                )
            )
    return list(seen), rows


def chat_key(messages: Sequence[dict[str, str]]) -> CacheKey:
    key = cache_key(parse_chat_request({"model": MODEL, "messages": list(messages)}), tenant=TENANT)
    assert isinstance(key, CacheKey)
    return key


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(NOW),
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def engine_for(store: SqliteStore, batcher: EmbeddingBatcher, threshold: float) -> CacheEngine:
    policy = parse_policy(
        {"categories": [{"name": "default", "similarity_threshold": threshold, "ttl_s": 1e9, "max_entries": 10**7}]}
    )
    # Not entered: a benchmark needs neither the feed follower nor the periodic hit flush.
    catalog = Catalog(
        store=store,
        dimension=batcher.embedder.dimension,
        policy=policy,
        metrics=Metrics(),
        clock=lambda: NOW,
    )
    return CacheEngine(
        catalog=catalog,
        batcher=batcher,
        policy=ActivePolicy(policy=policy, classifier=CategoryClassifier(policy, {})),
        settings=LookupSettings(),
        metrics=Metrics(),
        clock=lambda: NOW,
    )


async def store_answer(
    engine: CacheEngine, batcher: EmbeddingBatcher, key: CacheKey, messages: list[dict[str, str]], text: str
) -> str:
    """Remember `text` as the answer to `key` (as after a miss); returns the new entry's id."""
    miss = await look(engine, messages, control=CacheControl(lookup=False))
    assert isinstance(miss, Miss) and miss.key == key
    stored = await engine.remember(miss, response=answer(text))
    entry = await engine.store.get_exact(key.exact, now=NOW)
    assert stored and entry is not None, "an answer was not stored"
    return entry.entry_id


async def ask_then_store(
    engine: CacheEngine, batcher: EmbeddingBatcher, messages: list[dict[str, str]], text: str
) -> tuple[Hit | None, str | None]:
    """What the gateway does with a request: look it up; on a miss, store the answer. Returns the
    hit, or the new entry's id."""
    key = chat_key(messages)
    decision = await look(engine, messages)
    if isinstance(decision, Hit):
        return decision, None
    return None, await store_answer(engine, batcher, key, messages, text)


async def look(
    engine: CacheEngine, messages: Sequence[dict[str, str]], *, control: CacheControl | None = None
) -> Decision:
    request = parse_chat_request({"model": MODEL, "messages": list(messages)})
    return await engine.lookup(request, tenant=TENANT, control=control or CacheControl())


async def lookups(engine: CacheEngine, asked: Sequence[list[dict[str, str]]]) -> list[Hit | None]:
    """Concurrent lookups (the index and the store serialize them on their threads)."""
    results: list[Hit | None] = []
    for start in range(0, len(asked), CONCURRENCY):
        decisions = await asyncio.gather(*(look(engine, messages) for messages in asked[start : start + CONCURRENCY]))
        results.extend(decision if isinstance(decision, Hit) else None for decision in decisions)
    return results


@dataclass(slots=True)
class Result:
    threshold: float
    conversations: int
    lookups: int = 0
    own_hits: int = 0  # a follow-up in its own context
    own_exact: int = 0
    cross_hits: int = 0  # served an entry of another conversation than the context's: must be 0
    # Another row's follow-up sent in a conversation's context, served that conversation's own
    # follow-up answer: the same question (identical text) or a paraphrase, in that conversation.
    same_text_hits: int = 0
    paraphrase_hits: int = 0
    paraphrase_examples: list[tuple[str, str, float]] = field(default_factory=list)
    naive_stream_hits: int = 0  # served another conversation's answer
    naive_stream_wrong: int = 0  # ... whose text differs from the reference answer
    naive_loo_hits: int = 0
    naive_loo_wrong: int = 0
    naive_examples: list[tuple[str, str, float]] = field(default_factory=list)
    seconds: float = 0.0


async def measure(
    conversations: Sequence[Conversation],
    batcher: EmbeddingBatcher,
    folder: Path,
    threshold: float,
    *,
    contexts_for: Mapping[int, Sequence[int]] | None = None,
) -> Result:
    """Steps 1-3 of the module's docstring at one threshold. `contexts_for[i]`: the contexts follow-up
    i is replayed in (default: every one)."""
    started = time.perf_counter()
    result = Result(threshold=threshold, conversations=len(conversations))
    async with SqliteStore(folder / f"scoped-{threshold:g}.db") as store:
        engine = engine_for(store, batcher, threshold)
        owner: dict[str, int] = {}  # follow-up entry id → conversation
        for i, conversation in enumerate(conversations):
            await ask_then_store(engine, batcher, conversation.main_messages(), conversation.main_response)
            messages = [*conversation.context(), {"role": "user", "content": conversation.follow_up}]
            hit, entry_id = await ask_then_store(engine, batcher, messages, conversation.follow_up_response)
            if hit is not None or entry_id is None:
                raise AssertionError(f"conversation {i}'s follow-up was served from the cache before it was stored")
            owner[entry_id] = i
        assert len(owner) == len(conversations)
        plan = [
            (i, j)
            for i in range(len(conversations))
            for j in (contexts_for[i] if contexts_for is not None else range(len(conversations)))
        ]
        asked = [
            [*conversations[j].context(), {"role": "user", "content": conversations[i].follow_up}] for i, j in plan
        ]
        hits = await lookups(engine, asked)
        await engine.catalog.aclose()
    result.lookups = len(plan)
    for (i, j), hit in zip(plan, hits, strict=True):
        if hit is None:
            continue
        served_by = owner.get(hit.entry.entry_id)
        if served_by != j:
            result.cross_hits += 1
        elif i == j:
            result.own_hits += 1
            result.own_exact += hit.exact
        elif conversations[i].follow_up == conversations[j].follow_up:
            result.same_text_hits += 1
        else:
            result.paraphrase_hits += 1
            result.paraphrase_examples.append((conversations[i].follow_up, conversations[j].follow_up, hit.similarity))
    await naive(conversations, batcher, folder, threshold, result)
    result.seconds = time.perf_counter() - started
    return result


async def naive(
    conversations: Sequence[Conversation], batcher: EmbeddingBatcher, folder: Path, threshold: float, result: Result
) -> None:
    """The baseline keyed on the last message only, in the same run (step 3)."""

    def last_only(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": conversations[i].follow_up}]

    def wrong(i: int, hit: Hit) -> bool:
        return str(hit.entry.response["choices"][0]["message"]["content"]) != conversations[i].follow_up_response

    async with SqliteStore(folder / f"naive-stream-{threshold:g}.db") as store:
        engine = engine_for(store, batcher, threshold)
        owner: dict[str, int] = {}
        for i in range(len(conversations)):
            hit, entry_id = await ask_then_store(engine, batcher, last_only(i), conversations[i].follow_up_response)
            if hit is None:
                assert entry_id is not None
                owner[entry_id] = i
                continue
            # Every stored answer is another conversation's (the rows are distinct conversations).
            result.naive_stream_hits += 1
            result.naive_stream_wrong += wrong(i, hit)
            served = conversations[owner[hit.entry.entry_id]].follow_up
            result.naive_examples.append((conversations[i].follow_up, served, hit.similarity))
        await engine.catalog.aclose()
    # Leave-one-out: each follow-up against every other conversation's. All are stored (one entry
    # per distinct text: an identical follow-up of another conversation is served exactly); while
    # conversation i is looked up, its own answer is swapped for another conversation's with the
    # same text, or taken out when there is none, and put back afterwards.
    async with SqliteStore(folder / f"naive-loo-{threshold:g}.db") as store:
        engine = engine_for(store, batcher, threshold)
        holder: dict[str, int] = {}  # follow-up text → the conversation whose answer is stored for it
        for i, conversation in enumerate(conversations):
            if conversation.follow_up not in holder:
                await store_answer(
                    engine, batcher, chat_key(last_only(i)), last_only(i), conversation.follow_up_response
                )
                holder[conversation.follow_up] = i
        for i, conversation in enumerate(conversations):
            key, messages = chat_key(last_only(i)), last_only(i)
            swapped = holder[conversation.follow_up] == i
            if swapped:
                own = await engine.store.get_exact(key.exact, now=NOW)
                assert own is not None
                await engine.catalog.forget(own.entry_id)
                twins = [k for k, c in enumerate(conversations) if k != i and c.follow_up == conversation.follow_up]
                twin = twins[0] if twins else None
                if twin is not None:
                    await store_answer(engine, batcher, key, messages, conversations[twin].follow_up_response)
            decision = await look(engine, messages)
            if isinstance(decision, Hit):
                result.naive_loo_hits += 1
                result.naive_loo_wrong += wrong(i, decision)
            if swapped:
                await store_answer(engine, batcher, key, messages, conversation.follow_up_response)  # replaces
        await engine.catalog.aclose()


HEADER = [
    "threshold",
    "scoped: follow-up x context lookups",
    "cross-conversation hits",
    "own follow-up in own context: hits (exact)",
    "another row's follow-up in a context, served that conversation's own answer: same text / paraphrase",
    "naive stream: served another conversation's answer (answer text differs)",
    "naive leave-one-out: same",
]


def report(results: Sequence[Result], rows: int, args: argparse.Namespace, seconds: float) -> str:
    first = results[0]
    lines = [
        "## Multi-turn: follow-ups never hit another conversation's answer (`bench/multiturn.py`)",
        "",
        f"Command: `.venv/bin/python bench/multiturn.py --thresholds {args.thresholds}`, {seconds:.0f} s in all.",
        "",
        "### Machine",
        "",
        *machine(),
        "",
        "### Data and set-up",
        "",
        f"`../shared/data/multiturn/followups_dev.jsonl`: {rows} rows, {first.conversations} distinct "
        "conversations (identical rows are one). Through the real lookup path (scope keys from "
        "`gateway.cache.scope.cache_key`, `CacheEngine`, SQLite store, hnswlib index, the real embedder); "
        "see the module's docstring. Scoped = the gateway's key (every earlier turn in the scope); "
        "naive = the same cache keyed on the last user message only.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "| ---: " * len(HEADER) + "|",
    ]
    for result in results:
        cells = [
            f"{result.threshold:g}",
            str(result.lookups),
            f"**{result.cross_hits}**",
            f"{result.own_hits} of {result.conversations} ({result.own_exact})",
            f"{result.same_text_hits} / {result.paraphrase_hits}",
            f"{share(result.naive_stream_hits, result.conversations)} ({result.naive_stream_wrong})",
            f"{share(result.naive_loo_hits, result.conversations)} ({result.naive_loo_wrong})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for result in results:
        lines += examples(f"Naive stream at {result.threshold:g}: follow-up → the follow-up whose answer it got",
                          result.naive_examples)  # fmt: skip
        lines += examples(f"Scoped at {result.threshold:g}: follow-up → the context's own follow-up it hit",
                          result.paraphrase_examples)  # fmt: skip
    return "\n".join(lines) + "\n"


def share(count: int, total: int) -> str:
    return f"{count} of {total} ({100 * count / total:.1f} %)" if total else "0"


def examples(title: str, found: Sequence[tuple[str, str, float]], limit: int = 8) -> list[str]:
    if not found:
        return []
    lines = ["", f"{title} (similarity), {min(limit, len(found))} of {len(found)}:", ""]
    return lines + [f"- {asked!r} → {served!r} ({similarity:.3f})" for asked, served, similarity in found[:limit]]


def machine() -> list[str]:
    def run(command: str) -> str:
        try:
            return subprocess.run(command, shell=True, capture_output=True, text=True, check=False).stdout.strip()
        except OSError as exc:
            return f"({command}: {exc})"

    cpu = run("lscpu | grep -i 'model name'")
    return [
        f"- date: {run('date')}",
        f"- `nproc`: {run('nproc')}; CPU: {cpu}",
        f"- memory: {run('free -h | grep Mem')}",
        f"- `uptime` (other work on the machine): {run('uptime')}",
    ]


def nearest_contexts(conversations: Sequence[Conversation], memo: MemoEmbedder, others: int) -> dict[int, list[int]]:
    """For each follow-up: its own conversation and the `others` whose follow-ups are most like it
    (the contexts where a leak would be likeliest)."""
    vectors = np.stack([memo.table[c.follow_up].vector for c in conversations])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :others]
    return {i: [i, *order[i].tolist()] for i in range(len(conversations))}


async def run(
    conversations: Sequence[Conversation], embedder: Embedder, thresholds: Iterable[float], *, others: int | None = None
) -> list[Result]:
    """Every follow-up in every context, or (`others`) in its own and its `others` nearest."""
    memo = MemoEmbedder(embedder)
    memo.embed([text for c in conversations for text in (c.main_query, c.follow_up)])  # in bulk, once
    contexts_for = None if others is None else nearest_contexts(conversations, memo, others)
    async with EmbeddingBatcher(memo, BatcherConfig(max_batch=BATCH, max_wait_ms=0.0, deadline_ms=60_000)) as batcher:
        with tempfile.TemporaryDirectory(prefix="semcache-multiturn-") as folder:
            return [
                await measure(conversations, batcher, Path(folder), threshold, contexts_for=contexts_for)
                for threshold in thresholds
            ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--thresholds", default="0.85,0.9,0.95")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "out" / "multiturn.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.exists():
        print(f"{args.data} is not here (third-party data, see ../shared/data/SOURCES.md): nothing to measure.")
        return 0
    started = time.perf_counter()
    conversations, rows = read_conversations(args.data)
    thresholds = [float(value) for value in args.thresholds.split(",")]
    results = asyncio.run(run(conversations, SentenceTransformerEmbedder(), thresholds))
    text = report(results, rows, args, time.perf_counter() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(result.cross_hits == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
