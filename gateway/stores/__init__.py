"""Document stores: the `Store` protocol and its backends."""

from gateway.stores.base import FORMAT_VERSION, CacheEntry, Store
from gateway.stores.sqlite import SqliteStore

__all__ = ["FORMAT_VERSION", "CacheEntry", "SqliteStore", "Store"]
