"""The worker's concurrency slots, shared by the lanes (docs/design.md, "Priority lanes").

``OUTBOX_CONCURRENCY`` slots in all. A priority job (transactional, notification) or a provider
event takes a free slot at once, and every freed slot goes to a waiting one of them before any
bulk (marketing) job. A bulk job takes a free slot only when none of them waits and, while
priority jobs run or wait, only while the bulk lane holds fewer than its cap
(``OUTBOX_BULK_SHARE`` of the slots, at least one). With no priority work, bulk uses every slot.
Running bulk sends are never interrupted: when priority work arrives during a blast, the bulk
lane shrinks to its cap as its sends finish, each freed slot going to priority first.

Provider events (lane ``events``) share the slots and go first, but are not priority *work*:
a stream of delivery reports does not cap a blast.

Waiters are futures in one FIFO queue per lane: a release wakes exactly the waiters it lets
start, never all of them. After :meth:`LaneSlots.close` (shutdown) every waiting and every new
:meth:`~LaneSlots.acquire` returns ``False``: that delivery is left unsettled and goes back to
its queue when the channel closes.
"""

from __future__ import annotations

import asyncio
from collections import deque

from sender.channels.registry import BULK, PRIORITY

#: the lane of provider events (``outbox.events``)
EVENTS = "events"
#: the order freed slots are offered in
ORDER = (PRIORITY, EVENTS, BULK)


class LaneSlots:
    """``size`` slots for the lanes of :data:`ORDER`; the bulk lane capped while priority
    work is pending."""

    def __init__(self, size: int, bulk_share: float) -> None:
        if size < 1 or not 0 < bulk_share <= 1:
            raise ValueError(f"need size >= 1 and 0 < bulk_share <= 1, not {size}, {bulk_share}")
        self.size = size
        self.bulk_cap = max(1, int(size * bulk_share))
        self.busy: dict[str, int] = dict.fromkeys(ORDER, 0)
        self._waiting: dict[str, deque[asyncio.Future[bool]]] = {lane: deque() for lane in ORDER}
        self.closed = False

    @property
    def priority_pending(self) -> bool:
        """Priority jobs run or wait for a slot: the bulk lane is held to its cap."""
        return bool(self.busy[PRIORITY] or self._waiting[PRIORITY])

    def waiting(self, lane: str) -> int:
        """Deliveries of ``lane`` waiting for a slot (tests, metrics)."""
        return sum(not f.done() for f in self._waiting[lane])

    def _may_start(self, lane: str) -> bool:
        if self.closed or sum(self.busy.values()) >= self.size:
            return False
        if lane != BULK:
            return True
        if self._waiting[PRIORITY] or self._waiting[EVENTS]:
            return False  # they go first (a slot is free only until they take it)
        return not self.priority_pending or self.busy[BULK] < self.bulk_cap

    async def acquire(self, lane: str) -> bool:
        """Wait for a slot of ``lane``; ``False`` when closed (do not start)."""
        if self.closed:
            return False
        queue = self._waiting[lane]
        if not queue and self._may_start(lane):
            self.busy[lane] += 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            return await waiter  # _dispatch counts the slot as taken before waking us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release(lane)  # handed over just as we were cancelled: pass it on
            elif waiter in queue:
                queue.remove(waiter)
                self._dispatch()  # a bulk waiter may have been held back by this one
            raise

    def release(self, lane: str) -> None:
        """Give back a slot of ``lane`` (taken by an ``acquire`` that returned ``True``)."""
        self.busy[lane] -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        for lane in ORDER:
            queue = self._waiting[lane]
            while queue and self._may_start(lane):
                waiter = queue.popleft()
                if not waiter.done():  # not cancelled meanwhile
                    self.busy[lane] += 1
                    waiter.set_result(True)

    def close(self) -> None:
        """Give out no more slots: every waiter gets ``False`` now (shutdown)."""
        self.closed = True
        for queue in self._waiting.values():
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(False)
