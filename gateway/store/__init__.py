"""Storage backends behind one protocol (gateway.store.base.Store), chosen by the storage URL."""

from __future__ import annotations

from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore


def store_for(url: str) -> Store:
    return SQLiteStore.from_url(url)
