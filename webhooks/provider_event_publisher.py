"""Hand provider events to the worker: one confirmed publish per event on ``outbox.events``.

The webhook handlers and the ``outbox bounces`` listener acknowledge their sender only after
this returns, so an event the broker did not confirm is retried by the provider, never lost.
A webhook's event that names a job is published only when the job's record allows it
(:func:`suppression.handover.check`): one for a job never handed over, or handed over for
another recipient, is dropped here (acknowledged all the same, so the provider does not
retry it), counted in ``outbox_webhook_events_total`` with its result (``ignored_not_sent``,
``ignored_recipient``) and logged once.
The worker applies each event once (deduplicated by provider and event id). The body is
:meth:`sender.provider_events.ProviderEvent.to_json`, which the worker reads back with
``ProviderEvent.from_json``: the one contract of ``outbox.events``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web
from redis.exceptions import RedisError

from sender.bus import Bus, PublishFailed
from sender.provider_events import ProviderEvent
from sender.topology import EVENTS_QUEUE
from suppression.handover import Query, check_all
from suppression.roundtrip import Client

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


async def hand_over(bus: Bus, redis: Client, events: list[ProviderEvent], metrics: _Counts,
                    *, region: str = "HK") -> None:
    """Publish a webhook's events that may touch their jobs (:func:`applicable`) and count
    them; 503 (the provider retries) when Redis cannot say or the broker does not confirm."""
    try:
        events = await applicable(redis, events, metrics, region=region)
    except (RedisError, OSError) as exc:
        log.warning("webhook events not checked (Redis): %s", exc)
        raise web.HTTPServiceUnavailable(text="try again") from None
    try:
        await publish_events(bus, events)
    except PublishFailed as exc:
        log.warning("webhook events not published: %s", exc)
        for event in events:
            metrics.count(event.provider, event.type, "unavailable")
        raise web.HTTPServiceUnavailable(text="try again") from None
    for event in events:
        metrics.count(event.provider, event.type, "accepted")


async def applicable(redis: Client, events: list[ProviderEvent], metrics: _Counts, *,
                     region: str = "HK") -> list[ProviderEvent]:
    """``events`` without those the job's record rules out: a job never handed over, or
    handed over for another recipient (each counted and logged once). An event naming no
    job, or a job no longer remembered, is kept: the worker applies it without a job. One
    Redis round trip for the whole batch."""
    named = [e for e in events if e.job_id and e.account_id]
    verdicts = await check_all(redis, [Query(e.account_id or "", e.job_id or "", e.recipient,
                                             e.channel) for e in named], region=region)
    ignored = set()
    for event, (verdict, why) in zip(named, verdicts, strict=True):
        if verdict.ignored:
            ignored.add(id(event))
            metrics.count(event.provider, event.type, verdict.value)
            log.warning("%s %s event ignored: %s", event.provider, event.type, why,
                        extra={"provider": event.provider, "type": event.type,
                               "account_id": event.account_id, "job_id": event.job_id,
                               "recipient": event.recipient, "result": verdict.value})
    return [e for e in events if id(e) not in ignored]
