"""A worker task that does one piece of upkeep every ``period`` seconds until stopped (held
jobs' expiry, recipient events left pending, the gauges): a turn that fails (Redis or the
broker away) is logged and the next turn tries again."""

from __future__ import annotations

import asyncio
import logging


class Periodic:
    """Subclasses give :meth:`turn`, a ``name`` for the log and the ``log`` to write to."""

    name = "periodic task"
    log = logging.getLogger("outbox.periodic")
    #: the first turn at the start (else one period later)
    turn_at_start = False
    #: the level a failed turn is logged at
    failure_level = logging.WARNING

    def __init__(self, period: float) -> None:
        self._period = period
        self._task: asyncio.Task[None] | None = None

    async def turn(self) -> None:
        """One turn of the upkeep."""
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        if not self.turn_at_start:
            await asyncio.sleep(self._period)
        while True:
            try:
                await self.turn()
            except Exception as exc:  # Redis or the broker away: the next turn tries again
                self.log.log(self.failure_level, "%s: %s: %s", self.name, type(exc).__name__,
                             exc)
            await asyncio.sleep(self._period)
