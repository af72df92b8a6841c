"""Hand provider events to the worker: one confirmed publish per event on ``outbox.events``.

The webhook handlers and the ``outbox bounces`` listener acknowledge their sender only after
this returns, so an event the broker did not confirm is retried by the provider, never lost.
The worker applies each event once (deduplicated by provider and event id). The body is
:meth:`sender.provider_events.ProviderEvent.to_json`, which the worker reads back with
``ProviderEvent.from_json``: the one contract of ``outbox.events``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web

from sender.bus import Bus, PublishFailed
from sender.provider_events import ProviderEvent
from sender.topology import EVENTS_QUEUE

log = logging.getLogger("outbox.webhooks")


class _Counts(Protocol):
    def count(self, provider: str, type_: str, result: str, n: int = 1) -> None: ...


async def publish_events(bus: Bus, events: Iterable[ProviderEvent]) -> int:
    """Publish each event (confirmed); returns how many. Raises PublishFailed."""
    count = 0
    for event in events:
        await bus.publish_to_queue(EVENTS_QUEUE, event.to_json(),
                                   headers={"x-outbox-provider": event.provider})
        count += 1
    return count


async def hand_over(bus: Bus, events: list[ProviderEvent], metrics: _Counts) -> None:
    """Publish a webhook's events and count them; 503 (the provider retries) when the broker
    does not confirm them."""
    try:
        await publish_events(bus, events)
    except PublishFailed as exc:
        log.warning("webhook events not published: %s", exc)
        for event in events:
            metrics.count(event.provider, event.type, "unavailable")
        raise web.HTTPServiceUnavailable(text="try again") from None
    for event in events:
        metrics.count(event.provider, event.type, "accepted")
