"""Start-up and shutdown of one worker process: connections in, worker run, connections out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from config import Settings
from sender.bus import Bus
from sender.connect import ping_redis
from sender.worker import Worker, build_channels

log = logging.getLogger("outbox.service")


def make_redis(settings: Settings, *, socket_timeout: float | None = 5.0) -> Redis:
    """The Redis pool (hiredis parser when installed); timeouts so an outage is noticed.

    The worker passes ``socket_timeout=None`` and bounds each whole call itself
    (``Pipeline.redis_call``): redis-py implements a socket timeout with ``wait_for``, a new
    task for every write, about 20 µs twice a job."""
    return Redis.from_url(settings.redis_url.get_secret_value(),
                          socket_timeout=socket_timeout, socket_connect_timeout=5,
                          health_check_interval=15,
                          max_connections=max(64, settings.concurrency * 2))


@asynccontextmanager
async def started_worker(settings: Settings,
                         registry: CollectorRegistry | None = None) -> AsyncIterator[Worker]:
    """A worker with its own Redis pool, bus and channels, consuming; on exit it stops
    (draining within the grace) and everything is closed."""
    redis = make_redis(settings, socket_timeout=None)
    try:  # fail fast, in one line, on a bad URL or a Redis that is not there
        await ping_redis(redis, settings.redis_url.get_secret_value())
    except BaseException:
        await redis.aclose()
        raise
    bus = Bus.from_settings(settings)
    channels: dict[str, Any] = {}
    worker: Worker | None = None
    try:
        await bus.connect(declare=True)
        channels = build_channels(settings)
        worker = Worker(settings, bus=bus, redis=redis, channels=channels,
                        registry=registry or CollectorRegistry())
        await worker.start()
        log.info("worker %s started (%s)", worker.worker_id, ", ".join(channels))
        yield worker
    finally:
        if worker is not None:
            log.info("stopping: %d jobs in flight", worker.inflight)
            await worker.stop()
            await worker.close()
        for channel in channels.values():
            await channel.close()
        await bus.close()
        await redis.aclose()
        log.info("worker stopped")


async def run_worker(settings: Settings, stop: asyncio.Event,
                     registry: CollectorRegistry | None = None) -> None:
    """Run a worker until ``stop`` is set, then drain and close everything."""
    async with started_worker(settings, registry):
        await stop.wait()
