"""The store several gateway replicas share: Redis (standalone or managed; the keys are laid out for
Redis Cluster too). Documents and state live in Redis; each replica keeps its own in-memory index,
kept in step by the change feed, a Redis Stream every replica follows.

Key layout, under `<prefix>:<ns>` where `ns` is a digest of the embedding model's name (a replica
rolled out with another model neither reads nor wipes the others' entries):

    <p>:<ns>:e:{<id>}        hash    one entry: scope, exact, prompt, emb (float32 bytes), doc (JSON
                                     with format_version: model, request, response), category,
                                     created, expires, hits, last_hit; native TTL (PEXPIREAT expires)
    <p>:<ns>:o:{<id>}        list    the entry's observations (JSON), deleted with it
    <p>:<ns>:x:<exact key>   string  the entry id of an exact key; native TTL as its entry's
    <p>:<ns>:ids             hash    entry id → category: every entry, scanned (HSCAN) to rebuild
    <p>:<ns>:c:<category>    zset    entry id by creation time: a category's entries (retime, drop)
    <p>:<ns>:exp             zset    entry id by expiry: what `purge_expired` deletes and announces
    <p>:<ns>:fb              hash    category → feedback state (JSON)
    <p>:<ns>:h:{<resp id>}   hash    a served hit (JSON) and whether it was rated; expires
    {<p>:<ns>}:feed          stream  the change feed (MAXLEN ~ stream_maxlen), each event numbered
    {<p>:<ns>}:seq           string  the last event number (gaps tell a follower it fell behind)
    <p>:models               hash    ns → embedding model name (for operators)

Hash tags (`{...}`): an entry's keys (`e`, `o`) share a Cluster slot, and so do the feed and its
counter (published together by one script). Nothing else needs a multi-key atomic step: pipelines
are never transactions, and the scripts touch one key, or the feed's two.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import StoreError
from gateway.stores.base import (
    FORMAT_VERSION,
    MAX_OBSERVATIONS,
    Added,
    CacheEntry,
    ChangeEvent,
    FeedItem,
    HitTally,
    Removed,
    Resync,
    pool_key,
)

logger = logging.getLogger("semcache.store.redis")

_PAGE = 500
_FOLLOW_BLOCK_MS = 1000
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# Numbered events: n = INCR seq; XADD feed n e. KEYS: feed, seq; ARGV: maxlen, event...
_PUBLISH = """
for i = 2, #ARGV do
  local n = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'e', ARGV[i])
end
return 1
"""
# The feed's end: {last id, last number}. KEYS: feed, seq.
_TAIL = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return {'0-0', tonumber(redis.call('GET', KEYS[2]) or '0')} end
local fields = last[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'n' then return {last[1][1], tonumber(fields[i + 1])} end
end
return {last[1][1], tonumber(redis.call('GET', KEYS[2]) or '0')}
"""
# Add hits to an entry that still exists. KEYS: entry; ARGV: count, last_at.
_HITS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'hits', ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_hit') or '0')
if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[1], 'last_hit', ARGV[2]) end
return 1
"""
# Delete an exact key only while it still names this entry. KEYS: exact; ARGV: entry id.
_UNLINK_EXACT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """redis-py's errors become `StoreError` here and only here."""
    try:
        yield
    except RedisError as exc:  # ConnectionError, TimeoutError, ResponseError, ...
        raise StoreError(f"redis store {what} failed: {exc}") from exc
    except OSError as exc:  # a socket error redis-py did not wrap
        raise StoreError(f"redis store {what} failed: {exc}") from exc


def namespace(model: str) -> str:
    """The key namespace of an embedding model's entries."""
    return hashlib.sha256(model.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class _Keys:
    base: str
    prefix: str

    def entry(self, entry_id: str) -> str:
        return f"{self.base}:e:{{{entry_id}}}"

    def observations(self, entry_id: str) -> str:
        return f"{self.base}:o:{{{entry_id}}}"

    def exact(self, exact_key: str) -> str:
        return f"{self.base}:x:{exact_key}"

    def served(self, response_id: str) -> str:
        return f"{self.base}:h:{{{response_id}}}"

    def category(self, name: str) -> str:
        return f"{self.base}:c:{name}"

    @property
    def ids(self) -> str:
        return f"{self.base}:ids"

    @property
    def expiry(self) -> str:
        return f"{self.base}:exp"

    @property
    def feedback(self) -> str:
        return f"{self.base}:fb"

    @property
    def feed(self) -> str:
        return f"{{{self.base}}}:feed"

    @property
    def seq(self) -> str:
        return f"{{{self.base}}}:seq"

    @property
    def models(self) -> str:
        return f"{self.prefix}:models"


def _to_fields(entry: CacheEntry) -> dict[str, bytes | str | float | int]:
    document = json.dumps(
        {"format_version": FORMAT_VERSION, "model": entry.model, "request": entry.request, "response": entry.response},
        separators=(",", ":"),
    )
    fields: dict[str, bytes | str | float | int] = {
        "id": entry.entry_id,
        "scope": entry.scope_key,
        "exact": entry.exact_key,
        "prompt": entry.prompt,
        "doc": document,
        "category": entry.category,
        "created": repr(entry.created_at),
        "expires": repr(entry.expires_at),
        "hits": entry.hit_count,
    }
    if entry.embedding is not None:
        fields["emb"] = np.asarray(entry.embedding, dtype=np.float32).tobytes()
    if entry.last_used_at is not None:
        fields["last_hit"] = repr(entry.last_used_at)
    return fields


def _from_fields(fields: Mapping[bytes, bytes]) -> CacheEntry:
    doc = json.loads(fields[b"doc"])
    entry_id = fields[b"id"].decode()
    if doc.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"entry {entry_id} has unknown format_version {doc.get('format_version')!r}")
    blob = fields.get(b"emb")
    last_hit = fields.get(b"last_hit")
    return CacheEntry(
        entry_id=entry_id,
        scope_key=fields[b"scope"].decode(),
        exact_key=fields[b"exact"].decode(),
        prompt=fields[b"prompt"].decode(),
        embedding=None if blob is None else np.frombuffer(blob, dtype=np.float32),
        request=doc["request"],
        response=doc["response"],
        model=doc["model"],
        created_at=float(fields[b"created"]),
        expires_at=float(fields[b"expires"]),
        category=fields[b"category"].decode(),
        hit_count=int(fields.get(b"hits", b"0")),
        last_used_at=None if last_hit is None else float(last_hit),
    )


def encode_event(event: ChangeEvent) -> bytes:
    """One feed event as JSON (vectors as base64 float32), with a `format_version`."""
    if isinstance(event, Removed):
        body: dict[str, Any] = {"kind": "removed", "ids": list(event.entry_ids), "reason": event.reason}
    else:
        fields = _to_fields(event.entry)
        emb = fields.pop("emb", None)
        body = {"kind": "added", "entry": {k: v for k, v in fields.items() if not isinstance(v, bytes)}}
        if isinstance(emb, bytes):
            body["entry"]["emb"] = base64.b64encode(emb).decode()
    body["format_version"] = FORMAT_VERSION
    body["origin"] = event.origin
    return json.dumps(body, separators=(",", ":")).encode()


def decode_event(data: bytes) -> ChangeEvent:
    body = json.loads(data)
    if body.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unknown format_version {body.get('format_version')!r}")
    if body["kind"] == "removed":
        return Removed(entry_ids=tuple(body["ids"]), reason=body["reason"], origin=body["origin"])
    raw = body["entry"]
    fields = {key.encode(): str(value).encode() for key, value in raw.items() if key != "emb"}
    if "emb" in raw:
        fields[b"emb"] = base64.b64decode(raw["emb"])
    return Added(entry=_from_fields(fields), origin=body["origin"])


class RedisStore:
    """`async with RedisStore(url, prefix=...) as store: ...`. Entries are namespaced by the
    embedding model that `adopt_embedder` names; until then only `ping` and `follow` work."""

    def __init__(self, url: str, *, prefix: str = "semcache", stream_maxlen: int = 100_000) -> None:
        self._url = url
        self._prefix = prefix
        self._stream_maxlen = stream_maxlen
        self._client: aioredis.Redis | None = None
        self._keys: _Keys | None = None
        self._adopted = asyncio.Event()
        self._start: tuple[bytes, int] = (b"0-0", 0)
        self._scripts: dict[str, Any] = {}

    async def __aenter__(self) -> RedisStore:
        # No retries inside redis-py: the store's deadline decides, and a fault fails open at once.
        self._client = aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )
        for name, source in (("publish", _PUBLISH), ("tail", _TAIL), ("hits", _HITS), ("unlink", _UNLINK_EXACT)):
            self._scripts[name] = self._client.register_script(source)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def _redis(self) -> Any:
        # Any: redis-py types each reply as the union of every command's sync and async shapes.
        if self._client is None:
            raise StoreError("redis store is not open")
        return self._client

    def _k(self) -> _Keys:
        if self._keys is None:
            raise StoreError("redis store: no embedding model adopted yet")
        return self._keys

    # -- admin ----------------------------------------------------------------------------------

    async def ping(self) -> None:
        with _translated("ping"):
            await self._redis().ping()

    async def adopt_embedder(self, name: str) -> int:
        """Entries are namespaced by model: another model's stay where they are (theirs to use, and
        to expire). Nothing is dropped."""
        keys = _Keys(base=f"{self._prefix}:{namespace(name)}", prefix=self._prefix)
        # The namespace needs no Redis: a replica started while Redis is down serves (misses)
        # and writes there once it is back.
        self._keys = keys
        try:
            with _translated("adopt_embedder"):
                await self._redis().hset(keys.models, namespace(name), name)
                self._start = await self._tail()
        finally:
            # Failed, the feed is read from its start: what is still there is replayed in order,
            # and a gap (the stream was trimmed) has the catalog rebuild.
            self._adopted.set()
        return 0

    async def _tail(self) -> tuple[bytes, int]:
        keys = self._k()
        last_id, number = await self._scripts["tail"](keys=[keys.feed, keys.seq], client=self._redis())
        return (last_id if isinstance(last_id, bytes) else str(last_id).encode()), int(number)

    async def record_hits(self, hits: Mapping[str, HitTally]) -> None:
        if not hits:
            return
        keys = self._k()
        with _translated("record_hits"):
            async with self._redis().pipeline(transaction=False) as pipe:
                for entry_id, tally in hits.items():
                    await self._scripts["hits"](
                        keys=[keys.entry(entry_id)], args=[tally.count, repr(tally.last_at)], client=pipe
                    )
                await pipe.execute()

    # -- entries --------------------------------------------------------------------------------

    async def put(self, entry: CacheEntry) -> list[str]:
        keys = self._k()
        at_ms = max(1, int(entry.expires_at * 1000))
        with _translated("put"):
            async with self._redis().pipeline(transaction=False) as pipe:
                pipe.hset(keys.entry(entry.entry_id), mapping=_to_fields(entry))
                pipe.pexpireat(keys.entry(entry.entry_id), at_ms)
                pipe.set(keys.exact(entry.exact_key), entry.entry_id, pxat=at_ms, get=True)
                pipe.hset(keys.ids, entry.entry_id, entry.category)
                pipe.zadd(keys.category(entry.category), {entry.entry_id: entry.created_at})
                pipe.zadd(keys.expiry, {entry.entry_id: entry.expires_at})
                results = await pipe.execute()
        older = results[2]
        if older is None or older.decode() == entry.entry_id:
            return []
        return await self.delete([older.decode()])

    async def get(self, entry_id: str, *, now: float) -> CacheEntry | None:
        return (await self.get_many([entry_id], now=now)).get(entry_id)

    async def get_exact(self, exact_key: str, *, now: float) -> CacheEntry | None:
        with _translated("get_exact"):
            entry_id = await self._redis().get(self._k().exact(exact_key))
        if entry_id is None:
            return None
        return await self.get(entry_id.decode(), now=now)

    async def get_many(self, entry_ids: Sequence[str], *, now: float) -> dict[str, CacheEntry]:
        if not entry_ids:
            return {}
        keys = self._k()
        with _translated("get_many"):
            async with self._redis().pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.hgetall(keys.entry(entry_id))
                rows = await pipe.execute()
        found: dict[str, CacheEntry] = {}
        for row in rows:
            if row:
                entry = _from_fields(row)
                # Past its TTL it is never served, whether or not Redis has expired the key yet.
                if entry.expires_at > now:
                    found[entry.entry_id] = entry
        return found

    async def delete(self, entry_ids: Sequence[str]) -> list[str]:
        if not entry_ids:
            return []
        keys = self._k()
        ids = list(dict.fromkeys(entry_ids))
        with _translated("delete"):
            async with self._redis().pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.hget(keys.ids, entry_id)
                    pipe.hget(keys.entry(entry_id), "exact")
                found = await pipe.execute()
            async with self._redis().pipeline(transaction=False) as pipe:
                for position, entry_id in enumerate(ids):
                    category, exact = found[2 * position], found[2 * position + 1]
                    pipe.hdel(keys.ids, entry_id)
                    pipe.delete(keys.entry(entry_id), keys.observations(entry_id))
                    pipe.zrem(keys.expiry, entry_id)
                    if category is not None:
                        pipe.zrem(keys.category(category.decode()), entry_id)
                    if exact is not None:
                        await self._scripts["unlink"](keys=[keys.exact(exact.decode())], args=[entry_id], client=pipe)
                results = await pipe.execute()
        # Which were there: HDEL from the registry is the first result of each id's group, and
        # answers 1 for one caller only, so two replicas deleting the same entry both stay right.
        deleted: list[str] = []
        cursor = 0
        for position, entry_id in enumerate(ids):
            category, exact = found[2 * position], found[2 * position + 1]
            if results[cursor]:
                deleted.append(entry_id)
            cursor += 3 + (category is not None) + (exact is not None)
        return deleted

    async def scan_live(self, *, now: float) -> AsyncIterator[list[CacheEntry]]:
        keys = self._k()
        cursor = 0
        scanned = 0
        while True:
            with _translated("scan"):
                cursor, page = await self._redis().hscan(keys.ids, cursor, count=_PAGE)
                ids = [entry_id.decode() for entry_id in page]
                entries = list((await self.get_many(ids, now=now)).values()) if ids else []
            scanned += len(ids)
            if entries:
                yield entries
            if cursor == 0:
                logger.info("rebuild: scanned %d entries from redis", scanned)
                return
            if scanned and scanned % (_PAGE * 20) < _PAGE:
                logger.info("rebuild: %d entries scanned so far", scanned)

    async def retime_category(self, category: str, *, ttl_s: float) -> None:
        keys = self._k()
        with _translated("retime"):
            created = await self._redis().zrange(keys.category(category), 0, -1, withscores=True)
            for start in range(0, len(created), _PAGE):
                page = created[start : start + _PAGE]
                async with self._redis().pipeline(transaction=False) as pipe:
                    for entry_id, _ in page:
                        pipe.hmget(keys.entry(entry_id.decode()), ["expires", "exact"])
                    current = await pipe.execute()
                async with self._redis().pipeline(transaction=False) as pipe:
                    for (raw_id, created_at), (expires, exact) in zip(page, current, strict=True):
                        expires_at = created_at + ttl_s
                        if expires is None or float(expires) == expires_at:
                            continue  # gone already, or unchanged
                        entry_id, at_ms = raw_id.decode(), max(1, int(expires_at * 1000))
                        pipe.hset(keys.entry(entry_id), "expires", repr(expires_at))
                        pipe.pexpireat(keys.entry(entry_id), at_ms)
                        if exact is not None:
                            pipe.pexpireat(keys.exact(exact.decode()), at_ms)
                        pipe.zadd(keys.expiry, {entry_id: expires_at})
                    await pipe.execute()

    async def delete_category(self, category: str) -> list[str]:
        keys = self._k()
        with _translated("delete_category"):
            ids = [entry_id.decode() for entry_id in await self._redis().zrange(keys.category(category), 0, -1)]
        deleted = await self.delete(ids)
        with _translated("delete_category"):
            await self._redis().delete(keys.category(category), keys.observations(pool_key(category)))
            await self._redis().hdel(keys.feedback, category)
        return deleted

    async def purge_expired(self, *, now: float) -> list[str]:
        """Every replica purges; the registry's HDEL tells each id to one of them only, so each
        expiry is announced once."""
        keys = self._k()
        purged: list[str] = []
        while True:
            with _translated("purge"):
                expired = await self._redis().zrangebyscore(keys.expiry, "-inf", now, start=0, num=_PAGE)
            if not expired:
                return purged
            ids = [entry_id.decode() for entry_id in expired]
            purged += await self.delete(ids)
            with _translated("purge"):
                await self._redis().zrem(keys.expiry, *ids)  # a racing replica's share, too

    # -- state ----------------------------------------------------------------------------------

    async def put_feedback(self, category: str, state: Mapping[str, Any]) -> None:
        with _translated("put_feedback"):
            await self._redis().hset(self._k().feedback, category, json.dumps(dict(state), separators=(",", ":")))

    async def feedback_states(self) -> dict[str, Mapping[str, Any]]:
        with _translated("feedback_states"):
            rows = await self._redis().hgetall(self._k().feedback)
        states: dict[str, Mapping[str, Any]] = {}
        for category, state in rows.items():
            try:
                states[category.decode()] = json.loads(state)
            except json.JSONDecodeError:  # one damaged state must not hide the others
                logger.warning("feedback state of category %s is not JSON: skipped", category)
        return states

    async def append_observation(self, entry_id: str, record: Mapping[str, Any]) -> None:
        key = self._k().observations(entry_id)
        with _translated("append_observation"):
            # RPUSH then LTRIM to the newest: atomic per command, so two replicas' appends both land.
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.rpush(key, json.dumps(dict(record), separators=(",", ":")))
                pipe.ltrim(key, -MAX_OBSERVATIONS, -1)
                await pipe.execute()

    async def observations(self, entry_id: str) -> list[Mapping[str, Any]]:
        with _translated("observations"):
            rows = await self._redis().lrange(self._k().observations(entry_id), 0, -1)
        return [json.loads(row) for row in rows]

    async def observations_many(self, entry_ids: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
        if not entry_ids:
            return {}
        keys = self._k()
        with _translated("observations_many"):
            async with self._redis().pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.lrange(keys.observations(entry_id), 0, -1)
                rows = await pipe.execute()
        return {
            entry_id: [json.loads(row) for row in found]
            for entry_id, found in zip(entry_ids, rows, strict=True)
            if found
        }

    # -- served hits (HitRegistry) --------------------------------------------------------------

    async def record_served(self, response_id: str, hit: Mapping[str, Any], *, ttl_s: float) -> None:
        key = self._k().served(response_id)
        with _translated("record_served"):
            async with self._redis().pipeline(transaction=False) as pipe:
                pipe.hset(key, "hit", json.dumps(dict(hit), separators=(",", ":")))
                pipe.expire(key, max(1, int(ttl_s)))
                await pipe.execute()

    async def served(self, response_id: str) -> Mapping[str, Any] | None:
        with _translated("served"):
            raw = await self._redis().hget(self._k().served(response_id), "hit")
        if raw is None:
            return None
        hit: Mapping[str, Any] = json.loads(raw)
        return hit

    async def claim_rating(self, response_id: str) -> bool:
        with _translated("claim_rating"):
            return bool(await self._redis().hsetnx(self._k().served(response_id), "rated", 1))

    # -- change feed ----------------------------------------------------------------------------

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        if not events:
            return
        keys = self._k()
        with _translated("publish"):
            await self._scripts["publish"](
                keys=[keys.feed, keys.seq],
                args=[self._stream_maxlen, *(encode_event(event) for event in events)],
                client=self._redis(),
            )

    def follow(self) -> AsyncIterator[FeedItem]:
        return _Follower(self)


class _Follower:
    """Reads the feed from where the store was adopted (or the follower was last told to rebuild),
    with a blocking XREAD. Redis faults are waited out with backoff, never raised; a gap in the
    event numbers (the stream was trimmed past this follower, or Redis lost its data) yields
    `Resync`, after which reading goes on from the feed's end as it was at that moment."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._position: tuple[bytes, int] | None = None
        self._buffer: deque[FeedItem] = deque()
        self._closed = False
        self._failures = 0

    def __aiter__(self) -> _Follower:
        return self

    async def aclose(self) -> None:
        self._closed = True

    async def __anext__(self) -> FeedItem:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._store._adopted.wait()
            try:
                await self._read()
            except (RedisError, OSError, StoreError) as exc:
                delay = _BACKOFF_S[min(self._failures, len(_BACKOFF_S) - 1)]
                self._failures += 1
                logger.warning("change feed: redis unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
        return self._buffer.popleft()

    async def _read(self) -> None:
        store = self._store
        if self._position is None:
            self._position = store._start
        if self._failures:
            # Back after a fault: a Redis that lost its data numbers from 0 again.
            tail = await store._tail()
            self._failures = 0
            logger.info("change feed: redis reachable again")
            if tail[1] < self._position[1]:
                self._resync(tail, "redis restarted without the events this replica had seen")
                return
        keys = store._k()
        last_id, number = self._position
        replies = await store._redis().xread({keys.feed: last_id}, count=_PAGE, block=_FOLLOW_BLOCK_MS)
        for _, messages in replies or []:
            for message_id, fields in messages:
                n = int(fields[b"n"])
                if n != number + 1:
                    self._resync(await store._tail(), f"events {number + 1}..{n - 1} were trimmed from the stream")
                    return
                last_id, number = message_id, n
                try:
                    self._buffer.append(decode_event(fields[b"e"]))
                except (ValueError, KeyError) as exc:  # one unreadable event, not the follower
                    logger.warning("change feed: event %s unreadable: %s", message_id, exc)
        self._position = (last_id, number)

    def _resync(self, tail: tuple[bytes, int], why: str) -> None:
        logger.warning("change feed: %s; rebuilding the index from redis", why)
        self._buffer.clear()
        self._buffer.append(Resync(reason=why))
        self._position = tail
