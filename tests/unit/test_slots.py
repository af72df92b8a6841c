"""The stoppable semaphore behind the SMTP pool and the domain limiter: after close(), a send
waiting for its turn gives up (NotSent) instead of starting once a slot frees."""

from __future__ import annotations

import asyncio

import pytest

from sender.channels.base import NotSent, Slots
from sender.channels.smtp import DomainLimiter
from sender.topology import STATUS_QUEUE, describe


async def test_waiters_get_slots_in_order_and_close_wakes_the_rest_with_not_sent():
    slots = Slots(1)
    await slots.acquire()
    got: list[str] = []

    async def wait(name: str) -> None:
        async with slots:
            got.append(name)
            await asyncio.sleep(0.01)

    first = asyncio.create_task(wait("a"))
    second = asyncio.create_task(wait("b"))
    await asyncio.sleep(0)
    slots.release()  # "a" gets the slot
    await asyncio.sleep(0)
    slots.close()  # "b" is still waiting: it must not start
    await first
    with pytest.raises(NotSent):
        await second
    assert got == ["a"]
    with pytest.raises(NotSent):
        await slots.acquire()


async def test_a_cancelled_waiter_passes_a_handed_slot_on():
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    other = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # handed to `waiter`...
    waiter.cancel()  # ...which is cancelled before it runs: `other` must get it
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(other, 1)


async def test_a_closed_domain_limiter_refuses_new_and_known_domains():
    limiter = DomainLimiter({}, 1)
    known = limiter("a@known.example")
    limiter.close()
    for slots in (known, limiter("b@new.example")):
        with pytest.raises(NotSent):
            await slots.acquire()


def test_the_status_queue_is_bounded_dropping_the_oldest():
    _, queues = describe((10,))
    status = next(q for q in queues if q.name == STATUS_QUEUE)
    assert status.arguments == {"x-queue-type": "quorum", "x-max-length": 100_000,
                                "x-max-length-bytes": 1024**3, "x-overflow": "drop-head"}
    _, unbounded = describe((10,), status_max_length=0)
    assert next(q for q in unbounded if q.name == STATUS_QUEUE).arguments == \
        {"x-queue-type": "quorum"}
