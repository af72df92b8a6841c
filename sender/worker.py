"""The worker: consumes the job queues and runs each delivery through the pipeline.

``start()``, ``stop()`` and ``close()`` are separate steps. ``stop()`` stops the delivery
channels first (a send not yet started, e.g. waiting for an SMTP connection, gives up and is
left unsettled), cancels the consumers (no new work), waits up to ``shutdown_grace`` seconds
for the sends in flight, then cancels the rest; whatever was not settled (including
prefetched messages never started) goes back to its queue when the channels close.
Concurrency is capped twice: the broker's prefetch per queue (each lane of each channel on an
AMQP channel of its own) and the slots around the work (:class:`sender.lanes.LaneSlots`:
``OUTBOX_CONCURRENCY`` shared by the lanes, the bulk lane held to ``OUTBOX_BULK_SHARE`` of them
while priority jobs are pending).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from config import Settings
from sender import topology
from sender.bus import BROKER_ERRORS, Bus, QueueFull
from sender.channels import registry
from sender.channels.base import Channel
from sender.delivery import Delivery, consume_raw
from sender.gauges import Gauges
from sender.lanes import EVENTS, LaneSlots
from sender.metrics import Metrics
from sender.outages import Watch
from sender.pipeline import Pipeline, Stopping, protected
from sender.provider_event_applier import EventApplier
from sender.schedule import Mover
from sender.settle import Settle
from suppression.roundtrip import Client

log = logging.getLogger("outbox.worker")
#: seconds for one broker call while stopping: a robust channel waits for the broker forever,
#: and a SIGTERM during an outage must still end the process (the broker requeues anyway)
BROKER_CALL_TIMEOUT = 5.0
#: a delivery whose handling a full queue refused waits this long before it is returned,
#: doubled at each refusal of the same job, up to QUEUE_FULL_MAX_WAIT (seconds)
QUEUE_FULL_FIRST_WAIT = 1.0
QUEUE_FULL_MAX_WAIT = 60.0
#: refusal counts kept (the most recent jobs)
REFUSALS_KEPT = 10_000
#: a consumer's handling of one delivery, and its path for an exception nobody expected
M = TypeVar("M", bound=Delivery)  # RawDelivery for jobs, aio-pika's for provider events
Handle = Callable[[M], Awaitable[None]]
Unexpected = Callable[[M, Exception], Awaitable[None]]


class Worker:
    """One worker process's consumer side: consumes, stops and closes. Everything it runs is
    built and passed in by :mod:`sender.service` (the pipeline and the event applier share
    one gate, one Redis-call guard and ``settle``, which the worker's guard settles through
    too; ``channels`` is the pipeline's own mapping)."""

    def __init__(self, settings: Settings, *, bus: Bus, redis: Client, pipeline: Pipeline,
                 events: EventApplier, settle: Settle, channels: dict[str, Channel],
                 metrics: Metrics, stop: asyncio.Event, worker_id: str, gauges: Gauges,
                 watch: Watch | None = None, mover: Mover | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.redis = redis  # the connections it runs on (tests and support tools read them)
        self.pipeline = pipeline
        self.events = events
        self.settle = settle
        self.channels = channels
        self.metrics = metrics
        self.worker_id = worker_id
        self._stop = stop
        self.gauges = gauges
        self.watch = watch  # Redis and the broker checked while idle (sender.outages)
        self.mover = mover  # releases scheduled jobs when due (sender.schedule)
        self.slots = LaneSlots(settings.concurrency, settings.bulk_share)
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusals: dict[str, int] = {}  # job body -> refusals by a full queue, oldest first
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._amqp_channels: list[AbstractChannel] = []

    @property
    def inflight(self) -> int:
        """Deliveries being processed now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Consume both lanes of every configured channel, each on its own AMQP channel (the
        prefetch is per lane: a full bulk lane leaves the priority lane its own)."""
        for name in self.channels:
            for lane, _, queue_name in registry.get(name).lanes():
                channel = await self.bus.channel(self.settings.prefetch)
                self._amqp_channels.append(channel)
                # declare_queue (passive), not get_queue: only declared queues are restored,
                # with their consumers, after aio-pika reconnects.
                queue = await channel.declare_queue(queue_name, passive=True)
                # on aiormq's delivery, without aio-pika's message and task per job
                tag = await consume_raw(queue, self._job_consumer(name, lane))
                self._consumers.append((queue, tag))
                log.info("consuming %s", queue.name)
        await self._consume_events()
        self.gauges.start()
        if self.watch is not None:
            self.watch.start()
        if self.mover is not None:
            self.mover.start()

    async def _consume_events(self) -> None:
        """Provider events from the webhook server and the bounce listener."""
        channel = await self.bus.channel(self.settings.prefetch)
        self._amqp_channels.append(channel)
        queue = await channel.declare_queue(topology.EVENTS_QUEUE, passive=True)
        tag = await queue.consume(self._on_event, no_ack=False)
        self._consumers.append((queue, tag))

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        await self._guarded(message, self.events.handle,
                            lambda m, exc: self.events.unexpected(m, exc), EVENTS)

    def _job_consumer(self, channel: str, lane: str) -> Callable[[Delivery], Awaitable[None]]:
        """The consumer of one lane of one channel: its jobs must be of that channel (of
        either lane: a marketing job published on the plain key waits in the priority one)."""
        async def on_message(message: Delivery) -> None:
            await self._guarded(message, lambda m: self.pipeline.handle(m, channel),
                                lambda m, exc: self.pipeline.unexpected(m, exc, channel), lane)
        return on_message

    async def _guarded(self, message: M, handle: Handle[M],
                       unexpected: Unexpected[M], lane: str) -> None:
        """Run one delivery in a slot of its lane; whatever goes wrong, it is not lost and it
        does not loop: an exception nobody expected goes to ``unexpected``, its consumer's own
        path (``Pipeline.unexpected``, ``EventApplier.unexpected``)."""
        if self._stop.is_set():
            return  # left unsettled: returned to the queue when the channel closes
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if await self.slots.acquire(lane):  # False: stopping, left unsettled
                try:
                    if not self._stop.is_set():
                        await handle(message)
                finally:
                    self.slots.release(lane)
        except (Stopping, asyncio.CancelledError):
            pass
        except QueueFull as exc:  # a queue it must publish to is at its bound
            await self._after_refusal(message, exc)
        except BROKER_ERRORS as exc:  # not the job's fault: never counted towards poison
            log.warning("broker: %s: %s; the job goes back to its queue",
                        type(exc).__name__, exc)
            await self.settle.nack(message)
        except Exception as exc:
            await self._unexpected(message, exc, unexpected)
        finally:
            self._tasks.discard(task)

    async def _after_refusal(self, message: Delivery, exc: QueueFull) -> None:
        """A bounded queue refused what handling this delivery had to publish (a dead letter,
        a retry): keep the delivery (its slot is free again) for a wait that doubles at each
        refusal of the same body, up to :data:`QUEUE_FULL_MAX_WAIT`, then return it. A quorum
        queue counts every return towards its delivery limit, so returning it at once would
        spend the limit in milliseconds and leave the broker to dead-letter the job without
        Outbox's reason; spaced out, the ~20 returns last ~15 minutes, while
        OutboxQueueRefusing pages."""
        key = message.message_id or hashlib.blake2b(message.body, digest_size=16).hexdigest()
        refusals = self._refusals.pop(key, 0) + 1
        self._refusals[key] = refusals
        while len(self._refusals) > REFUSALS_KEPT:
            del self._refusals[next(iter(self._refusals))]
        wait = min(QUEUE_FULL_MAX_WAIT, QUEUE_FULL_FIRST_WAIT * 2 ** (refusals - 1))
        log.warning("broker: %s; the job goes back to its queue in %.1f s (refusal %d of "
                    "this job)", exc, wait, refusals)
        try:
            await asyncio.wait_for(self._stop.wait(), wait)
            return  # stopping: left unsettled, returned when the channel closes
        except TimeoutError:
            pass
        await self.settle.nack(message)

    async def _unexpected(self, message: M, exc: Exception,
                          unexpected: Unexpected[M]) -> None:
        try:
            await protected(unexpected(message, exc))
        except Exception as again:  # could not dead-letter: the broker keeps it
            log.warning("could not dead-letter after %s (%s), returned to its queue",
                        type(exc).__name__, again)
            await self.settle.nack(message)

    async def stop(self, grace: float | None = None) -> None:
        """Stop the sends not yet started and consuming, wait for in-flight sends up to
        ``grace`` seconds, cancel the rest."""
        self._stop.set()
        self.slots.close()  # deliveries waiting for a slot end now, unsettled
        if self.mover is not None:
            await self.mover.stop()
        for sender in self.channels.values():
            sender.stop()
        await self.gauges.stop()
        if self.watch is not None:
            await self.watch.stop()
        # all at once: during an outage each call waits out its timeout (a lane is a consumer)
        await asyncio.gather(*(self._cancel(queue, tag) for queue, tag in self._consumers))
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

    @staticmethod
    async def _cancel(queue: AbstractQueue, tag: str) -> None:
        try:
            await asyncio.wait_for(queue.cancel(tag), BROKER_CALL_TIMEOUT)
        except Exception as exc:  # the channel may already be gone
            log.debug("cancel %s: %s", tag, exc)

    async def close(self) -> None:
        """Close the consuming channels (all at once, each call bounded); unsettled messages
        return to their queues."""
        await self.gauges.close()
        await asyncio.gather(*(self._close(channel) for channel in self._amqp_channels))
        self._amqp_channels.clear()

    @staticmethod
    async def _close(channel: AbstractChannel) -> None:
        try:
            await asyncio.wait_for(channel.close(), BROKER_CALL_TIMEOUT)
        except Exception as exc:
            log.debug("closing channel: %s", exc)

