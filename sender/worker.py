"""The worker: consumes the job queues and runs each delivery through the pipeline.

``start()``, ``stop()`` and ``close()`` are separate steps. ``stop()`` cancels the consumers
first (no new work), waits up to ``shutdown_grace`` seconds for the jobs in flight, then
cancels the rest; whatever was not settled (including prefetched messages never started)
goes back to its queue when the channels close. Concurrency is capped twice: the broker's
prefetch per queue and a semaphore around the work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Mapping

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from config import Settings
from sender import topology
from sender.bus import Bus, PublishFailed
from sender.channels.base import Channel
from sender.channels.smtp import SmtpChannel, SmtpPool
from sender.metrics import Metrics
from sender.pipeline import Pipeline, RetryPolicy, Stopping
from suppression.gate import Gate
from suppression.reputation import Policy
from suppression.store import AccountStore

log = logging.getLogger("outbox.worker")
ACCOUNTS_GAUGE_PERIOD = 30.0  # seconds between refreshes of outbox_accounts{state}


class Worker:
    """One worker process's consumer side; all connections are passed in."""

    def __init__(self, settings: Settings, *, bus: Bus, redis: Redis,
                 channels: Mapping[str, Channel], registry: CollectorRegistry) -> None:
        self.settings = settings
        self.bus = bus
        self.redis = redis
        self.channels = dict(channels)
        self.metrics = Metrics(registry)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._amqp_channels: list[AbstractChannel] = []
        self._stopping = False
        self._gauge_task: asyncio.Task[None] | None = None
        self.pipeline = Pipeline(
            bus=bus, gate=Gate(redis, idempotency_ttl=settings.idempotency_ttl,
                                policy=Policy.from_settings(settings)),
            channels=self.channels, metrics=self.metrics,
            retry=RetryPolicy(settings.retry_tiers, settings.retry_max_attempts,
                              settings.retry_max_age),
            max_job_bytes=settings.max_job_bytes, owner=self.worker_id,
            stopping=lambda: self._stopping,
        )

    @property
    def inflight(self) -> int:
        """Deliveries being processed now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Consume the queue of every configured channel."""
        for name in self.channels:
            channel = await self.bus.channel(self.settings.prefetch)
            self._amqp_channels.append(channel)
            # declare_queue (passive), not get_queue: only declared queues are restored,
            # with their consumers, after aio-pika reconnects.
            queue = await channel.declare_queue(topology.JOB_QUEUES[name], passive=True)
            tag = await queue.consume(self._on_message, no_ack=False)
            self._consumers.append((queue, tag))
            log.info("consuming %s", queue.name)
        self._gauge_task = asyncio.create_task(self._refresh_accounts_gauge())

    async def _refresh_accounts_gauge(self) -> None:
        """Keep ``outbox_accounts{state}`` current (every worker reports the same totals)."""
        store = AccountStore(self.redis, self.pipeline.gate.policy)
        while True:
            try:
                for state, count in (await store.count_by_state()).items():
                    self.metrics.accounts.labels(state).set(count)
            except Exception as exc:  # Redis down: the pipeline reports it; try again later
                log.debug("accounts gauge: %s", exc)
            await asyncio.sleep(ACCOUNTS_GAUGE_PERIOD)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            return  # left unsettled: returned to the queue when the channel closes
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            async with self._semaphore:
                if not self._stopping:
                    await self.pipeline.handle(message)
        except (Stopping, asyncio.CancelledError):
            pass
        except PublishFailed as exc:
            log.warning("publish failed, job returned to its queue: %s", exc)
            await _nack(message)
        except Exception:
            log.exception("unexpected error, job returned to its queue")
            await _nack(message)
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def stop(self, grace: float | None = None) -> None:
        """Stop consuming, wait for in-flight jobs up to ``grace`` seconds, cancel the rest."""
        self._stopping = True
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            await asyncio.gather(self._gauge_task, return_exceptions=True)
            self._gauge_task = None
        for queue, tag in self._consumers:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # the channel may already be gone
                log.debug("cancel %s: %s", tag, exc)
        self._consumers.clear()
        pending = set(self._tasks)
        if pending:
            grace = self.settings.shutdown_grace if grace is None else grace
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                log.warning("cancelled %d jobs still running after %.1f s", len(still), grace)
                await asyncio.wait(still, timeout=5)

    async def close(self) -> None:
        """Close the consuming channels; unsettled messages return to their queues."""
        for channel in self._amqp_channels:
            try:
                await channel.close()
            except Exception as exc:
                log.debug("closing channel: %s", exc)
        self._amqp_channels.clear()


async def _nack(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as exc:  # the channel died: the broker requeues it anyway
        log.debug("nack failed: %s", exc)


def build_channels(settings: Settings) -> dict[str, Channel]:
    """The delivery channels the settings configure (email always; SMS with Twilio)."""
    pool = SmtpPool(settings.smtp, size=settings.smtp_pool_size, timeout=settings.smtp_timeout,
                    max_messages=settings.smtp_max_messages_per_connection,
                    idle_timeout=settings.smtp_idle_timeout)
    channels: dict[str, Channel] = {
        "email": SmtpChannel(pool, message_id_domain=settings.message_id_domain)}
    return channels
