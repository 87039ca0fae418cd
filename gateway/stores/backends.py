"""Which backend `cache.store.kind` names: one table, the only place a store is constructed from
config. A new backend is one more row."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from gateway.config import StoreConfig
from gateway.stores.base import Store
from gateway.stores.redis import RedisStore
from gateway.stores.sqlite import SqliteStore

StoreFactory = Callable[[StoreConfig], AbstractAsyncContextManager[Store]]

BACKENDS: dict[str, StoreFactory] = {
    "sqlite": lambda config: SqliteStore(config.path),
    "redis": lambda config: RedisStore(config.url, prefix=config.prefix, stream_maxlen=config.stream_maxlen),
}


def open_store(config: StoreConfig) -> AbstractAsyncContextManager[Store]:
    """The configured backend, to be entered (`async with`); config validation admits only the
    table's kinds."""
    return BACKENDS[config.kind](config)
