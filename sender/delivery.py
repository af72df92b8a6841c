"""What the worker reads off a delivery, without aio-pika's message wrapping on the hot path.

aio-pika turns every delivery into an ``IncomingMessage`` (about twenty properties decoded,
a lock, a processed flag) and runs the consumer in a task of its own, beside the one aiormq
already runs it in. The job consumers need six fields and the channel to settle on:
:class:`Delivery` is the protocol the pipeline, :mod:`sender.settle` and :mod:`sender.acks`
are written against, and :class:`RawDelivery` the light object the worker builds straight from
aiormq's ``DeliveredMessage`` (aiormq is aio-pika's own protocol layer). aio-pika's messages
satisfy the protocol as they are (the provider-event consumer, tools and tests use them).

:func:`consume_raw` keeps aio-pika's robust consumer (restored with its queue after a
reconnect or a failover to another node) and puts the raw callback in its place on the
aiormq channel; a delivery that still comes through aio-pika (the first after a restore)
is handled all the same and puts the raw callback back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aiormq.abc import DeliveredMessage


class Delivery(Protocol):
    """One delivery from a queue: what consumers read and how it is settled."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def delivery_tag(self) -> int | None: ...

    @property
    def redelivered(self) -> bool | None: ...

    @property
    def routing_key(self) -> str | None: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def channel(self) -> Any: ...  # the aiormq channel it came on (acks are per channel)

    async def ack(self, multiple: bool = False) -> None: ...

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None: ...


class RawDelivery:
    """A delivery read straight off aiormq: the fields the worker uses, nothing decoded that
    it does not."""

    __slots__ = ("body", "headers", "delivery_tag", "redelivered", "routing_key",
                 "message_id", "channel")

    def __init__(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        delivery = message.delivery
        self.body: bytes = message.body
        self.headers: Mapping[str, Any] = properties.headers or {}
        self.delivery_tag: int | None = getattr(delivery, "delivery_tag", None)
        self.redelivered: bool | None = getattr(delivery, "redelivered", None)
        self.routing_key: str | None = getattr(delivery, "routing_key", None)
        self.message_id: str | None = properties.message_id
        self.channel: Any = message.channel

    async def ack(self, multiple: bool = False) -> None:
        """Ack this delivery on its channel."""
        assert self.delivery_tag is not None
        await self.channel.basic_ack(self.delivery_tag, multiple=multiple)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        """Nack this delivery (back to its queue by default)."""
        assert self.delivery_tag is not None
        await self.channel.basic_nack(self.delivery_tag, multiple=multiple, requeue=requeue)


OnDelivery = Callable[[Delivery], Awaitable[None]]


async def consume_raw(queue: AbstractQueue, on_delivery: OnDelivery) -> str:
    """Consume ``queue`` (acks required) with ``on_delivery`` called with a
    :class:`RawDelivery` per message; returns the consumer tag (cancel it through
    ``queue.cancel``). aio-pika records the consumer and restores it after a reconnect; its
    callback handles the message it is given and swaps the raw one in again."""

    async def raw(message: DeliveredMessage) -> None:
        await on_delivery(RawDelivery(message))

    async def wrapped(message: AbstractIncomingMessage) -> None:
        try:
            consumers = getattr(message.channel, "consumers", None)
        except Exception:  # its channel is closed already: nothing to swap
            consumers = None
        tag = message.consumer_tag
        if tag is not None and isinstance(consumers, dict) and tag in consumers:
            consumers[tag] = raw  # the deliveries after this one skip aio-pika's wrapping
        await on_delivery(message)

    tag = await queue.consume(wrapped, no_ack=False)
    channel = await queue.channel.get_underlay_channel()
    consumers = getattr(channel, "consumers", None)
    if isinstance(consumers, dict) and tag in consumers:
        consumers[tag] = raw
    return tag
