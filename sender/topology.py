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

Every queue is bounded in messages and bytes (:data:`BOUNDS`, ``x-max-length`` and
``x-max-length-bytes``), so no input from outside fills the broker's memory and disk:

================================  ===================  ========================================
queue                             bound                when full
================================  ===================  ========================================
job lanes, ``outbox.retry.<s>``   1,000,000 / 2 GiB    ``reject-publish``: the publisher gets a
                                                       nack (``PublishFailed``), keeps the job
``outbox.events``                 1,000,000 / 1 GiB    ``reject-publish``: the webhook or bounce
                                                       is refused, its sender retries
``outbox.dead``                   100,000 / 1 GiB      ``reject-publish``: nothing already kept
                                                       is dropped; the publisher keeps its
                                                       message (a job stays in its queue, the
                                                       bounce listener answers 451)
``outbox.status``                 ``OUTBOX_STATUS_``   ``drop-head`` (the oldest events go; 0 =
                                  ``QUEUE_MAX_LENGTH``  unbounded, for a queue declared so)
                                  / 1 GiB
================================  ===================  ========================================

A nack from a full queue raises :class:`sender.bus.QueueFull` (a ``PublishFailed``) naming
the queue (:func:`queue_for`). RabbitMQ refuses to declare a queue again with other arguments
(PRECONDITION_FAILED); that becomes :class:`TopologyMismatch`, one line naming the queue and
what to do (README, "Queues": how an existing deployment takes the bounds).
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
GIB = 1024 * 1024 * 1024
#: (messages, bytes) each kind of queue holds at most.
BOUNDS = {"jobs": (1_000_000, 2 * GIB), "retry": (1_000_000, 2 * GIB),
          "events": (1_000_000, GIB), "dead": (100_000, GIB), "status": (0, GIB)}


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


def _bounded(kind: str, overflow: str = "reject-publish") -> dict[str, Any]:
    messages, size = BOUNDS[kind]
    return {"x-max-length": messages, "x-max-length-bytes": size, "x-overflow": overflow}


def _status_args(max_length: int) -> dict[str, Any]:
    if not max_length:  # 0: unbounded (as before the setting existed)
        return _quorum()
    return _quorum(**{"x-max-length": max_length, "x-max-length-bytes": BOUNDS["status"][1],
                      "x-overflow": "drop-head"})


_ONE_QUEUE = {DEAD_EXCHANGE: DEAD_QUEUE, STATUS_EXCHANGE: STATUS_QUEUE}


def limits(queue: Queue) -> tuple[int, int] | None:
    """(messages, bytes) a queue holds at most; None when unbounded."""
    args = queue.arguments
    if "x-max-length" not in args:
        return None
    return int(args["x-max-length"]), int(args["x-max-length-bytes"])


def queue_for(exchange: str, routing_key: str, headers: dict[str, Any] | None = None) -> str:
    """The queue a publish to ``exchange`` with ``routing_key`` lands in (for naming the one
    that refused it); the exchange's name when that is not one queue."""
    if exchange == "":
        return routing_key
    if exchange in _ONE_QUEUE:
        return _ONE_QUEUE[exchange]
    if exchange == RETRY_EXCHANGE and headers and TIER_HEADER in headers:
        return retry_queue(int(headers[TIER_HEADER]))
    if exchange == JOBS_EXCHANGE:
        lanes = {key: queue for d in registry.deliveries() for _, key, queue in d.lanes()}
        return lanes.get(routing_key, exchange)
    return exchange


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
        "x-delivery-limit": DELIVERY_LIMIT,
        **_bounded("jobs"),
    })
    queues = [
        *(Queue(queue, job_args, ((JOBS_EXCHANGE, key, {}),))
          for d in registry.deliveries() for _, key, queue in d.lanes()),
        Queue(DEAD_QUEUE, _quorum(**_bounded("dead")), ((DEAD_EXCHANGE, "", {}),)),
        Queue(EVENTS_QUEUE, _quorum(**{"x-delivery-limit": DELIVERY_LIMIT,
                                       "x-dead-letter-exchange": DEAD_EXCHANGE,
                                       **_bounded("events")})),
        Queue(STATUS_QUEUE, _status_args(status_max_length), ((STATUS_EXCHANGE, "#", {}),)),
    ]
    for seconds in retry_tiers:
        # Classic queues: one TTL per queue, so messages expire in order from the head,
        # then dead-letter back to outbox.jobs with their original routing key.
        args = {"x-message-ttl": seconds * 1000, "x-dead-letter-exchange": JOBS_EXCHANGE,
                **_bounded("retry")}
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
           "delete the queue once drained so it is declared again (with its bounds: README, "
           "Queues), or declare it as deploy/rabbitmq/definitions.json does")
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


