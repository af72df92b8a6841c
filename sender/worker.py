"""The worker: consumes the job queues and runs each delivery through the pipeline.

``start()``, ``stop()`` and ``close()`` are separate steps. ``stop()`` stops the delivery
channels first (a send not yet started, e.g. waiting for an SMTP connection, gives up and is
left unsettled), cancels the consumers (no new work), waits up to ``shutdown_grace`` seconds
for the sends in flight, then cancels the rest; whatever was not settled (including
prefetched messages never started) goes back to its queue when the channels close.
Concurrency is capped twice: the broker's prefetch per queue and a semaphore around the work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from config import Settings
from sender import topology
from sender.bus import BROKER_ERRORS, Bus
from sender.channels.base import Channel
from sender.channels.mx import MxChecker
from sender.channels.smtp import DomainLimiter, EmailOptions, SmtpChannel, SmtpPool
from sender.channels.twilio import TwilioChannel, TwilioConfig
from sender.events import EventApplier
from sender.metrics import Metrics
from sender.pipeline import Pipeline, RetryPolicy, Stopping, nack, protected
from suppression.gate import Gate
from suppression.reputation import Policy
from suppression.store import AccountStore, SuppressionStore

log = logging.getLogger("outbox.worker")
ACCOUNTS_GAUGE_PERIOD = 30.0  # seconds between refreshes of outbox_accounts{state}
#: seconds for one broker call while stopping: a robust channel waits for the broker forever,
#: and a SIGTERM during an outage must still end the process (the broker requeues anyway)
BROKER_CALL_TIMEOUT = 5.0


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
        self._gauge_channel: AbstractChannel | None = None
        self.pipeline = Pipeline(
            bus=bus, gate=Gate(redis, idempotency_ttl=settings.idempotency_ttl,
                                policy=Policy.from_settings(settings),
                                sms_region=settings.sms_region),
            channels=self.channels, metrics=self.metrics,
            retry=RetryPolicy(settings.retry_tiers, settings.retry_max_attempts,
                              settings.retry_max_age),
            max_job_bytes=settings.max_job_bytes, owner=self.worker_id,
            stopping=lambda: self._stopping,
        )
        self.events = EventApplier(bus=bus, gate=self.pipeline.gate,
                                   store=SuppressionStore(redis), metrics=self.metrics)

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
            tag = await queue.consume(self._job_consumer(name), no_ack=False)
            self._consumers.append((queue, tag))
            log.info("consuming %s", queue.name)
        await self._consume_events()
        self._gauge_task = asyncio.create_task(self._refresh_accounts_gauge())

    async def _consume_events(self) -> None:
        """Provider events from the webhook server and the bounce listener."""
        channel = await self.bus.channel(self.settings.prefetch)
        self._amqp_channels.append(channel)
        queue = await channel.declare_queue(topology.EVENTS_QUEUE, passive=True)
        tag = await queue.consume(self._on_event, no_ack=False)
        self._consumers.append((queue, tag))

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        # held (not acked) and retried while Redis is down, like a job
        await self._guarded(message, lambda m: self.pipeline.redis_call(
            lambda: self.events.handle(m)), "events")

    async def _refresh_accounts_gauge(self) -> None:
        """Keep ``outbox_accounts{state}`` and ``outbox_queue_depth{queue}`` current (every
        worker reports the same totals; Prometheus rules take the max)."""
        store = AccountStore(self.redis, self.pipeline.gate.policy)
        while True:
            try:
                async with asyncio.timeout(ACCOUNTS_GAUGE_PERIOD):
                    for state, count in (await store.count_by_state()).items():
                        self.metrics.accounts.labels(state).set(count)
                    await self._refresh_queue_depths()
            except Exception as exc:  # an outage: the pipeline reports it; try again later
                log.debug("gauges: %s", exc)
            await asyncio.sleep(ACCOUNTS_GAUGE_PERIOD)

    async def _refresh_queue_depths(self) -> None:
        # A channel of its own (a failed passive declare closes its channel), used through
        # the raw aiormq channel so the robust layer does not collect a queue per call.
        if self._gauge_channel is None or self._gauge_channel.is_closed:
            self._gauge_channel = await self.bus.channel(1)
        raw = await self._gauge_channel.get_underlay_channel()
        _, queues = topology.describe(self.settings.retry_tiers,
                                      self.settings.status_queue_max_length)
        for q in queues:
            ok = await raw.queue_declare(q.name, passive=True)
            self.metrics.queue_depth.labels(q.name).set(ok.message_count or 0)

    def _job_consumer(self, channel: str
                      ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        """The consumer of one channel's queue: its jobs must be of that channel."""
        async def on_message(message: AbstractIncomingMessage) -> None:
            await self._guarded(message, lambda m: self.pipeline.handle(m, channel), channel)
        return on_message

    async def _guarded(self, message: AbstractIncomingMessage,
                       handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
                       source: str) -> None:
        """Run one delivery under the semaphore; whatever goes wrong, it is not lost and it
        does not loop (``Pipeline.unexpected``)."""
        if self._stopping:
            return  # left unsettled: returned to the queue when the channel closes
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            async with self._semaphore:
                if not self._stopping:
                    await handle(message)
        except (Stopping, asyncio.CancelledError):
            pass
        except BROKER_ERRORS as exc:  # not the job's fault: never counted towards poison
            log.warning("broker: %s: %s; the job goes back to its queue",
                        type(exc).__name__, exc)
            await nack(message)
        except Exception as exc:
            await self._unexpected(message, exc, source)
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _unexpected(self, message: AbstractIncomingMessage, exc: Exception,
                          source: str) -> None:
        try:
            await protected(self.pipeline.unexpected(message, exc, source,
                                                     announce=source != "events"))
        except Exception as again:  # could not dead-letter: the broker keeps it
            log.warning("could not dead-letter after %s (%s), returned to its queue",
                        type(exc).__name__, again)
            await nack(message)

    async def stop(self, grace: float | None = None) -> None:
        """Stop the sends not yet started and consuming, wait for in-flight sends up to
        ``grace`` seconds, cancel the rest."""
        self._stopping = True
        for sender in self.channels.values():
            sender.stop()
        if self._gauge_task is not None:
            self._gauge_task.cancel()
            await asyncio.gather(self._gauge_task, return_exceptions=True)
            self._gauge_task = None
        for queue, tag in self._consumers:
            try:
                await asyncio.wait_for(queue.cancel(tag), BROKER_CALL_TIMEOUT)
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
        if self._gauge_channel is not None:
            self._amqp_channels.append(self._gauge_channel)
            self._gauge_channel = None
        for channel in self._amqp_channels:
            try:
                await asyncio.wait_for(channel.close(), BROKER_CALL_TIMEOUT)
            except Exception as exc:
                log.debug("closing channel: %s", exc)
        self._amqp_channels.clear()


def build_channels(settings: Settings) -> dict[str, Channel]:
    """The delivery channels the settings configure (email always; SMS with Twilio)."""
    pool = SmtpPool(settings.smtp, size=settings.smtp_pool_size, timeout=settings.smtp_timeout,
                    max_messages=settings.smtp_max_messages_per_connection,
                    idle_timeout=settings.smtp_idle_timeout)
    options = EmailOptions(
        message_id_domain=settings.message_id_domain, public_url=settings.public_url,
        secret_key=settings.signing_key,
        bounce_domain=settings.bounce_domain, relay=settings.smtp_relay,
        mx=MxChecker() if settings.email_check_mx else None)
    domains = DomainLimiter(settings.smtp_domain_concurrency,
                            settings.smtp_domain_concurrency_default)
    channels: dict[str, Channel] = {
        "email": SmtpChannel(pool, options=options, domains=domains)}
    if settings.twilio_configured:
        channels["sms"] = TwilioChannel(TwilioConfig(
            account_sid=settings.twilio_account_sid or "",
            auth_token=settings.twilio_auth_token.get_secret_value()
            if settings.twilio_auth_token else "",
            api_base=settings.twilio_api_base, from_=settings.twilio_from,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            status_callback=f"{settings.public_url}/webhooks/twilio/status",
            region=settings.sms_region, max_segments=settings.sms_max_segments,
            rate_per_sender=settings.twilio_rate_per_sender))
    else:
        log.warning("Twilio is not configured: SMS jobs wait in outbox.sms")
    return channels
