"""Settling a delivery: the one object every consumer in the worker settles its messages
through — the job pipeline (:mod:`sender.pipeline`), the provider-event applier
(:mod:`sender.provider_event_applier`) and the worker's guard around both (:mod:`sender.worker`).

Every delivery leaves on exactly one of these paths:

====================  ============================================================================
``ack``               done (acks coalesced per loop turn: :class:`sender.acks.Acks`)
``nack``              back to its queue, marked redelivered (an unknown outcome, a broker error)
``dead_letter``       a copy on ``outbox.dead`` with the reason (``x-outbox-reason``) and the
                      routing key it came with (``x-outbox-routing-key``: its lane, where
                      ``outbox dead replay`` sends it back), confirmed; then ``ack``
``unexpected``        an exception nobody expected: ``nack`` until the delivery is the
                      :data:`ERROR_DELIVERIES`-th (RabbitMQ's ``x-delivery-count``), then
                      ``dead_letter`` with the exception as the reason
(none)                shutdown or a broker outage: RabbitMQ redelivers it when the channel closes
====================  ============================================================================

``dead_letter`` and ``unexpected`` take a step to run between the dead copy and the ack (the
job's ``rejected`` or ``failed`` event): a crash in between repeats the copy, never loses the
event. A consumer adds what its messages need around these paths (the pipeline its status
events; the applier nothing) and never settles a message any other way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sender.acks import Acks, DirectAcks
from sender.bus import ROUTE_HEADER, Bus
from sender.delivery import Delivery

log = logging.getLogger("outbox.worker")

#: Deliveries ending in an unexpected exception before a message is dead-lettered (RabbitMQ
#: counts every return, shutdowns included; the queues' own x-delivery-limit is the backstop
#: for a body that kills the process).
ERROR_DELIVERIES = 3
DELIVERY_COUNT_HEADER = "x-delivery-count"  # set by quorum queues
#: a step between a dead letter's copy and its ack (given the reason)
BeforeAck = Callable[[str], Awaitable[None]]


class Settle:
    """Settles deliveries: one per worker process, shared by everything that consumes."""

    def __init__(self, bus: Bus, acks: Acks | None = None) -> None:
        """``acks``: the worker's coalesce per loop turn; default one ack per delivery."""
        self._bus = bus
        self.acks = acks or DirectAcks()

    async def ack(self, message: Delivery) -> None:
        """Done with ``message`` (returns once the ack is written)."""
        await self.acks.ack(message)

    async def nack(self, message: Delivery) -> None:
        """Back to its queue (marked redelivered); a dead channel requeues it anyway."""
        await self.acks.nack(message)

    async def copy_dead(self, message: Delivery, reason: str, source: str,
                        **headers: Any) -> None:
        """A copy of ``message`` on ``outbox.dead`` (routing key ``source``: its channel, or
        ``events``) with ``reason``, the delivery's headers and ``headers``; confirmed. Not
        a settlement: the caller settles after (a job refused by the renderer ends with its
        final status)."""
        await self._bus.publish_dead(message.body, reason, source,
                                     headers={**dead_headers(message), **headers})

    async def dead_letter(self, message: Delivery, reason: str, source: str,
                          *, before_ack: BeforeAck | None = None, **headers: Any) -> None:
        """:meth:`copy_dead`, then ``before_ack(reason)``, then ack."""
        await self.copy_dead(message, reason, source, **headers)
        if before_ack is not None:
            await before_ack(reason)
        await self.ack(message)

    async def unexpected(self, message: Delivery, exc: BaseException,
                         source: str, *, final: str = "",
                         before_ack: BeforeAck | None = None) -> bool:
        """An exception nobody expected (``exc``, logged with its traceback once): back to
        the queue until the :data:`ERROR_DELIVERIES`-th delivery, then :meth:`dead_letter`
        with the exception as the reason. ``final``: why it may not be retried (retrying
        would repeat what cannot be repeated): dead-lettered at once, reason
        ``<final>: <exception>``. True when dead-lettered."""
        deliveries = delivery_count(message)
        what = f"{type(exc).__name__}: {exc}"
        if deliveries < ERROR_DELIVERIES and not final:
            log.warning("unexpected error on delivery %d of at most %d, returned to its "
                        "queue: %s", deliveries, ERROR_DELIVERIES, what)
            await self.nack(message)
            return False
        reason = (f"{final}: {what}" if final else
                  f"unexpected error on delivery {deliveries}: {what}")
        log.error("dead-lettered: %s", reason, exc_info=exc)  # the one traceback
        await self.dead_letter(message, reason, source, before_ack=before_ack)
        return True


def delivery_count(message: Delivery) -> int:
    """Which delivery of the message this is (1 for the first; RabbitMQ's count + 1)."""
    count: Any = message.headers.get(DELIVERY_COUNT_HEADER)
    try:
        return int(count) + 1
    except (TypeError, ValueError):
        return 1


def dead_headers(message: Delivery) -> dict[str, Any]:
    """A dead letter's headers: the delivery's, and the routing key it came with (its lane,
    where ``outbox dead replay`` sends it back)."""
    return {**message.headers, ROUTE_HEADER: message.routing_key or ""}
