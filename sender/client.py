"""Publisher for the CRM side: ``from sender.client import Outbox``.

    async with Outbox("amqp://guest:guest@127.0.0.1:5672/") as outbox:
        await outbox.enqueue({"v": 1, "id": "...", "channel": "email", ...})

``enqueue`` validates the job first (raising :class:`sender.models.InvalidJob` with the reason),
then publishes it persistent, mandatory and confirmed: when it returns, RabbitMQ has the job;
when it raises :class:`sender.bus.PublishFailed`, it does not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from config.settings import DEFAULT_RETRY_TIERS
from sender.bus import Bus
from sender.channels.registry import parse_job
from sender.topology import DEFAULT_STATUS_QUEUE_MAX_LENGTH
from suppression import channels

MAX_JOB_BYTES = 2 * 1024 * 1024


class Outbox:
    """A connection to Outbox's job exchange. Declares the topology on connect, so nothing
    published before a worker starts is lost."""

    def __init__(self, amqp_url: str, *, retry_tiers: tuple[int, ...] = DEFAULT_RETRY_TIERS,
                 max_job_bytes: int = MAX_JOB_BYTES,
                 status_queue_max_length: int = DEFAULT_STATUS_QUEUE_MAX_LENGTH) -> None:
        """``status_queue_max_length`` must match the workers' OUTBOX_STATUS_QUEUE_MAX_LENGTH
        (RabbitMQ refuses a queue declared again with other arguments)."""
        self._bus = Bus(amqp_url, retry_tiers=retry_tiers,
                        status_max_length=status_queue_max_length)
        self._max_job_bytes = max_job_bytes

    async def connect(self) -> Outbox:
        await self._bus.connect(declare=True)
        return self

    async def enqueue(self, job: Mapping[str, Any] | bytes, *, validate: bool = True) -> None:
        """Validate and publish one job; returns once RabbitMQ has confirmed it."""
        body = job if isinstance(job, bytes) else json.dumps(job, ensure_ascii=False).encode()
        if validate:
            parsed = parse_job(body, max_bytes=self._max_job_bytes)
            await self._bus.publish_job(body, parsed.channel, message_id=parsed.id)
            return
        await self._bus.publish_job(body, _guess_channel(body))

    async def close(self) -> None:
        await self._bus.close()

    async def __aenter__(self) -> Outbox:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


def _guess_channel(body: bytes) -> str:
    """Routing key for an unvalidated body: its channel if readable and declared, else
    ``email`` (the worker dead-letters what it cannot parse)."""
    try:
        channel = json.loads(body).get("channel")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return channels.EMAIL.name
    return channel if channel in channels.names() else channels.EMAIL.name
