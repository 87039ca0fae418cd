"""Document stores: the protocols (entries, state, change feed, admin), their backends, and the
deadline every call runs under."""

from gateway.stores.backends import BACKENDS, open_store
from gateway.stores.base import (
    FORMAT_VERSION,
    MAX_OBSERVATIONS,
    Added,
    AdminStore,
    CacheEntry,
    ChangeEvent,
    ChangeFeed,
    EntryStore,
    FeedItem,
    HitRegistry,
    HitTally,
    RemovalReason,
    Removed,
    Resync,
    StateStore,
    Store,
    pool_key,
)
from gateway.stores.deadline import DeadlineStore
from gateway.stores.feed import LocalFeed
from gateway.stores.redis import RedisStore
from gateway.stores.sqlite import SqliteStore

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "MAX_OBSERVATIONS",
    "Added",
    "AdminStore",
    "CacheEntry",
    "ChangeEvent",
    "ChangeFeed",
    "DeadlineStore",
    "EntryStore",
    "FeedItem",
    "HitRegistry",
    "HitTally",
    "LocalFeed",
    "RedisStore",
    "RemovalReason",
    "Removed",
    "Resync",
    "SqliteStore",
    "StateStore",
    "Store",
    "open_store",
    "pool_key",
]
