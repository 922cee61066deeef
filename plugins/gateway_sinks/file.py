"""`file` sink: appends each delivered event as one JSON line; works offline, for trying the gateway out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import anyio.to_thread

from gateway import AppointmentEvent, Delivery, Receipt, Sink, SinkOptions, hookimpl


class FileOptions(SinkOptions):
    path: Path
    fsync: bool = True
    """Sync every line to disk before the delivery counts as done."""


class FileSink(Sink):
    type_name = "file"
    Options = FileOptions
    options: FileOptions

    def __init__(self, name: str, options: FileOptions, *, timeout: float) -> None:
        super().__init__(name, options, timeout=timeout)
        self._lock = anyio.Lock()

    async def deliver(self, event: AppointmentEvent, delivery: Delivery) -> Receipt | None:
        line = json.dumps(
            {
                "delivery_id": delivery.id,
                "attempt": delivery.attempt,
                "event": event.model_dump(mode="json", by_alias=True),
            },
            ensure_ascii=False,
        )
        async with self._lock:
            await anyio.to_thread.run_sync(self._append, line + "\n")
        return None

    def _append(self, line: str) -> None:
        self.options.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # customers' data: a new journal is readable by its owner only
        descriptor = os.open(self.options.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        with open(descriptor, "a", encoding="utf-8") as file:
            file.write(line)
            if self.options.fsync:
                file.flush()
                os.fsync(file.fileno())


@hookimpl
def register_sinks() -> list[type[Sink]]:
    return [FileSink]
