"""The embedded default store: one SQLite file in WAL mode, owned by one worker thread. Its change
feed is in-process (one gateway process per file)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from gateway.errors import StoreError
from gateway.stores.base import FORMAT_VERSION, MAX_OBSERVATIONS, CacheEntry, ChangeEvent, HitTally, pool_key
from gateway.stores.feed import LocalFeed

T = TypeVar("T")
logger = logging.getLogger("semcache.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_id   TEXT PRIMARY KEY,
    scope_key  TEXT NOT NULL,
    exact_key  TEXT NOT NULL,
    prompt     TEXT NOT NULL,
    embedding  BLOB,
    document   TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    hit_count  INTEGER NOT NULL DEFAULT 0,
    last_hit_at REAL,
    category   TEXT NOT NULL DEFAULT 'default'
);
CREATE INDEX IF NOT EXISTS entries_exact ON entries (exact_key);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at);
CREATE TABLE IF NOT EXISTS feedback (
    category   TEXT PRIMARY KEY,
    state      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS observations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id   TEXT NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS observations_entry ON observations (entry_id, seq);
"""
_CATEGORY_INDEX = "CREATE INDEX IF NOT EXISTS entries_category ON entries (category)"
_COLUMNS = (
    "entry_id, scope_key, exact_key, prompt, embedding, document, created_at, expires_at, hit_count, "
    "category, last_hit_at"
)
_PAGE = 1000
# SQLite's default limit of host parameters in one statement is 32766 (since 3.32); stay well under.
_MAX_PARAMS = 500


def _to_row(entry: CacheEntry) -> tuple[Any, ...]:
    document = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "model": entry.model,
            "request": entry.request,
            "response": entry.response,
            **({} if entry.max_ttl_s is None else {"max_ttl_s": entry.max_ttl_s}),
        },
        separators=(",", ":"),
    )
    blob = None if entry.embedding is None else np.asarray(entry.embedding, dtype=np.float32).tobytes()
    return (
        entry.entry_id, entry.scope_key, entry.exact_key, entry.prompt, blob, document,
        entry.created_at, entry.expires_at, entry.hit_count, entry.category, entry.last_used_at,
    )  # fmt: skip


def _from_row(row: tuple[Any, ...]) -> CacheEntry:
    entry_id, scope_key, exact_key, prompt, blob, document, created_at, expires_at, hit_count, category, last_hit = row
    doc = json.loads(document)
    if doc.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"entry {entry_id} has unknown format_version {doc.get('format_version')!r}")
    return CacheEntry(
        entry_id=entry_id,
        scope_key=scope_key,
        exact_key=exact_key,
        prompt=prompt,
        embedding=None if blob is None else np.frombuffer(blob, dtype=np.float32),
        request=doc["request"],
        response=doc["response"],
        model=doc["model"],
        max_ttl_s=doc.get("max_ttl_s"),
        created_at=created_at,
        expires_at=expires_at,
        category=category,
        hit_count=hit_count,
        last_used_at=last_hit,
    )


class SqliteStore:
    """`async with SqliteStore(path) as store: ...`; every SQLite call runs on the store's thread."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semcache-sqlite")
        self._db: sqlite3.Connection | None = None
        self._feed = LocalFeed()

    async def __aenter__(self) -> SqliteStore:
        await self._call(self._open)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._call(self._close)
        finally:
            # `_close` ran last on the store's only thread, so there is nothing left to wait for;
            # waiting (`wait=True`) would block the event loop on a thread join.
            self._executor.shutdown(wait=False)

    def _open(self) -> None:
        if sqlite3.sqlite_version_info < (3, 35):  # DELETE ... RETURNING
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old: 3.35 or later is needed")
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
        if "category" not in columns:  # a file from before categories: everything was "default"
            db.execute("ALTER TABLE entries ADD COLUMN category TEXT NOT NULL DEFAULT 'default'")
        db.execute(_CATEGORY_INDEX)
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("sqlite store is not open")
        return self._db

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the store's thread; sqlite3's errors become `StoreError` here and only here."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (sqlite3.Error, ValueError, KeyError, RuntimeError) as exc:
            raise StoreError(f"sqlite store failed: {exc}") from exc

    async def put(self, entry: CacheEntry) -> list[str]:
        return await self._call(self._put, entry)

    def _put(self, entry: CacheEntry) -> list[str]:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            replaced = [
                row[0]
                for row in db.execute(
                    "DELETE FROM entries WHERE exact_key = ? AND entry_id != ? RETURNING entry_id",
                    (entry.exact_key, entry.entry_id),
                ).fetchall()
            ]
            db.execute(f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", _to_row(entry))
            _drop_observations(db, replaced)
        return replaced

    async def get(self, entry_id: str, *, now: float) -> CacheEntry | None:
        return await self._call(self._get, "entry_id", entry_id, now)

    async def get_exact(self, exact_key: str, *, now: float) -> CacheEntry | None:
        return await self._call(self._get, "exact_key", exact_key, now)

    async def get_many(self, entry_ids: Sequence[str], *, now: float) -> dict[str, CacheEntry]:
        if not entry_ids:
            return {}
        return await self._call(self._get_many, list(entry_ids), now)

    def _get_many(self, entry_ids: list[str], now: float) -> dict[str, CacheEntry]:
        found: dict[str, CacheEntry] = {}
        db = self._conn()
        for chunk in _chunks(entry_ids):
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE entry_id IN ({_marks(chunk)}) AND expires_at > ?",
                (*chunk, now),
            )
            for row in rows:
                entry = _from_row(row)
                found[entry.entry_id] = entry
        return found

    def _get(self, column: str, value: str, now: float) -> CacheEntry | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM entries WHERE {column} = ? AND expires_at > ? "
                "ORDER BY created_at DESC LIMIT 1",
                (value, now),
            )
            .fetchone()
        )
        return None if row is None else _from_row(row)

    async def record_hits(self, hits: Mapping[str, HitTally]) -> None:
        if hits:
            await self._call(self._record_hits, dict(hits))

    def _record_hits(self, hits: dict[str, HitTally]) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE entries SET hit_count = hit_count + ?, last_hit_at = max(coalesce(last_hit_at, 0), ?) "
                "WHERE entry_id = ?",
                [(tally.count, tally.last_at, entry_id) for entry_id, tally in hits.items()],
            )

    async def purge_expired(self, *, now: float) -> list[str]:
        return await self._call(self._purge_expired, now)

    def _purge_expired(self, now: float) -> list[str]:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("DELETE FROM entries WHERE expires_at <= ? RETURNING entry_id", (now,))
            ids = [row[0] for row in rows]
            _drop_observations(db, ids)
        return ids

    async def scan_live(self, *, now: float) -> AsyncIterator[list[CacheEntry]]:
        after = ""
        while True:
            page = await self._call(self._page, after, now)
            if not page:
                return
            yield page
            after = page[-1].entry_id

    def _page(self, after: str, now: float) -> list[CacheEntry]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM entries WHERE entry_id > ? AND expires_at > ? ORDER BY entry_id LIMIT ?",
            (after, now, _PAGE),
        )
        return [_from_row(row) for row in rows]

    async def delete(self, entry_ids: Sequence[str]) -> list[str]:
        if not entry_ids:
            return []
        return await self._call(self._delete, list(entry_ids))

    def _delete(self, entry_ids: list[str]) -> list[str]:
        db = self._conn()
        deleted: list[str] = []
        with db:
            db.execute("BEGIN IMMEDIATE")
            for chunk in _chunks(entry_ids):
                rows = db.execute(f"DELETE FROM entries WHERE entry_id IN ({_marks(chunk)}) RETURNING entry_id", chunk)
                deleted += [row[0] for row in rows]
            _drop_observations(db, deleted)
        return deleted

    async def delete_category(self, category: str) -> list[str]:
        return await self._call(self._delete_category, category)

    def _delete_category(self, category: str) -> list[str]:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("DELETE FROM entries WHERE category = ? RETURNING entry_id", (category,))
            ids = [row[0] for row in rows]
            db.execute("DELETE FROM feedback WHERE category = ?", (category,))
            _drop_observations(db, [*ids, pool_key(category)])
        return ids

    async def put_feedback(self, category: str, state: Mapping[str, Any]) -> None:
        # Serialized on the store's thread too: a state holds up to `feedback.window` ratings.
        await self._call(
            lambda: self._conn().execute(
                "INSERT OR REPLACE INTO feedback (category, state) VALUES (?, ?)",
                (category, json.dumps(dict(state), separators=(",", ":"))),
            )
        )

    async def feedback_states(self) -> dict[str, Mapping[str, Any]]:
        return await self._call(self._feedback_states)

    def _feedback_states(self) -> dict[str, Mapping[str, Any]]:
        rows = self._conn().execute("SELECT category, state FROM feedback").fetchall()
        states: dict[str, Mapping[str, Any]] = {}
        for category, state in rows:
            try:
                states[category] = json.loads(state)
            except json.JSONDecodeError:  # one damaged row must not hide the others
                logger.warning("feedback state of category %s is not JSON: skipped", category)
        return states

    async def append_observation(self, entry_id: str, record: Mapping[str, Any]) -> None:
        document = json.dumps(dict(record), separators=(",", ":"))
        await self._call(self._append_observation, entry_id, document)

    def _append_observation(self, entry_id: str, document: str) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            seq = db.execute(
                "INSERT INTO observations (entry_id, record) VALUES (?, ?) RETURNING seq", (entry_id, document)
            ).fetchone()[0]
            # Capped: the oldest beyond MAX_OBSERVATIONS go (one indexed range delete, rarely non-empty).
            db.execute(
                "DELETE FROM observations WHERE entry_id = ? AND seq <= ("
                "SELECT seq FROM observations WHERE entry_id = ? AND seq <= ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (entry_id, entry_id, seq, MAX_OBSERVATIONS),
            )

    async def observations_many(self, entry_ids: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
        if not entry_ids:
            return {}
        return await self._call(self._observations_many, list(entry_ids))

    def _observations_many(self, entry_ids: list[str]) -> dict[str, list[Mapping[str, Any]]]:
        found: dict[str, list[Mapping[str, Any]]] = {}
        db = self._conn()
        for chunk in _chunks(entry_ids):
            rows = db.execute(
                f"SELECT entry_id, record FROM observations WHERE entry_id IN ({_marks(chunk)}) ORDER BY seq", chunk
            )
            for entry_id, record in rows:
                found.setdefault(entry_id, []).append(json.loads(record))
        return found

    async def observations(self, entry_id: str) -> list[Mapping[str, Any]]:
        rows = await self._call(
            lambda: (
                self._conn()
                .execute("SELECT record FROM observations WHERE entry_id = ? ORDER BY seq", (entry_id,))
                .fetchall()
            )
        )
        return [json.loads(record) for (record,) in rows]

    async def publish(self, events: Sequence[ChangeEvent]) -> None:
        await self._feed.publish(events)

    def follow(self) -> AsyncIterator[ChangeEvent]:
        return self._feed.follow()

    async def adopt_embedder(self, name: str) -> int:
        return await self._call(self._adopt_embedder, name)

    def _adopt_embedder(self, name: str) -> int:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
            dropped = 0
            # A file from before this record is taken to be this model's: the only model then was
            # the configured one, and dropping a whole cache on upgrade would be worse.
            if row is not None and row[0] != name:
                dropped = db.execute("DELETE FROM entries").rowcount
                db.execute("DELETE FROM feedback")
                db.execute("DELETE FROM observations")
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('embedder', ?)", (name,))
        return dropped

    async def retime_category(self, category: str, *, ttl_s: float) -> None:
        await self._call(
            lambda: self._conn().execute(
                # An entry stored with a shorter TTL of its own keeps it (its document says so).
                "UPDATE entries SET expires_at = created_at"
                " + MIN(?, COALESCE(json_extract(document, '$.max_ttl_s'), ?)) WHERE category = ?",
                (ttl_s, ttl_s, category),
            )
        )

    async def ping(self) -> None:
        await self._call(lambda: self._conn().execute("SELECT 1").fetchone())


def _drop_observations(db: sqlite3.Connection, entry_ids: list[str]) -> None:
    """Observations go with their entry, in the same transaction."""
    for chunk in _chunks(entry_ids):
        db.execute(f"DELETE FROM observations WHERE entry_id IN ({_marks(chunk)})", chunk)


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[start : start + _MAX_PARAMS] for start in range(0, len(ids), _MAX_PARAMS)]


def _marks(chunk: list[str]) -> str:
    return ",".join("?" * len(chunk))
