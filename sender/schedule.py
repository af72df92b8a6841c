"""The mover: releases scheduled jobs when they are due (README, "Send later").

Every worker process runs one (:class:`Mover`, started and stopped with the worker). Each turn
it leases the due jobs of every shard in one Redis round trip (:meth:`Schedule.release`),
publishes them to their lanes on ``outbox.jobs`` with publisher confirms (at most
:data:`PUBLISH_WINDOW` awaiting at once), then takes the confirmed ones off their shards and
puts the refused ones back (due again at once). Between turns it sleeps until the earliest
due job, at most :data:`POLL` seconds (a job scheduled by another process is seen within
that), so a job leaves within about ``POLL`` of its ``send_at``.

A released copy carries :data:`RELEASED_HEADER` (its due time, epoch ms): the pipeline never
schedules it again, whatever the clocks say, and sends it through the whole pipeline.
:data:`sender.bus.FIRST_SEEN_HEADER` is the release time, so the retry age starts when the job
is due, not when it was published.

Several movers (processes, machines) may run: a lease keeps each due job to one of them; the
jobs of a mover that dies are due again when its lease ends (:data:`LEASE_MS`), published once
more, and the job's record lets only one copy be sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sender import topology
from sender.bus import BROKER_ERRORS, FIRST_SEEN_HEADER, Bus, PublishFailed
from suppression.schedule import Due, Schedule

log = logging.getLogger("outbox.schedule")
#: on a released job: when it was due (epoch ms)
RELEASED_HEADER = "x-outbox-released"
#: longest sleep between two looks at the shards (seconds)
POLL = 0.2
#: due jobs leased from each shard per turn (at most 1,600 a turn: the first of many due
#: together leave without waiting for the whole lot to be read and published)
BATCH = 100
#: publishes awaiting their confirms at once
PUBLISH_WINDOW = 256
#: seconds for one round trip before the mover counts it failed and tries again
REDIS_TIMEOUT = 5.0
_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError, *BROKER_ERRORS)


class Mover:
    """Releases due jobs until stopped. ``on_release``: told how late each released job was
    (seconds; the benchmark and metrics listen)."""

    def __init__(self, schedule: Schedule, bus: Bus, *, poll: float = POLL,
                 batch: int = BATCH,
                 on_release: Callable[[Due, float], None] | None = None) -> None:
        self.schedule = schedule
        self._bus = bus
        self._poll = poll
        self._batch = batch
        self._on_release = on_release
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.released = 0  # jobs published since start (tests, the benchmark)
        #: Redis round trips made (not per job: the tests that count a job's subtract them)
        self.round_trips = 0

    def start(self) -> None:
        """Start releasing in a task of its own."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="outbox-mover")

    async def stop(self) -> None:
        """Stop after the turn in progress (its publishes confirmed and taken off the shards,
        so no job is published twice because of a stop)."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), REDIS_TIMEOUT * 2)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                wait = await self.turn()
            except _ERRORS as exc:
                if not failing:  # once per outage; the worker's own tracker reports it too
                    log.warning("scheduled jobs wait: %s: %s", type(exc).__name__, exc)
                failing, wait = True, self._poll
            else:
                if failing:
                    log.info("scheduled jobs are released again")
                failing = False
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), wait)
                except TimeoutError:
                    pass

    async def turn(self) -> float:
        """Release what is due now; returns how long to sleep before the next turn."""
        self.round_trips += 1
        async with asyncio.timeout(REDIS_TIMEOUT):
            dues, upcoming = await self.schedule.release(self._batch)
        if dues:
            await self._publish(dues)
            return 0.0  # more may be due (a shard had a full batch): look again at once
        if upcoming is None:
            return self._poll
        return min(self._poll, max(0.0, upcoming / 1000 - time.time()))

    async def _publish(self, dues: list[Due]) -> None:
        window = asyncio.Semaphore(PUBLISH_WINDOW)
        released_at = int(time.time())

        async def one(due: Due) -> bool:
            async with window:
                try:
                    await self._bus.publish(
                        topology.JOBS_EXCHANGE, due.routing_key, due.body,
                        headers={FIRST_SEEN_HEADER: released_at, RELEASED_HEADER: due.due_ms},
                        message_id=due.job_id)
                except BROKER_ERRORS as exc:
                    log.debug("release of %s failed: %s", due.member, exc)
                    return False
            if self._on_release is not None and due.due_ms:
                # 0: a cancelled job, released at once for its event
                self._on_release(due, time.time() - due.due_ms / 1000)
            return True

        sent = await asyncio.gather(*(one(d) for d in dues))
        confirmed = [d for d, ok in zip(dues, sent, strict=True) if ok]
        refused = [d for d, ok in zip(dues, sent, strict=True) if not ok]
        self.round_trips += bool(confirmed) + bool(refused)
        async with asyncio.timeout(REDIS_TIMEOUT):
            await self.schedule.done(confirmed)
            await self.schedule.put_back(refused)
        self.released += len(confirmed)
        late = [time.time() - d.due_ms / 1000 for d in confirmed if d.due_ms]
        if late:
            log.info("released %d scheduled jobs, up to %.3f s after their time", len(late),
                     max(late), extra={"released": len(late), "late_s": round(max(late), 3)})
        if refused:
            raise PublishFailed(f"the broker took {len(confirmed)} of {len(dues)} due jobs; "
                                f"the others are due again")
