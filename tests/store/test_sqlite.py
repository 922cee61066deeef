"""What only the SQLite store does: WAL with full sync, its schema version, its file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.exceptions import StorageError
from gateway.store.sqlite import SCHEMA_VERSION, SQLiteStore

pytestmark = pytest.mark.anyio


async def test_the_database_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    await store.open()
    assert store._connection is not None
    assert store._connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this gateway"):
        await SQLiteStore(tmp_path / "g.db").open()


async def test_an_unusable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError):
        await SQLiteStore(tmp_path / "file" / "g.db").open()
