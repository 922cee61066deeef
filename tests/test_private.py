from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.private import private_file
from gateway.store.sqlite import SQLiteStore
from tests.helpers import record

pytestmark = pytest.mark.anyio


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_private_and_an_existing_one_keeps_its_permissions(tmp_path: Path) -> None:
    private_file(tmp_path / "data" / "new.db")
    assert mode(tmp_path / "data" / "new.db") == 0o600 and mode(tmp_path / "data") == 0o700
    shared = tmp_path / "shared.db"
    shared.write_text("")
    shared.chmod(0o640)
    private_file(shared)
    assert mode(shared) == 0o640


async def test_the_database_and_the_files_beside_it_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data" / "gateway.db")
    await store.open()
    await store.ingest(record(), [])
    try:
        for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm", "gateway.db-writer.lock"):
            assert mode(tmp_path / "data" / name) == 0o600, name
    finally:
        await store.close()
