"""Applying provider events (``outbox.events``) in the worker.

The webhook server and the bounce listener verify and parse what providers send and publish
one normalised event per happening; here each one is applied once:

================  ===================  =================================================
event type        job status           effect
================  ===================  =================================================
delivered         ``delivered``        —
bounced (hard)    ``bounced``          hard bounce counted; address suppressed globally
bounced (other)   ``bounced``          —
soft_bounced      ``soft_bounced``     —
complained        ``complained``       complaint counted; address suppressed globally
                                       (carrier filtering, Twilio 30007: counted only)
unsubscribed      ``unsubscribed``     the account's suppression (``unsubscribe`` /
                                       ``sms_stop``)
other sms_start   —                    the account's ``sms_stop`` entry removed
accepted, opened,
clicked, other    —                    —
================  ===================  =================================================

The job's status and the counters move in the same single Redis round trip as after a send
(``Gate.post_send``), deduplicated by event id, and a status never moves backwards. A status
event is published when the job's status changed.

Who is believed: the provider webhooks verify the provider's signature before publishing, so
an event of theirs that names no account can still teach facts about the address (a hard
bounce, a complaint: global suppression); one that needs an account and has none goes to
``outbox.dead`` with the reason. Events of the bounce listener (provider ``smtp``) come from
mail anyone can send: the listener publishes only reports proven to concern a job we sent
(signed VERP address or our quoted Message-ID, and the job's own recipient), always with their
account and job, so one without both is not applied at all: it goes to ``outbox.dead``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from sender.bus import Bus
from sender.metrics import Metrics
from sender.models import status_event
from suppression.gate import Counts, Gate
from suppression.store import SuppressionStore

log = logging.getLogger("outbox.events")

#: ``webhooks.providers.dsn.PROVIDER``: the events of the ``outbox bounces`` listener
LISTENER_PROVIDER = "smtp"
_STATUS = {"delivered": "delivered", "bounced": "bounced", "soft_bounced": "soft_bounced",
           "complained": "complained", "unsubscribed": "unsubscribed"}


def _channel(event: dict[str, Any]) -> str:
    return "sms" if event.get("provider") == "twilio" else "email"


def _effects(event: dict[str, Any], channel: str) -> tuple[Counts, str | None]:
    """What an event adds to the counters, and which suppression it leaves ("" = none)."""
    kind, type_ = event.get("kind"), event["type"]
    if type_ == "bounced" and kind == "hard":
        return Counts(hard=1), None  # None: the hard bounce's own global entry
    if type_ == "complained":
        return Counts(complaints=1), None if kind == "complaint" else ""
    if type_ == "unsubscribed":
        return Counts(), "sms_stop" if channel == "sms" else "unsubscribe"
    return Counts(), ""


def evidence(event: dict[str, Any]) -> str:
    """What a suppression made from an event keeps as its ``detail``, so support can say why
    before reactivating: the server's words, the report's own Message-ID (a bounce by mail),
    and when the report was received."""
    raw: dict[str, Any] = event["raw"] if isinstance(event.get("raw"), dict) else {}
    parts = [str(event.get("diagnostic") or event.get("reason") or "")[:500],
             f"report {raw['report_message_id']}" if raw.get("report_message_id") else "",
             f"received {event['at']}" if event.get("at") else ""]
    return " | ".join(p for p in parts if p)


class EventApplier:
    """Applies one provider event per delivery from ``outbox.events``."""

    def __init__(self, *, bus: Bus, gate: Gate, store: SuppressionStore,
                 metrics: Metrics) -> None:
        self._bus = bus
        self._gate = gate
        self._store = store
        self._metrics = metrics

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Apply and ack; an unreadable event is dead-lettered with the reason."""
        try:
            event = json.loads(message.body)
            event["type"], event["provider"]  # noqa: B018 (both required)
        except (ValueError, KeyError, TypeError) as exc:
            await self._dead(message, f"unreadable provider event: {exc}")
            return
        problem = await self.apply(event)
        if problem:
            await self._dead(message, problem)
            return
        await message.ack()

    async def apply(self, event: dict[str, Any]) -> str | None:
        """Apply one event; returns why it could not be, or None."""
        channel = _channel(event)
        counts, suppress = _effects(event, channel)
        account, job = event.get("account_id"), event.get("job_id")
        if event["type"] == "other" and event.get("reason") == "sms_start":
            return await self._opt_in(event, account)
        if event["provider"] == LISTENER_PROVIDER and not (account and job):
            return "a bounce listener event that names no account and job is not believed"
        if not account:
            return await self._unattributed(event, channel, counts)
        status = _STATUS.get(event["type"], "")
        if not status and not counts.hard and not counts.complaints:
            return None  # accepted / opened / clicked: nothing to record
        recorded = await self._gate.post_send(
            account, job or f"event-{event.get('event_id')}", status=status if job else "",
            attempt=0, provider=event.get("provider"),
            provider_message_id=event.get("provider_message_id"), channel=channel,
            reason=event.get("reason"), counts=counts, address=event.get("recipient") or "",
            suppress=suppress, event_id=f"{event['provider']}:{event.get('event_id')}",
            detail=evidence(event))
        self._metrics.provider_events.labels(event["provider"], event["type"],
                                             "duplicate" if recorded.applied < 0 else
                                             "applied").inc()
        if recorded.transition is not None:
            self._metrics.account_transitions.labels(recorded.transition.from_state,
                                                     recorded.transition.to_state).inc()
        if job and status and recorded.applied == 1:
            await self._bus.publish_event(status_event(
                job_id=job, account_id=account, channel=channel, status=status,  # type: ignore[arg-type]
                reason=event.get("reason"), detail=event.get("diagnostic"),
                provider=event.get("provider"),
                provider_message_id=event.get("provider_message_id"), attempt=0))
            self._metrics.jobs.labels(channel, status).inc()
        return None

    async def _unattributed(self, event: dict[str, Any], channel: str,
                            counts: Counts) -> str | None:
        """No account: a fact about the address is still a fact; a choice needs an account."""
        recipient = event.get("recipient")
        if (counts.hard or counts.complaints) and recipient:
            reason = "hard_bounce" if counts.hard else "complaint"
            await self._gate.suppress_address(channel, recipient, reason=reason,
                                              source=str(event.get("event_id")),
                                              detail=evidence(event))
            return None
        if event["type"] == "unsubscribed":
            return "an unsubscribe that names no account cannot be applied"
        return None

    async def _opt_in(self, event: dict[str, Any], account: str | None) -> str | None:
        if not account or not event.get("recipient"):
            return "an SMS START that names no account cannot be applied"
        await self._store.remove(event["recipient"], channel="sms", account_id=account,
                                 actor="recipient", reason="replied START")
        return None

    async def _dead(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.warning("provider event not applied: %s", reason)
        await self._bus.publish_dead(message.body, reason, "events",
                                     headers=dict(message.headers))
        await message.ack()
