"""What a job delivery costs before the pipeline sees it: aio-pika's consumer wrapper (an
``IncomingMessage`` and a task per delivery) against :class:`sender.delivery.RawDelivery`
(what the worker builds from aiormq's delivery). CPU µs per delivery, in this process.

    .venv/bin/python -m benchmarks.consume_micro
"""

from __future__ import annotations

import time
from typing import Any

import uvloop
from aio_pika.queue import consumer
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from sender.delivery import RawDelivery

N = 50_000


class _Channel:
    is_closed = False


def _message() -> DeliveredMessage:
    properties = Basic.Properties(content_type="application/json", delivery_mode=2,
                                  headers={"x-outbox-first-seen": 1_700_000_000},
                                  message_id="job-1")
    return DeliveredMessage(
        delivery=Basic.Deliver(consumer_tag="t", delivery_tag=5, redelivered=False,
                               exchange="outbox.jobs", routing_key="email"),
        header=ContentHeader(properties=properties, body_size=3000), body=b"x" * 3000,
        channel=_Channel())  # type: ignore[arg-type]


async def _main() -> None:
    message = _message()

    async def handle(_: Any) -> None:
        return None

    started = time.process_time()
    for _ in range(N):
        await consumer(handle, message, no_ack=False)
    print(f"aio-pika consumer (IncomingMessage + task): "
          f"{(time.process_time() - started) / N * 1e6:.1f} µs")
    started = time.process_time()
    for _ in range(N):
        await handle(RawDelivery(message))
    print(f"RawDelivery: {(time.process_time() - started) / N * 1e6:.1f} µs")


if __name__ == "__main__":
    uvloop.run(_main())
