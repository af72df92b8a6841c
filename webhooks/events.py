"""Hand provider events to the worker: one confirmed publish per event on ``outbox.events``.

The webhook handlers and the ``outbox bounces`` listener acknowledge their sender only after
this returns, so an event the broker did not confirm is retried by the provider, never lost.
The worker applies each event once (deduplicated by provider and event id).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sender.bus import Bus
from sender.topology import EVENTS_QUEUE
from webhooks.providers.base import ProviderEvent


async def publish_events(bus: Bus, events: Iterable[ProviderEvent]) -> int:
    """Publish each event (confirmed); returns how many. Raises PublishFailed."""
    count = 0
    for event in events:
        body = json.dumps(event.as_dict(), ensure_ascii=False, default=str).encode()
        await bus.publish_to_queue(EVENTS_QUEUE, body,
                                   headers={"x-outbox-provider": event.provider})
        count += 1
    return count
