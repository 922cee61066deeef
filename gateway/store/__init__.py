"""Storage backends behind one protocol (gateway.store.base.Store), chosen by the storage URL."""

from __future__ import annotations

from gateway.config import StorageConfig
from gateway.exceptions import ConfigError
from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore


def store_for(storage: StorageConfig) -> Store:
    if storage.url.startswith("sqlite:///"):
        return SQLiteStore.from_url(storage.url, busy_timeout=storage.busy_timeout)
    try:
        from gateway.store.postgres import PostgresStore
    except ImportError as error:
        raise ConfigError(
            f"storage.url is a PostgreSQL URL but psycopg is not installed ({error}); "
            "run: pip install 'appointment-gateway[postgres]'"
        ) from None
    return PostgresStore(
        storage.url, pool_min=storage.pool_min, pool_max=storage.pool_max, busy_timeout=storage.busy_timeout
    )
