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
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError
from aiormq.exceptions import AMQPError as AiormqError
from aiormq.exceptions import ChannelInvalidStateError, DeliveryError
from pamqp.commands import Basic

from config import Settings
from sender import topology
from sender.models import without_attachment_content
from sender.nodes import connect_amqp

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
        """Publish one status event on ``outbox.status`` as ``<channel>.<status>``.

        Always valid JSON: NaN/Infinity raise ValueError here (jobs holding them are refused
        at validation, so this is a bug, never a CRM's parse error)."""
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode()
        key = f"{event.get('channel') or 'unknown'}.{event['status']}"
        await self.publish(topology.STATUS_EXCHANGE, key, body, message_id=event.get("id"))

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
