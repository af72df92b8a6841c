"""Priority lanes: the routing of a job by its category, both lanes in the topology, and the
worker's slots (``LaneSlots``): the bulk lane holds at most its share while priority work is
pending, all of them otherwise; freed slots go to priority first; close() ends every waiter."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import DEFAULT_RETRY_TIERS
from sender.channels import registry
from sender.channels.registry import BULK, PRIORITY
from sender.client import _guess_key, email_job, routing_key, sms_job
from sender.lanes import EVENTS, LaneSlots
from sender.models import Category
from sender.topology import JOBS_EXCHANGE, definitions


def test_marketing_goes_on_the_bulk_key_everything_else_on_the_channel():
    categories: tuple[Category, ...] = ("transactional", "notification", "marketing")
    assert [routing_key(email_job(id="j", account_id="a", category=c, to="a@example.com",
                                  from_="s@example.com", subject="s", text="t", topic="task"))
             for c in categories] == ["email", "email", "email.bulk"]
    assert routing_key(sms_job(id="s", account_id="a", category="marketing",
                               to="+85291234567", body="hi")) == "sms.bulk"
    assert _guess_key(b'{"channel": "sms", "category": "marketing"}') == "sms.bulk"
    assert _guess_key(b'{"channel": "sms", "category": "transactional"}') == "sms"
    assert _guess_key(b'{"channel": "sms", "category": 7}') == "sms"
    assert _guess_key(b'not json') == "email"


def test_both_lanes_are_declared_with_the_same_arguments_and_bound_by_key():
    defs = definitions(DEFAULT_RETRY_TIERS)
    args = {q["name"]: q["arguments"] for q in defs["queues"]}
    bound = {(b["destination"], b["routing_key"]) for b in defs["bindings"]
             if b["source"] == JOBS_EXCHANGE}
    for d in registry.deliveries():
        assert d.lanes() == ((PRIORITY, d.name, d.queue),
                             (BULK, f"{d.name}.bulk", f"{d.queue}.bulk"))
        assert args[f"{d.queue}.bulk"] == args[d.queue]
        assert args[d.queue]["x-dead-letter-exchange"] == "outbox.dead"
        assert "x-delivery-limit" in args[d.queue]
        assert {(d.queue, d.name), (f"{d.queue}.bulk", f"{d.name}.bulk")} <= bound


async def _take(slots: LaneSlots, lane: str, n: int) -> list[asyncio.Task[bool]]:
    tasks = [asyncio.create_task(slots.acquire(lane)) for _ in range(n)]
    await asyncio.sleep(0)
    return tasks


async def test_bulk_uses_every_slot_when_no_priority_work_is_pending():
    slots = LaneSlots(8, 0.5)
    got = await _take(slots, BULK, 9)
    assert [t.done() for t in got].count(True) == 8 and slots.busy[BULK] == 8
    assert not got[8].done()
    slots.close()
    await asyncio.sleep(0)
    assert got[8].result() is False


async def test_freed_slots_go_to_priority_and_bulk_shrinks_to_its_share():
    slots = LaneSlots(8, 0.5)
    await _take(slots, BULK, 8)  # a blast holds every slot
    waiting_bulk = await _take(slots, BULK, 4)
    priority = await _take(slots, PRIORITY, 6)
    assert slots.priority_pending and not any(t.done() for t in priority)
    for i in range(4):  # four bulk sends finish: each slot goes to a priority job
        slots.release(BULK)
        await asyncio.sleep(0)
        assert sum(t.done() for t in priority) == i + 1
    assert slots.busy == {PRIORITY: 4, EVENTS: 0, BULK: 4}  # bulk at its cap of 4
    slots.release(BULK)  # bulk 3 < cap, but a priority job waits: it goes first
    await asyncio.sleep(0)
    assert sum(t.done() for t in priority) == 5 and not any(t.done() for t in waiting_bulk)
    slots.release(BULK)
    await asyncio.sleep(0)
    assert all(t.done() for t in priority) and slots.busy[BULK] == 2
    slots.release(PRIORITY)  # a free slot, bulk under its cap: bulk may take it
    await asyncio.sleep(0)
    assert sum(t.done() for t in waiting_bulk) == 1 and slots.busy[BULK] == 3
    slots.release(PRIORITY)
    slots.release(PRIORITY)
    await asyncio.sleep(0)
    assert slots.busy[BULK] == 4 and sum(t.done() for t in waiting_bulk) == 2
    for _ in range(3):  # the last priority job ends: bulk takes the free slots again
        slots.release(PRIORITY)
    await asyncio.sleep(0)
    assert not slots.priority_pending
    assert all(t.done() for t in waiting_bulk) and slots.busy[BULK] == 6


async def test_bulk_is_capped_while_priority_runs_even_with_slots_free():
    slots = LaneSlots(10, 0.3)
    assert slots.bulk_cap == 3
    assert await slots.acquire(PRIORITY)
    bulk = await _take(slots, BULK, 5)
    assert sum(t.done() for t in bulk) == 3 and slots.busy[BULK] == 3
    slots.release(PRIORITY)
    await asyncio.sleep(0)
    assert all(t.done() for t in bulk)


async def test_events_share_the_slots_but_do_not_cap_bulk():
    slots = LaneSlots(4, 0.25)
    assert await slots.acquire(EVENTS)
    bulk = await _take(slots, BULK, 3)
    assert all(t.done() for t in bulk)


async def test_a_cancelled_waiter_loses_nothing_and_unblocks_bulk():
    slots = LaneSlots(2, 0.5)
    assert await slots.acquire(BULK) and await slots.acquire(BULK)
    [priority] = await _take(slots, PRIORITY, 1)
    [bulk] = await _take(slots, BULK, 1)
    priority.cancel()
    await asyncio.sleep(0)
    slots.release(BULK)
    await asyncio.sleep(0)
    assert bulk.done() and bulk.result() is True and slots.busy == {
        PRIORITY: 0, EVENTS: 0, BULK: 2}


async def test_close_ends_every_waiter_and_refuses_new_ones():
    slots = LaneSlots(1, 1.0)
    assert await slots.acquire(PRIORITY)
    waiters = await _take(slots, PRIORITY, 2) + await _take(slots, BULK, 2)
    slots.close()
    await asyncio.sleep(0)
    assert [t.result() for t in waiters] == [False] * 4
    assert await slots.acquire(PRIORITY) is False
    slots.release(PRIORITY)
    assert slots.busy[PRIORITY] == 0


@pytest.mark.parametrize(("size", "share"), [(0, 0.5), (4, 0.0), (4, 1.5)])
def test_bad_sizes_are_refused(size: int, share: float):
    with pytest.raises(ValueError):
        LaneSlots(size, share)


async def test_a_priority_send_waits_ahead_of_bulk_for_a_connection():
    """The SMTP pool and the domain limiter (``Slots``): ``first`` waiters are served first,
    in order, and close() ends them too."""
    from sender.channels.base import NotSent, Slots

    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []

    async def wait(name: str, first: bool) -> None:
        async with slots.turn(first=first):
            order.append(name)

    tasks = [asyncio.create_task(wait(n, n.startswith("p"))) for n in ("b1", "b2", "p1", "p2")]
    await asyncio.sleep(0)
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["p1", "p2", "b1", "b2"] and slots.free == 1
    await slots.acquire()
    late = asyncio.create_task(slots.acquire(first=True))
    await asyncio.sleep(0)
    slots.close()
    with pytest.raises(NotSent):
        await late
