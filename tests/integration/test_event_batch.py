"""Status events asked for in one loop turn leave in one write, each with its own outcome
(sender.bus.Bus.publish_event), against the real broker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import pytest

from sender import bus as bus_module
from sender import topology
from sender.bus import Bus, PublishFailed
from sender.models import status_event

pytestmark = pytest.mark.integration
TIERS = (1, 60)


def _event(n: int, status: str = "sent") -> dict[str, Any]:
    return status_event(job_id=f"job-{n}", account_id="acct", channel="email", status=status,
                        attempt=1)


async def _drain(amqp_url: str, count: int) -> list[dict[str, Any]]:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.STATUS_QUEUE, passive=True)
        got: list[dict[str, Any]] = []
        for _ in range(200):
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                if len(got) >= count:
                    break
                await asyncio.sleep(0.02)
                continue
            got.append(json.loads(message.body))
        return got
    finally:
        await connection.close()


async def test_the_events_of_one_turn_go_in_one_write_and_are_all_confirmed(
        amqp_url, monkeypatch):
    writes: list[int] = []
    real = bus_module._publish_many

    async def counted(channel: Any, exchange: str, batch: list[Any]) -> Any:
        writes.append(len(batch))
        return await real(channel, exchange, batch)

    monkeypatch.setattr(bus_module, "_publish_many", counted)
    bus = Bus(amqp_url, retry_tiers=TIERS)
    await bus.connect()
    try:
        await asyncio.gather(*(bus.publish_event(_event(n)) for n in range(50)))
        await bus.publish_event(_event(50))  # a later turn: a write of its own
    finally:
        await bus.close()
    assert writes == [50, 1]
    got = await _drain(amqp_url, 51)
    assert [e["id"] for e in got] == [f"job-{n}" for n in range(51)]  # in order, once each


async def test_an_event_the_broker_returns_fails_alone_its_batch_mates_are_confirmed(amqp_url):
    """Only ``email.sent`` is routed: the ``bounced`` events of the same write come back
    (mandatory) and raise PublishFailed to their own callers only."""
    connection = await aio_pika.connect(amqp_url)
    bus = Bus(amqp_url, retry_tiers=TIERS)
    await bus.connect()
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.STATUS_QUEUE, passive=True)
        await queue.bind(topology.STATUS_EXCHANGE, "email.sent")
        await queue.unbind(topology.STATUS_EXCHANGE, "#")
        statuses = ["sent", "bounced", "sent", "bounced", "sent"]
        outcomes = await asyncio.gather(
            *(bus.publish_event(_event(n, s)) for n, s in enumerate(statuses)),
            return_exceptions=True)
    finally:
        await bus.close()
        await connection.close()
    assert [type(o).__name__ for o in outcomes] == [
        "NoneType", "PublishFailed", "NoneType", "PublishFailed", "NoneType"]
    assert all("email.bounced" in str(o) for o in outcomes if isinstance(o, PublishFailed))
    got = await _drain(amqp_url, 3)
    assert [e["id"] for e in got] == ["job-0", "job-2", "job-4"]
