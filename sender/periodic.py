"""A worker task that does one piece of upkeep every ``period`` seconds until stopped (held
jobs' expiry, recipient events left pending): a turn that fails (Redis or the broker away) is
logged and the next turn tries again."""

from __future__ import annotations

import asyncio
import logging


class Periodic:
    """Subclasses give :meth:`turn`, a ``name`` for the log and the ``log`` to write to."""

    name = "periodic task"
    log = logging.getLogger("outbox.periodic")

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
        while True:
            await asyncio.sleep(self._period)
            try:
                await self.turn()
            except Exception as exc:  # Redis or the broker away: the next turn tries again
                self.log.warning("%s: %s: %s", self.name, type(exc).__name__, exc)
