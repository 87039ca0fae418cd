"""The cache as a library, in plain asyncio: look a question up, call the LLM on a miss, remember its
answer; a paraphrase is then answered from the cache. No server, no upstream: `call_the_llm` stands
in for your own LLM call. Exits 0 when the paraphrase was a hit and the unrelated question a miss.

    python examples/library_api.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Run as a script, only this folder is on sys.path: the repository root makes `examples.local_servers`
# importable, as `python -m examples.<name>` does.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import GatewayConfig, Hit, Miss, SemanticCache
from gateway.config import CacheConfig, StoreConfig

API_KEY = "sk-example"  # the tenant: another key never sees these answers
QUESTIONS = [
    "How do I reverse a list in Python?",
    "What is the way to reverse a Python list?",  # a paraphrase: answered from the cache
    "What is the boiling point of water at sea level?",  # unrelated: a miss
]


async def call_the_llm(body: dict[str, Any]) -> dict[str, Any]:
    """Stands in for the real call (openai, httpx, litellm...): an OpenAI-shaped answer."""
    await asyncio.sleep(0.2)
    question = body["messages"][-1]["content"]
    text = f"(pretend LLM) an answer to: {question}"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": len(text.split()), "total_tokens": 9 + len(text.split())},
    }


async def ask(cache: SemanticCache, question: str) -> tuple[str, dict[str, Any]]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    found = await cache.lookup(body, api_key=API_KEY)
    if isinstance(found, Hit):
        return f"{found.outcome} (similarity {found.similarity:.3f}, category {found.category})", found.answer
    answer = await call_the_llm(body)
    if isinstance(found, Miss):  # a Bypass (n>1, images, ...) is never stored
        await cache.remember(found, answer)  # or cache.remember_later(found, answer): in the background
    return "miss", answer


async def main() -> int:
    outcomes = []
    with tempfile.TemporaryDirectory() as folder:
        config = GatewayConfig(cache=CacheConfig(store=StoreConfig(path=str(Path(folder) / "cache.db"))))
        async with SemanticCache(config) as cache:  # loads the embedding model, opens the store
            for question in QUESTIONS:
                outcome, answer = await ask(cache, question)
                outcomes.append(outcome.split()[0])
                print(f"{outcome:45} {question!r}\n    -> {answer['choices'][0]['message']['content']}")
    print(f"outcomes: {', '.join(outcomes)}")
    return 0 if outcomes == ["miss", "hit", "miss"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
