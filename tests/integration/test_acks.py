"""Coalesced acks (sender.acks) against a real RabbitMQ: ``multiple`` settles only what this
process finished, whatever order the deliveries finish in."""

from __future__ import annotations

import asyncio
import random

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from sender.acks import Acks

pytestmark = pytest.mark.asyncio


async def _queue_with(amqp_url: str, n: int, name: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True)
        for i in range(n):
            await channel.default_exchange.publish(aio_pika.Message(str(i).encode()),
                                                   routing_key=name)


async def _depths(amqp_url: str, name: str) -> tuple[int, int]:
    """(ready, unacked) from a passive declare on a fresh connection: ready only."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count, queue.declaration_result.consumer_count


async def test_acks_out_of_order_with_a_held_delivery_settle_exactly_the_finished(
        amqp_url: str) -> None:
    """200 deliveries finish in a random order; one is held unfinished. Every finished one is
    acked (the channel stays open: no unknown tag, no double ack) and, once the consumer
    closes, exactly the held one is back on the queue."""
    await _queue_with(amqp_url, 200, "acks-test")
    acks = Acks()
    rng = random.Random(7)
    finished: list[bytes] = []
    held: list[AbstractIncomingMessage] = []
    everything = asyncio.Event()
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=64)
    queue = await channel.declare_queue("acks-test", passive=True)

    async def handle(message: AbstractIncomingMessage) -> None:
        if message.body == b"3":
            held.append(message)  # not settled yet: no ``multiple`` may settle it
            return
        await asyncio.sleep(rng.random() / 50)
        await acks.ack(message)
        finished.append(message.body)
        if len(finished) == 199:
            everything.set()

    await queue.consume(handle)
    await asyncio.wait_for(everything.wait(), 30)
    assert not channel.is_closed
    assert acks.acked == 199
    await connection.close()
    ready, _ = await _depths(amqp_url, "acks-test")
    assert ready == 1  # the held one only, returned when its channel closed
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        ch = await connection.channel()
        q = await ch.declare_queue("acks-test", passive=True)
        message = await q.get(timeout=5)
        assert message is not None and message.body == b"3"
        await message.ack()


async def test_acks_behind_a_late_one_go_alone_then_runs_go_as_one_frame(amqp_url: str
                                                                          ) -> None:
    """Prefetch 64, 128 messages. The first delivery finishes last: the 63 behind it, done
    in one turn, are acked alone (63 frames: their prefetch slots freed at once, no
    ``multiple`` may cover the first); then the first (1 frame); then the next 64, done in
    one turn, leave as ONE ``multiple`` frame. The queue ends empty, the channel open."""
    await _queue_with(amqp_url, 128, "acks-late")
    acks = Acks()
    got: list[AbstractIncomingMessage] = []
    arrived = asyncio.Event()
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=64)
    queue = await channel.declare_queue("acks-late", passive=True)

    async def handle(message: AbstractIncomingMessage) -> None:
        got.append(message)
        if len(got) in (64, 128):
            arrived.set()

    await queue.consume(handle)
    await asyncio.wait_for(arrived.wait(), 30)
    arrived.clear()
    first, rest = got[0], got[1:64]
    await asyncio.gather(*(acks.ack(m) for m in rest))
    assert acks.frames == 63 and acks.writes == 1  # 63 frames, one socket write
    await acks.ack(first)
    assert acks.frames == 64 and acks.writes == 2
    await asyncio.wait_for(arrived.wait(), 30)
    await asyncio.gather(*(acks.ack(m) for m in got[64:]))
    assert acks.frames == 65 and acks.acked == 128
    assert not channel.is_closed
    await connection.close()
    ready, _ = await _depths(amqp_url, "acks-late")
    assert ready == 0


async def test_a_nacked_delivery_does_not_stop_the_prefix(amqp_url: str) -> None:
    """Deliveries 1..50; the 10th is nacked (requeued) through Acks.nack, the rest acked:
    all 50 bodies are settled, the nacked one comes back once, the channel stays open."""
    await _queue_with(amqp_url, 50, "acks-nack")
    acks = Acks()
    seen: list[bytes] = []
    done = asyncio.Event()
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=16)
    queue = await channel.declare_queue("acks-nack", passive=True)

    async def handle(message: AbstractIncomingMessage) -> None:
        seen.append(message.body)
        if message.body == b"9" and not message.redelivered:
            await acks.nack(message)
            return
        await acks.ack(message)
        if acks.acked == 50:
            done.set()

    await queue.consume(handle)
    await asyncio.wait_for(done.wait(), 30)
    assert not channel.is_closed
    await connection.close()
    ready, _ = await _depths(amqp_url, "acks-nack")
    assert ready == 0
    assert sorted(seen) == sorted([str(i).encode() for i in range(50)] + [b"9"])
