"""Outages of Redis and RabbitMQ: counted, shown as metrics and logged quietly.

One :class:`OutageTracker` per dependency (``redis``, ``rabbitmq``) in a process, shared by every
place there that talks to it (the worker's Redis-call guard and its event applier, the HTTP
server's error middleware, the periodic :class:`Watch`): whoever sees a failure first starts
the outage, whoever sees an answer first ends it. Instead of one line per job and attempt, an
outage logs (logger ``outbox.outage``, field ``dependency``)::

    WARNING  "redis unreachable: connection refused"           when it starts (``cause``)
    WARNING  "redis still unreachable after 60 s: ..."          every REMIND_EVERY s while down
                                                                (``down_s``, ``jobs_waited``)
    INFO     "redis reachable again after 20.3 s; 64 jobs waited"  when it ends (``down_s``,
                                                                ``jobs_waited``)

``jobs_waited`` counts the deliveries (jobs and provider events) held by the outage, each once.

Metrics (one set per process, on its registry):

=====================================================  ===========================================
``outbox_dependency_up{dependency}``                   1 reachable, 0 not (several worker
                                                       processes: the lowest, ``livemin``)
``outbox_dependency_wait_seconds_total{dependency}``   seconds this process spent with the
                                                       dependency unreachable (grows during an
                                                       outage, at each failed call or check)
=====================================================  ===========================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from sender.connect import REDIS_DOWN, why
from suppression.roundtrip import Client

log = logging.getLogger("outbox.outage")

REDIS, RABBITMQ = "redis", "rabbitmq"
DEPENDENCIES = (REDIS, RABBITMQ)
#: seconds between the reminders while a dependency stays unreachable
REMIND_EVERY = 60.0
#: seconds between two checks of the :class:`Watch` (and the longest one check may take)
WATCH_PERIOD = 5.0
#: what a Redis call raises when Redis cannot be reached or does not answer in time
REDIS_UNREACHABLE: tuple[type[BaseException], ...] = (*REDIS_DOWN, OSError)


class DependencyMetrics:
    """``outbox_dependency_up`` and ``outbox_dependency_wait_seconds_total``, every dependency's
    series present from the start (up = 1, waited = 0)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge("outbox_dependency_up", "1 while the dependency answers, 0 while not",
                        ["dependency"], registry=registry, multiprocess_mode="livemin")
        self.wait_seconds = Counter("outbox_dependency_wait_seconds",
                                    "Seconds spent with the dependency unreachable",
                                    ["dependency"], registry=registry)
        for name in DEPENDENCIES:
            self.up.labels(name).set(1)
            self.wait_seconds.labels(name)


class OutageTracker:
    """The state of one dependency in this process: up, or down since when and why.

    :meth:`failed` on every failed call or check, :meth:`waiting` once per delivery an outage
    holds, :meth:`reachable` on every success (a no-op while up: cheap on the hot path)."""

    def __init__(self, dependency: str, metrics: DependencyMetrics, *,
                 remind_every: float = REMIND_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dependency = dependency
        self._up = metrics.up.labels(dependency)
        self._waited = metrics.wait_seconds.labels(dependency)
        self._remind_every = remind_every
        self._clock = clock
        self.down = False
        self.cause = ""
        self.jobs_waited = 0
        self._since = self._marked = self._reminded = 0.0

    def failed(self, cause: BaseException | str) -> None:
        """A call or check failed because the dependency is unreachable."""
        now = self._clock()
        if not self.down:
            self._start(now, _cause(cause))
            return
        self._count_wait(now)
        self.cause = _cause(cause)
        if now - self._reminded >= self._remind_every:
            self._reminded = now
            log.warning("%s still unreachable after %.0f s: %s; %d jobs waiting",
                        self.dependency, now - self._since, self.cause, self.jobs_waited,
                        extra=self._fields(now, event="still_down"))

    def waiting(self) -> None:
        """One more delivery is held by the outage."""
        self.jobs_waited += 1

    def reachable(self) -> None:
        """The dependency answered: the outage, if any, is over."""
        if not self.down:
            return
        now = self._clock()
        self._count_wait(now)
        self.down = False
        self._up.set(1)
        log.info("%s reachable again after %.1f s; %d jobs waited", self.dependency,
                 now - self._since, self.jobs_waited, extra=self._fields(now, event="up"))

    def _start(self, now: float, cause: str) -> None:
        self.down, self.cause, self.jobs_waited = True, cause, 0
        self._since = self._marked = self._reminded = now
        self._up.set(0)
        log.warning("%s unreachable: %s", self.dependency, cause,
                    extra={"dependency": self.dependency, "cause": cause, "event": "down"})

    def _count_wait(self, now: float) -> None:
        self._waited.inc(max(0.0, now - self._marked))
        self._marked = now

    def _fields(self, now: float, *, event: str) -> dict[str, Any]:
        return {"dependency": self.dependency, "cause": self.cause, "event": event,
                "down_s": round(now - self._since, 1), "jobs_waited": self.jobs_waited}


class Dependencies:
    """The trackers of one process, on its registry: ``redis`` and ``rabbitmq``. Make one per
    process and pass it to each part (``outbox run`` shares one among the worker, the HTTP
    server and the bounce listener: one line per outage, not three)."""

    def __init__(self, registry: CollectorRegistry, **options: Any) -> None:
        metrics = DependencyMetrics(registry)
        self.redis = OutageTracker(REDIS, metrics, **options)
        self.rabbitmq = OutageTracker(RABBITMQ, metrics, **options)

    def __getitem__(self, dependency: str) -> OutageTracker:
        return {REDIS: self.redis, RABBITMQ: self.rabbitmq}[dependency]


def _cause(cause: BaseException | str) -> str:
    """A few words on why (``connection refused``, ``timed out``...)."""
    text = cause if isinstance(cause, str) else why(cause)
    return text[:1].lower() + text[1:].rstrip(".")  # "Connection closed by server."


class Watch:
    """Checks Redis (a PING) and the broker connection every ``period`` seconds, so an idle
    process's gauges and lines tell an outage too (a busy one sees it first in its calls).
    The broker connection also reports its loss and its return as they happen."""

    def __init__(self, dependencies: Dependencies, *, redis: Client | None = None,
                 connection: Callable[[], Any] | None = None,
                 period: float = WATCH_PERIOD) -> None:
        """``redis``: the client to ping; ``connection``: returns the robust AMQP connection
        (None before it is made and once it is closed on purpose)."""
        self._deps = dependencies
        self._redis = redis
        self._connection = connection or (lambda: None)
        self._period = period
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Check now and every ``period`` seconds until :meth:`stop`."""
        connection = self._connection()
        if connection is not None:
            connection.close_callbacks.add(self._broker_lost)
            connection.reconnect_callbacks.add(self._broker_back)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop checking (at once, even mid-check)."""
        if self._task is not None:
            # an event as well as the cancel: redis-py may swallow a cancellation that
            # arrives mid-call, and the loop would go on
            self._stopping.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._period)

    async def check(self) -> None:
        """One check of each dependency."""
        if self._redis is not None:
            await self._check_redis(self._redis)
        self._check_broker()

    async def _check_redis(self, redis: Client) -> None:
        try:
            async with asyncio.timeout(self._period):
                await redis.ping()
        except REDIS_UNREACHABLE as exc:
            self._deps.redis.failed(exc)
            return
        except Exception as exc:  # noqa: BLE001 (e.g. a refused login: not an outage)
            log.debug("redis check: %s", exc)
            return
        self._deps.redis.reachable()

    def _check_broker(self) -> None:
        connection = self._connection()
        if connection is None:
            return  # not connected yet, or closed on purpose
        if connection.connected.is_set():
            self._deps.rabbitmq.reachable()
        else:
            self._deps.rabbitmq.failed("connection lost; reconnecting")

    def _broker_lost(self, _connection: Any, exc: BaseException | None = None) -> None:
        if self._connection() is not None:  # not the process closing it
            self._deps.rabbitmq.failed(exc or "connection lost; reconnecting")

    def _broker_back(self, _connection: Any) -> None:
        self._deps.rabbitmq.reachable()
