"""The message bus: one robust AMQP connection, confirmed publishing, the topology.

Every publish that matters waits for the broker's confirm and is ``mandatory``: an unroutable
or refused message raises :class:`PublishFailed` to the caller, never a silent drop.

Exceptions::

    PublishFailed          the broker did not take the message (nack, unroutable, channel lost)
      QueueFull            a bounded queue is full (x-overflow reject-publish: a nack)
    ServiceUnreachable     connect: the broker cannot be reached (sender.connect; one line)
    ServiceRefused         connect: the broker refused the login or vhost (sender.connect)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError
from aiormq import Channel as AiormqChannel
from aiormq.abc import ChannelFrame
from aiormq.exceptions import AMQPError as AiormqError
from aiormq.exceptions import ChannelInvalidStateError, DeliveryError
from pamqp.commands import Basic

from config import Settings
from sender import topology
from sender.models import without_attachment_content
from sender.nodes import connect_amqp
from suppression.json_limits import compact

BasicProperties = Basic.Properties

log = logging.getLogger("outbox.bus")

#: seconds to wait for the broker's confirm of one publish (then PublishFailed)
CONFIRM_TIMEOUT = 30.0
ATTEMPT_HEADER = "x-outbox-attempt"
FIRST_SEEN_HEADER = "x-outbox-first-seen"  # epoch seconds of the first enqueue
REASON_HEADER = "x-outbox-reason"
#: on a dead letter: the routing key the job arrived with (its lane: ``outbox dead replay``)
ROUTE_HEADER = "x-outbox-routing-key"
#: on a rejected job's dead letter: ``<account>/<job id>`` its timeline is kept under
RECORD_HEADER = "x-outbox-record"
DEAD_ID_PREFIX = "dead-"  # message id of a dead letter Outbox publishes (unique per copy)


class PublishFailed(RuntimeError):
    """The broker did not confirm the message; the caller still owns it."""


class QueueFull(PublishFailed):
    """The broker refused the message (a nack): its queue is at its bound
    (:data:`sender.topology.BOUNDS`). ``queue`` names it."""

    def __init__(self, queue: str, detail: str) -> None:
        super().__init__(f"{queue} is full (nack): {detail}")
        self.queue = queue


#: What an ack, nack or publish raises when the broker connection is gone: the delivery is
#: the broker's again (it requeues it), nothing about the job itself.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    PublishFailed, AMQPError, AiormqError, ChannelInvalidStateError, ConnectionError)


#: a status event waiting for its turn's write: routing key, body, message id, its outcome
_Event = tuple[str, bytes, str | None, "asyncio.Future[None]"]


_FRAME = struct.Struct(">BHI")  # type, channel, payload size (AMQP 0-9-1 section 4.2.3)
_FRAME_END = b"\xce"
#: Basic.Publish (class 60, method 40, reserved short 0)
_PUBLISH = b"\x00\x3c\x00\x28\x00\x00"
#: a content header's class (60), weight (0), body size, property flags: content-type,
#: delivery-mode, message-id and timestamp set
_HEADER = struct.Struct(">HHQH")
_FLAGS = 0x8000 | 0x1000 | 0x0080 | 0x0040
_TIMESTAMP = struct.Struct(">Q")


def _shortstr(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"over 255 bytes for an AMQP short string: {value[:40]!r}...")
    return bytes((len(data),)) + data


def publish_frames(channel_number: int, exchange: str, routing_key: str, body: bytes,
                   message_id: str, timestamp: int, max_content: int) -> bytes:
    """The frames of one persistent, mandatory JSON publish, as pamqp marshals
    ``Basic.Publish``, its ``ContentHeader`` (content type ``application/json``, delivery
    mode 2, ``message_id``, ``timestamp`` in seconds) and the body in frames of at most
    ``max_content`` bytes (tests/unit/test_publish_frames.py compares them byte for byte):
    ~1.6 µs against pamqp's ~16 a status event."""
    method = b"".join((_PUBLISH, _shortstr(exchange), _shortstr(routing_key), b"\x01"))
    header = b"".join((_HEADER.pack(60, 0, len(body), _FLAGS), b"\x10application/json\x02",
                       _shortstr(message_id), _TIMESTAMP.pack(timestamp)))
    out = [_FRAME.pack(1, channel_number, len(method)), method, _FRAME_END,
           _FRAME.pack(2, channel_number, len(header)), header, _FRAME_END]
    if max_content <= 0:  # frame_max 0: no limit was negotiated, the body in one frame
        max_content = max(len(body), 1)
    for at in range(0, len(body), max_content):
        chunk = body[at:at + max_content]
        out += (_FRAME.pack(3, channel_number, len(chunk)), chunk, _FRAME_END)
    return b"".join(out)


async def _publish_many(channel: AiormqChannel, exchange: str, batch: list[_Event]
                        ) -> list[asyncio.Future[Any]]:
    """Publish ``batch`` (persistent, mandatory, JSON) on ``channel``, a confirming aiormq
    channel, in ONE write, and return each message's confirmation future. What
    ``Channel.basic_publish`` does per message (tags, confirmations, message ids for
    returns), done for all of them under the channel's lock, the frames written by
    :func:`publish_frames`; on a failure before the write the tags are given back, as
    aiormq does."""
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel!r} closed")
    timestamp = int(time.time())
    async with channel.lock:
        first = channel.delivery_tag
        frames: list[bytes] = []
        confirms: list[asyncio.Future[Any]] = []
        ids: list[tuple[str, int]] = []
        written = False
        drain: asyncio.Future[Any] | None = None
        try:
            for key, body, message_id in ((k, b, m) for k, b, m, _ in batch):
                mid = message_id or uuid.uuid4().hex  # returns are matched by message id
                frames.append(publish_frames(channel.number, exchange, key, body, mid,
                                             timestamp, channel.max_content_size))
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirm = channel.create_future()
                channel.confirmations[tag] = confirm
                channel.message_id_delivery_tag[mid] = tag
                ids.append((mid, tag))
                confirm.add_done_callback(partial(_forget, channel, mid, tag))
                confirms.append(confirm)
            drain = channel.create_future()
            await channel.write_queue.put(ChannelFrame(
                payload=b"".join(frames), should_close=False, drain_future=drain))
            written = True
            await drain
        except BaseException:
            if not written:  # the broker has seen none of them
                channel.delivery_tag = first
                for (mid, tag), confirm in zip(ids, confirms, strict=True):
                    channel.confirmations.pop(tag, None)
                    if channel.message_id_delivery_tag.get(mid) == tag:
                        channel.message_id_delivery_tag.pop(mid)
                    confirm.cancel()
            if drain is not None:
                drain.cancel()
            raise
    return confirms


def _forget(channel: AiormqChannel, message_id: str, tag: int, _: asyncio.Future[Any]) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        channel.message_id_delivery_tag.pop(message_id)


class Bus:
    """A robust connection with one confirmed publishing channel; with several nodes in the
    URL (comma-separated: a cluster) it is to the first that answers and moves on to the next
    when that one dies (:class:`sender.connect.ClusterConnection`).

    ``connect(fail_fast=True)`` fails loudly on a bad URL or refused login; afterwards the
    connection reconnects forever and consumers are restored by aio-pika.
    """

    def __init__(self, url: str, *, retry_tiers: tuple[int, ...],
                 status_max_length: int = topology.DEFAULT_STATUS_QUEUE_MAX_LENGTH,
                 setting: str | None = None) -> None:
        """``setting``: where ``url`` came from, named by the error when it is unreachable."""
        self._url = url
        self.setting = setting
        self.retry_tiers = retry_tiers
        self.status_max_length = status_max_length
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._events: list[_Event] = []  # status events of this loop turn (publish_event)
        self._events_scheduled = False
        self._publishing: set[asyncio.Task[None]] = set()  # referenced until done

    @classmethod
    def from_settings(cls, settings: Settings) -> Bus:
        """The bus every Outbox process uses: the settings' broker, tiers and queue bound."""
        return cls(settings.amqp_url.get_secret_value(), retry_tiers=settings.retry_tiers,
                   status_max_length=settings.status_queue_max_length, setting="OUTBOX_AMQP_URL")

    async def connect(self, *, declare: bool = True) -> None:
        """Open the connection and publishing channel; declare the topology. A broker that
        cannot be reached raises :class:`sender.connect.ServiceUnreachable`, one that refuses
        the login :class:`sender.connect.ServiceRefused` (one line each, password masked)."""
        self.connection = await connect_amqp(self._url, setting=self.setting)
        self._channel = await self.connection.channel(publisher_confirms=True,
                                                      on_return_raises=True)
        if declare:
            await self._declare()

    async def _declare(self) -> None:
        """The topology, on a channel of its own closed afterwards: aio-pika declares again,
        at each reconnect, what a channel it keeps declared, and on a cluster a classic queue
        (the retry tiers) whose node is down refuses that (NOT_FOUND), which would fail every
        reconnect while that node is away."""
        assert self.connection is not None
        channel = await self.connection.channel()
        try:
            await topology.declare(channel, self.retry_tiers, self.status_max_length)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def channel(self, prefetch: int) -> AbstractChannel:
        """A new channel for consuming, with its prefetch."""
        assert self.connection is not None, "connect() first"
        channel = await self.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        content_type: str = "application/json",
        expiration: float | None = None,
    ) -> None:
        """Publish one persistent message and wait for the broker's confirm.

        Straight on the aiormq channel under aio-pika's robust one (after a reconnect it is
        the new one): building an ``aio_pika.Message`` per publish cost about 90 µs more."""
        assert self._channel is not None, "connect() first"
        properties = BasicProperties(
            content_type=content_type, delivery_mode=2, headers=headers or None,
            message_id=message_id, timestamp=datetime.now(UTC).replace(microsecond=0),
            expiration=str(int(expiration * 1000)) if expiration is not None else None)
        try:
            channel = await self._channel.get_underlay_channel()
            # a confirm that never comes on a live channel must not hold a job or a webhook
            # forever: PublishFailed, and the caller's usual path (nack, 503) takes over
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await channel.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                            properties=properties, mandatory=True)
        except DeliveryError as exc:
            if not isinstance(exc.frame, Basic.Nack):
                raise PublishFailed(f"{exchange or '(default)'} {routing_key}: "
                                    f"{type(exc).__name__}: {exc}") from exc
            raise QueueFull(topology.queue_for(exchange, routing_key, headers),
                            f"{exchange or '(default)'} {routing_key}") from exc
        except (TimeoutError, AMQPError, AiormqError, ConnectionError, RuntimeError) as exc:
            raise PublishFailed(
                f"{exchange or '(default)'} {routing_key}: {type(exc).__name__}: {exc}"
            ) from exc

    async def publish_job(self, job: dict[str, Any] | bytes, channel: str | None = None,
                          *, message_id: str | None = None) -> None:
        """Publish a job to ``outbox.jobs`` (routing key = its channel)."""
        body = job if isinstance(job, bytes) else json.dumps(job, ensure_ascii=False).encode()
        if channel is None:
            channel = job["channel"] if isinstance(job, dict) else json.loads(body)["channel"]
        headers = {FIRST_SEEN_HEADER: int(time.time())}
        await self.publish(topology.JOBS_EXCHANGE, channel, body, headers=headers,
                           message_id=message_id)

    async def publish_event(self, event: dict[str, Any]) -> None:
        """Publish one status event on ``outbox.status`` as ``<channel>.<status>`` and wait
        for its confirm, as :meth:`publish` does. The events asked for in one turn of the
        event loop leave together (:meth:`_flush_events`): one write of all their frames,
        their confirms awaited together; each caller gets its own event's outcome.

        Always valid JSON: NaN/Infinity raise ValueError here (jobs holding them are refused
        at validation, so this is a bug, never a CRM's parse error)."""
        body = compact(event)
        key = f"{event.get('channel') or 'unknown'}.{event['status']}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._events.append((key, body, event.get("id"), future))
        if not self._events_scheduled:
            self._events_scheduled = True
            loop.call_soon(self._flush_events)
        await future

    def _flush_events(self) -> None:
        self._events_scheduled = False
        batch, self._events = self._events, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._publish_events(batch))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_events(self, batch: list[_Event]) -> None:
        """One write of the batch's publishes on the raw aiormq channel, then every confirm;
        a failure of the write fails the batch, a nack or a return only its own event."""
        exchange = topology.STATUS_EXCHANGE
        try:
            assert self._channel is not None, "connect() first"
            channel = cast(AiormqChannel, await self._channel.get_underlay_channel())
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                confirms = await _publish_many(channel, exchange, batch)
                outcomes = await asyncio.gather(*confirms, return_exceptions=True)
        except BaseException as exc:
            failed = PublishFailed(f"{exchange} ({len(batch)} events): "
                                   f"{type(exc).__name__}: {exc}")
            for *_, future in batch:
                if not future.done():
                    future.set_exception(failed)
            if not isinstance(exc, Exception):
                raise
            return
        for (key, *_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, DeliveryError) and isinstance(outcome.frame, Basic.Nack):
                future.set_exception(QueueFull(topology.queue_for(exchange, key, None),
                                               f"{exchange} {key}"))
            elif isinstance(outcome, BaseException):
                future.set_exception(PublishFailed(
                    f"{exchange} {key}: {type(outcome).__name__}: {outcome}"))
            else:
                future.set_result(None)

    async def publish_dead(self, body: bytes, reason: str, routing_key: str,
                           headers: dict[str, Any] | None = None) -> None:
        """Put a message on ``outbox.dead`` with the reason it could not be processed, under a
        message id of its own (``dead-<uuid>``: ``outbox dead show|replay|purge`` name it).
        An email job's attachments keep their metadata, not their content
        (:func:`sender.models.without_attachment_content`)."""
        await self.publish(topology.DEAD_EXCHANGE, routing_key, without_attachment_content(body),
                           headers={**(headers or {}), REASON_HEADER: reason[:1000]},
                           message_id=f"{DEAD_ID_PREFIX}{uuid.uuid4().hex}")

    async def publish_retry(self, body: bytes, routing_key: str, tier: int,
                            headers: dict[str, Any], *, expiration: float | None = None) -> None:
        """Park a job in the delay queue of ``tier`` seconds; it returns to outbox.jobs."""
        await self.publish(topology.RETRY_EXCHANGE, routing_key, body,
                           headers={**headers, topology.TIER_HEADER: str(tier)},
                           expiration=expiration)

    async def publish_to_queue(self, queue: str, body: bytes,
                               headers: dict[str, Any] | None = None) -> None:
        """Publish straight to a queue through the default exchange (``outbox.events``)."""
        await self.publish("", queue, body, headers=headers)

    async def close(self) -> None:
        """Close the connection (unsettled deliveries return to their queues); bounded, so a
        broker outage cannot hold a stopping process."""
        if self.connection is not None:
            connection, self.connection = self.connection, None
            try:
                await asyncio.wait_for(connection.close(), 10)
            except TimeoutError:
                log.warning("the broker did not answer the close; leaving the connection")
