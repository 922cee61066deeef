from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from gateway_sinks.file import FileOptions, FileSink

from gateway.sinks import Delivery
from tests.samples import appointment_event

pytestmark = pytest.mark.anyio


async def test_each_delivery_is_appended_as_one_json_line(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "out.jsonl"
    sink = FileSink("journal", FileOptions(path=path), timeout=1.0)
    await sink.deliver(appointment_event(), Delivery(id="d1", sink="journal", attempt=1))
    await sink.deliver(appointment_event(), Delivery(id="d2", sink="journal", attempt=2))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["delivery_id"], line["attempt"]) for line in lines] == [("d1", 1), ("d2", 2)]
    assert lines[0]["event"]["customer"]["name"] == "Jean Dupont"


async def test_an_unwritable_path_raises_so_the_core_retries(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where a folder should be")
    sink = FileSink("journal", FileOptions(path=tmp_path / "blocked" / "out.jsonl"), timeout=1.0)
    with pytest.raises(OSError):
        await sink.deliver(appointment_event(), Delivery(id="d1", sink="journal", attempt=1))


async def test_a_new_journal_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "out.jsonl"
    await FileSink("journal", FileOptions(path=path), timeout=1.0).deliver(
        appointment_event(), Delivery(id="d1", sink="journal", attempt=1)
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
