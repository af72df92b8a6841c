"""The job consumers' raw deliveries (sender.delivery.consume_raw) against the real broker:
aiormq's delivery without aio-pika's wrapping, and the consumer restored after the broker
closes the connection, raw again from the second delivery on."""

from __future__ import annotations

import asyncio
from urllib.parse import quote, urlsplit

import aio_pika
import pytest

from sender.delivery import Delivery, RawDelivery, consume_raw
from tests.conftest import PROFILE, services

pytestmark = pytest.mark.integration


async def _until(predicate, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.05)


async def _close_connections(amqp_url: str) -> int:
    """Close every connection of the test's vhost from the broker's side."""
    vhost = urlsplit(amqp_url).path.lstrip("/")
    found: object = []
    for _ in range(150):  # the management API lists a new connection within seconds
        found = await asyncio.to_thread(services.management, PROFILE, "GET",
                                        f"vhosts/{quote(vhost, safe='')}/connections")
        if found:
            break
        await asyncio.sleep(0.1)
    assert isinstance(found, list)
    for connection in found:
        await asyncio.to_thread(services.management, PROFILE, "DELETE",
                                f"connections/{quote(connection['name'], safe='')}")
    return len(found)


async def test_deliveries_are_raw_and_stay_raw_after_the_consumer_is_restored(amqp_url):
    got: list[tuple[str, bytes, bool | None]] = []

    async def on_delivery(message: Delivery) -> None:
        got.append((type(message).__name__, message.body, message.redelivered))
        await message.ack()

    consumer = await aio_pika.connect_robust(amqp_url, reconnect_interval=0.2)
    publisher = await aio_pika.connect(amqp_url)
    try:
        channel = await consumer.channel()
        await channel.set_qos(prefetch_count=8)
        queue = await channel.declare_queue("raw-test", durable=True)
        await consume_raw(queue, on_delivery)
        out = await publisher.channel()

        async def publish(body: bytes) -> None:
            await out.default_exchange.publish(
                aio_pika.Message(body, headers={"x-outbox-attempt": 2}, message_id="m-" +
                                 body.decode()), routing_key="raw-test")

        await publish(b"1")
        await _until(lambda: len(got) == 1)
        assert got[0] == ("RawDelivery", b"1", False)
        await publisher.close()  # only the consumer's connection is to be closed

        reconnected = asyncio.Event()
        consumer.reconnect_callbacks.add(lambda *_: reconnected.set())
        assert await _close_connections(amqp_url) >= 1
        await asyncio.wait_for(reconnected.wait(), 30)
        publisher = await aio_pika.connect(amqp_url)
        out = await publisher.channel()
        for n in (b"2", b"3"):  # one at a time: the swap happens in the first one's callback
            await publish(n)
            await _until(lambda n=n: any(body == n for _, body, _ in got))
    finally:
        await publisher.close()
        await consumer.close()
    assert [body for _, body, _ in got] == [b"1", b"2", b"3"]  # each once, none lost
    # the first after the restore may come through aio-pika's wrapper; the next is raw again
    assert got[1][0] in ("RawDelivery", "IncomingMessage")
    assert got[2][0] == "RawDelivery"


def test_a_raw_delivery_reads_what_the_pipeline_reads() -> None:
    from aiormq.abc import DeliveredMessage
    from pamqp.commands import Basic
    from pamqp.header import ContentHeader

    properties = Basic.Properties(headers={"x-outbox-attempt": 2}, message_id="job-1")
    message = DeliveredMessage(
        delivery=Basic.Deliver(consumer_tag="t", delivery_tag=7, redelivered=True,
                               exchange="outbox.jobs", routing_key="email.bulk"),
        header=ContentHeader(properties=properties, body_size=2), body=b"{}", channel=None)
    raw = RawDelivery(message)
    assert (raw.body, dict(raw.headers), raw.delivery_tag, raw.redelivered, raw.routing_key,
            raw.message_id) == (b"{}", {"x-outbox-attempt": 2}, 7, True, "email.bulk", "job-1")
