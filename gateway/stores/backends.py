"""Which backend `cache.store.kind` names: one table, the only place a store is constructed from
config. A new backend (Redis) is one more row."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from gateway.config import StoreConfig
from gateway.stores.base import Store
from gateway.stores.sqlite import SqliteStore

StoreFactory = Callable[[StoreConfig], AbstractAsyncContextManager[Store]]

BACKENDS: dict[str, StoreFactory] = {
    "sqlite": lambda config: SqliteStore(config.path),
}


def open_store(config: StoreConfig) -> AbstractAsyncContextManager[Store]:
    """The configured backend, to be entered (`async with`); config validation admits only the
    table's kinds."""
    return BACKENDS[config.kind](config)
