"""RabbitMQ topology of Outbox, as data: declared idempotently at start and exported as
``deploy/rabbitmq/definitions.json`` from the same description.

::

    CRM ──► outbox.jobs (direct) ──email──────► outbox.email      (quorum) ─┐
                    ▲            ├─email.bulk─► outbox.email.bulk (quorum) ─┤
                    │            ├─sms────────► outbox.sms        (quorum) ─┤ worker
                    │            └─sms.bulk───► outbox.sms.bulk   (quorum) ─┤
                    │ dead-letter after TTL                                 │
    outbox.retry (headers, outbox-tier)   ──► outbox.retry.<s> ◄────────────┤ deferred jobs
    outbox.dead (fanout) ──► outbox.dead (quorum)  ◄────────────────────────┤ invalid, poison
    outbox.status (topic) ──#──► outbox.status (quorum, for the CRM) ◄──────┘ status events
    (default exchange) ──► outbox.events (quorum) ◄── webhooks server; applied by the worker

The job queues are the declared channels' (:mod:`sender.channels.registry`): two lanes each,
the priority lane (``outbox.email``, bound with ``email``) and the bulk lane
(``outbox.email.bulk``, bound with ``email.bulk``, marketing jobs), quorum queues with the same
arguments.

``outbox.status`` is bounded (``OUTBOX_STATUS_QUEUE_MAX_LENGTH``, x-max-length with overflow
``drop-head``): with no CRM consuming, the oldest events go, not the broker's memory and disk.
RabbitMQ refuses to declare a queue again with other arguments (PRECONDITION_FAILED); that
becomes :class:`TopologyMismatch`, one line naming the queue and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractChannel, ExchangeType
from aiormq.exceptions import ChannelPreconditionFailed

from sender.channels import registry

JOBS_EXCHANGE = "outbox.jobs"
STATUS_EXCHANGE = "outbox.status"
DEAD_EXCHANGE = "outbox.dead"
RETRY_EXCHANGE = "outbox.retry"
DEAD_QUEUE = "outbox.dead"
EVENTS_QUEUE = "outbox.events"
STATUS_QUEUE = "outbox.status"
# not "x-...": a headers exchange ignores x- headers when matching (every tier queue matched)
TIER_HEADER = "outbox-tier"

#: A message that crashes the worker this many times goes to outbox.dead (quorum queues count).
DELIVERY_LIMIT = 20
#: Status events kept for the CRM when it does not consume (the oldest are dropped beyond).
DEFAULT_STATUS_QUEUE_MAX_LENGTH = 100_000


class TopologyMismatch(RuntimeError):
    """A queue exists with other arguments than this configuration declares."""


def retry_queue(seconds: int) -> str:
    """Name of the delay queue for one tier."""
    return f"outbox.retry.{seconds}"


@dataclass(frozen=True)
class Exchange:
    name: str
    type: str


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, Any]
    # (exchange, routing key, arguments)
    bindings: tuple[tuple[str, str, dict[str, Any]], ...] = field(default=())


def _quorum(**extra: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **extra}


def _status_args(max_length: int) -> dict[str, Any]:
    if not max_length:  # 0: unbounded (as before the setting existed)
        return _quorum()
    return _quorum(**{"x-max-length": max_length, "x-overflow": "drop-head"})


def describe(retry_tiers: tuple[int, ...],
             status_max_length: int = DEFAULT_STATUS_QUEUE_MAX_LENGTH
             ) -> tuple[list[Exchange], list[Queue]]:
    """The whole topology for the given retry tiers and ``outbox.status`` bound."""
    exchanges = [
        Exchange(JOBS_EXCHANGE, "direct"),
        Exchange(STATUS_EXCHANGE, "topic"),
        Exchange(DEAD_EXCHANGE, "fanout"),
        Exchange(RETRY_EXCHANGE, "headers"),
    ]
    job_args = _quorum(**{
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": DELIVERY_LIMIT,
    })
    queues = [
        *(Queue(queue, job_args, ((JOBS_EXCHANGE, key, {}),))
          for d in registry.deliveries() for _, key, queue in d.lanes()),
        Queue(DEAD_QUEUE, _quorum(), ((DEAD_EXCHANGE, "", {}),)),
        Queue(EVENTS_QUEUE, _quorum(**{"x-delivery-limit": DELIVERY_LIMIT,
                                       "x-dead-letter-exchange": DEAD_EXCHANGE})),
        Queue(STATUS_QUEUE, _status_args(status_max_length), ((STATUS_EXCHANGE, "#", {}),)),
    ]
    for seconds in retry_tiers:
        # Classic queues: one TTL per queue, so messages expire in order from the head,
        # then dead-letter back to outbox.jobs with their original routing key.
        args = {"x-message-ttl": seconds * 1000, "x-dead-letter-exchange": JOBS_EXCHANGE}
        match = {"x-match": "all", TIER_HEADER: str(seconds)}
        queues.append(Queue(retry_queue(seconds), args, ((RETRY_EXCHANGE, "", match),)))
    return exchanges, queues


async def declare(channel: AbstractChannel, retry_tiers: tuple[int, ...],
                  status_max_length: int = DEFAULT_STATUS_QUEUE_MAX_LENGTH) -> None:
    """Declare every exchange, queue and binding (idempotent); raise
    :class:`TopologyMismatch` for a queue that exists with other arguments."""
    exchanges, queues = describe(retry_tiers, status_max_length)
    for ex in exchanges:
        await channel.declare_exchange(ex.name, ExchangeType(ex.type), durable=True)
    for q in queues:
        try:
            queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments)
        except ChannelPreconditionFailed as exc:
            raise TopologyMismatch(_mismatch(q.name, exc)) from None
        for exchange, key, args in q.bindings:
            await queue.bind(exchange, routing_key=key, arguments=args or None)


def _mismatch(name: str, exc: ChannelPreconditionFailed) -> str:
    said = str(exc.args[0] if exc.args else exc).split(" - ", 1)[-1]
    fix = ("set OUTBOX_STATUS_QUEUE_MAX_LENGTH to the queue's current x-max-length (0 for none), "
           "or delete the queue once drained so it is declared again"
           if name == STATUS_QUEUE else
           "delete the queue once drained so it is declared again, or declare it as "
           "deploy/rabbitmq/definitions.json does")
    return f"queue {name} exists with other arguments ({said}): {fix} " \
           f"(rabbitmqctl delete_queue {name})"


def definitions(retry_tiers: tuple[int, ...], vhost: str = "/",
                status_max_length: int = DEFAULT_STATUS_QUEUE_MAX_LENGTH) -> dict[str, Any]:
    """The topology in RabbitMQ's definitions format (``rabbitmqctl import_definitions``)."""
    exchanges, queues = describe(retry_tiers, status_max_length)
    return {
        "exchanges": [
            {"name": e.name, "vhost": vhost, "type": e.type, "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}}
            for e in exchanges
        ],
        "queues": [
            {"name": q.name, "vhost": vhost, "durable": True, "auto_delete": False,
             "arguments": q.arguments}
            for q in queues
        ],
        "bindings": [
            {"source": ex, "vhost": vhost, "destination": q.name, "destination_type": "queue",
             "routing_key": key, "arguments": args}
            for q in queues
            for ex, key, args in q.bindings
        ],
    }


