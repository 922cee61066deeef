"""Webhooks answered and delivery attempts made, counted per minute in memory and added to the store every few
seconds: the console's overview then shows every process's traffic of the last hour and day, across restarts.

Outcome names come from the gateway's own code (accepted, duplicate, bad_signature, succeeded...) and names from the
configuration, so the counts stay bounded whatever the requests say.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

import anyio

from gateway.clock import Clock
from gateway.exceptions import StorageError
from gateway.store.base import Store, TrafficCount

logger = logging.getLogger(__name__)
KEPT_MINUTES = 25 * 60
"""The store keeps a day of counts, and an hour more so the day is whole."""
FLUSH_EVERY = 5.0


class Traffic:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._counts: Counter[tuple[int, Literal["webhook", "attempt"], str, str]] = Counter()

    def count(self, kind: Literal["webhook", "attempt"], name: str, outcome: str) -> None:
        self._counts[(int(self.clock.now() // 60), kind, name, outcome)] += 1

    async def flush(self, store: Store) -> None:
        """Add what was counted since the last flush to the store; kept for the next one if the store fails."""
        if not self._counts:
            return  # an idle gateway writes nothing; old minutes go with the next counts
        counts, self._counts = self._counts, Counter()
        # sorted, so that two processes upserting the same minutes lock the rows in one order (no deadlock)
        rows = [
            TrafficCount(kind, name, outcome, minute, n) for (minute, kind, name, outcome), n in sorted(counts.items())
        ]
        try:
            await store.add_traffic(rows, forget_before=int(self.clock.now() // 60) - KEPT_MINUTES)
        except StorageError:
            self._counts.update(counts)
            raise

    async def run(self, store: Store, *, every: float = FLUSH_EVERY) -> None:
        """Flush every `every` seconds, and once more when cancelled (shutdown)."""
        try:
            while True:
                await anyio.sleep(every)
                await self._flush_logged(store)
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush_logged(store)

    async def _flush_logged(self, store: Store) -> None:
        try:
            await self.flush(store)
        except StorageError as error:
            logger.warning("traffic counts not stored (kept for the next try): %s", error)
