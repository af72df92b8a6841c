"""Applying provider events (``outbox.events``) in the worker.

The webhook server and the bounce listener verify and parse what providers send and publish
one normalised event per happening (:class:`sender.provider_events.ProviderEvent`: a body that
does not validate goes to ``outbox.dead`` with the reason); here each one is applied once:

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
failed            ``failed``           — (the provider never sent it: not a bounce, not
                                       counted, nothing suppressed)
other sms_start   —                    the account's ``sms_stop`` entry removed
accepted, opened,
clicked, other    —                    —
================  ===================  =================================================

A ``quoted`` event (``ProviderEvent.trust``: a report by mail that only quotes our
Message-ID and ``X-Outbox-Account``, which every recipient of the message sees, so any of them
can forge it) is the recipient's own word about their own mailbox: where a ``signed`` one
would suppress (a hard bounce, a complaint), it leaves the ACCOUNT's entry ``reported`` for
that recipient, with the evidence (what was quoted, from which peer) in its ``detail``; it
counts toward no rate, makes no global entry and leaves the job's status as it is (a status
is what the customer's own bounce handling reads, and its event would be a second rate
anyone could push); anything else it says changes nothing. Counted in
``outbox_provider_events_total{result="quoted"}``.

The job's status and the counters move in the same single Redis round trip as after a send
(``Gate.post_send``), deduplicated by event id, and a status never moves backwards. A status
event is published when the job's status changed, with the job's ``metadata`` as the worker
kept it at the claim (read in that same round trip), as the worker's own events carry it;
and when the counters moved the account's state (a complaint can block it), the change is
logged at WARNING and published as the pipeline does.

Each event of a job logs one line (``outbox.events``) with the field names of the pipeline's
line for the job (``job_id``, ``account_id``, ``channel``, ``status``, ``reason``,
``provider``, ``detail``), and ``event``, ``event_id``, ``trust``, ``result``: INFO for one that
changed the job's status or came after a later one (``superseded``), and for a ``quoted``
report; DEBUG for a duplicate and for an accepted/opened/clicked event. So the job's id finds
its whole story: its "sent" line, then e.g. "job order-1 bounced: ses event, applied".

Which job: an event naming a job is checked against the job's record first
(:func:`suppression.handover.check`, one HMGET). It applies only when the job was handed
over for exactly the event's recipient; for a job never handed over (``rejected``,
``suppressed``, ``failed`` before a send...) or sent to someone else it changes nothing at
all: acked (it is no malformed message, so not ``outbox.dead``), counted in
``outbox_provider_events_total`` with result ``ignored_not_sent`` / ``ignored_recipient``
and logged. The webhook server has already dropped such events
(``webhooks.provider_event_publisher.hand_over``); the worker asks again because the job may
have moved since, and for the bounce listener's events. For a job no longer remembered
(older than the idempotency TTL) a webhook's event changes no job; it applies as one naming
no job would. A bounce listener's is not believed then (``outbox.dead``), as the listener
itself refuses one.

Who is believed: the provider webhooks verify the provider's signature before publishing, so
an event of theirs that names no account can still teach facts about the address (a hard
bounce, a complaint: global suppression); one that needs an account and has none goes to
``outbox.dead`` with the reason. Events of the bounce listener (provider ``smtp``) come from
mail anyone can send: the listener publishes only reports proven to concern a job we sent
(signed VERP address, ``trust`` ``signed``; or our quoted Message-ID, ``quoted``; and the
job's own recipient), always with their account and job, so one without both (or a ``quoted``
one from anywhere without both) is not applied at all: it goes to ``outbox.dead``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from sender.account_events import publish_transition
from sender.bus import Bus
from sender.metrics import Metrics
from sender.models import status_event
from sender.pipeline import RedisCalls
from sender.provider_events import QUOTED, InvalidEvent, ProviderEvent
from sender.recipient_events import Change, RecipientEvents
from sender.settle import Settle
from suppression import channels, entries
from suppression.gate import Counts, Gate
from suppression.handover import Handover, check
from suppression.roundtrip import Client
from suppression.store import SuppressionStore

log = logging.getLogger("outbox.events")

#: the routing key of a provider event's dead letter (``sender.deadletters.EVENTS_KEY``)
DEAD_KEY = "events"
#: ``webhooks.providers.dsn.PROVIDER``: the events of the ``outbox bounces`` listener
LISTENER_PROVIDER = "smtp"
_STATUS = {"delivered": "delivered", "bounced": "bounced", "soft_bounced": "soft_bounced",
           "complained": "complained", "unsubscribed": "unsubscribed", "failed": "failed"}


def _effects(event: ProviderEvent) -> tuple[Counts, str | None]:
    """What an event adds to the counters, and which suppression it leaves ("" = none)."""
    if event.trust == QUOTED:
        _, suppress = _signed_effects(event)
        return Counts(), "" if suppress == "" else entries.REPORTED
    return _signed_effects(event)


def _signed_effects(event: ProviderEvent) -> tuple[Counts, str | None]:
    if event.type == "bounced" and event.kind == "hard":
        return Counts(hard=1), None  # None: the hard bounce's own global entry
    if event.type == "complained":
        return Counts(complaints=1), None if event.kind == "complaint" else ""
    if event.type == "unsubscribed":
        return Counts(), channels.get(event.channel).opt_out
    return Counts(), ""


def _source(event: ProviderEvent) -> str:
    """What a suppression entry names as its source: the job (``job:<id>``, as a bounce at
    send time does), else the provider's event (``<provider>:<event id>``)."""
    return f"job:{event.job_id}" if event.job_id else f"{event.provider}:{event.event_id}"


def job_metadata(kept: str) -> dict[str, Any]:
    """The job's ``metadata`` from what the job hash keeps (``{}`` when nothing, or nothing
    readable, was kept)."""
    try:
        value = json.loads(kept) if kept else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def evidence(event: ProviderEvent) -> str:
    """What a suppression made from an event keeps as its ``detail``, so support can say why
    before reactivating: the server's words, the report's own Message-ID (a bounce by mail),
    and when the report was received."""
    raw = event.raw if isinstance(event.raw, dict) else {}
    parts = [str(event.diagnostic or event.reason or "")[:500],
             f"report {raw['report_message_id']}" if raw.get("report_message_id") else "",
             f"received {event.at}" if event.at else "",
             _quoted_evidence(raw) if event.trust == QUOTED else ""]
    return " | ".join(p for p in parts if p)


def _quoted_evidence(raw: dict[str, Any]) -> str:
    """What a ``quoted`` report rests on: what it quoted, and who sent it to us."""
    seen = raw.get("evidence")
    if not isinstance(seen, dict):
        return "quoted our Message-ID only (no signed VERP address)"
    return (f"quoted Message-ID {str(seen.get('quoted_message_id'))[:200]} and X-Outbox-Account "
            f"{str(seen.get('quoted_account'))[:130]}, no signed VERP address; from "
            f"{str(seen.get('peer'))[:64]} (MAIL FROM {str(seen.get('mail_from'))[:200]}, "
            f"RCPT TO {str(seen.get('rcpt_to'))[:300]})")


#: what ``post_send``'s ``applied`` means for a job's line
_RESULTS = {1: "applied", 0: "superseded", -1: "duplicate"}


def _job_fields(event: ProviderEvent, status: str) -> dict[str, Any]:
    """The fields of a job's line for a provider event: the names of the pipeline's line."""
    return {"job_id": event.job_id, "account_id": event.account_id, "channel": event.channel,
            "status": status or None, "reason": event.reason, "provider": event.provider,
            "detail": event.diagnostic, "event": event.type, "event_id": event.event_id,
            "trust": event.trust}


def log_job_event(event: ProviderEvent, status: str, *, applied: int | None) -> None:
    """One line for a provider event of a job, so the job's id tells its whole story after
    its "sent" line: INFO (``result`` ``applied``, or ``superseded`` when the job already had
    a later status); DEBUG for a duplicate and for events that record nothing (accepted,
    opened, clicked: ``applied`` None)."""
    result = "recorded nothing" if applied is None else _RESULTS.get(applied, str(applied))
    level = logging.INFO if applied in (0, 1) else logging.DEBUG
    log.log(level, "job %s %s: %s event, %s", event.job_id, status or event.type,
            event.provider, result, extra={**_job_fields(event, status), "result": result})


class EventApplier:
    """Applies one provider event per delivery from ``outbox.events``."""

    def __init__(self, *, bus: Bus, gate: Gate, store: SuppressionStore, redis: Client,
                 metrics: Metrics, redis_call: RedisCalls | None = None,
                 settle: Settle | None = None, sms_region: str = "HK",
                 recipients: RecipientEvents | None = None) -> None:
        """``gate``: the pipeline's own; ``redis``: what the job's record is read with;
        ``redis_call``: the pipeline's too, so an event is held (not acked) and retried while
        Redis is down, like a job. ``recipients``: where unsubscribes, complaints and START
        are announced to the CRM (once, confirmed; a publish that fails raises, so the event
        goes back to its queue and the retry publishes it). ``settle``: the worker's, shared
        with the pipeline (default one ack per delivery)."""
        self._recipients = recipients
        self._bus = bus
        self._gate = gate
        self._redis = redis
        self._region = sms_region
        self._store = store
        self._metrics = metrics
        self._redis_call = redis_call
        self.settle = settle or Settle(bus)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Decode, validate, apply and ack; an invalid or inapplicable event is dead-lettered
        with the reason."""
        if self._redis_call is None:
            await self._handle(message)
        else:
            await self._redis_call(lambda: self._handle(message))

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = ProviderEvent.from_json(message.body)
        except InvalidEvent as exc:
            await self._dead(message, f"invalid provider event: {exc}")
            return
        problem = await self.apply(event)
        if problem:
            await self._dead(message, problem)
            return
        await self.settle.ack(message)

    async def unexpected(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        """An exception nobody expected while applying an event: back to its queue a bounded
        number of times, then ``outbox.dead`` with the exception as the reason
        (:meth:`sender.settle.Settle.unexpected`); no job status moves (the event changed
        nothing, or its change stands)."""
        await self.settle.unexpected(message, exc, DEAD_KEY)

    async def apply(self, event: ProviderEvent) -> str | None:
        """Apply one event; returns why it could not be, or None."""
        counts, suppress = _effects(event)
        account, job = event.account_id, event.job_id
        if event.type == "other" and event.reason == "sms_start":
            return await self._opt_in(event)
        if (event.provider == LISTENER_PROVIDER or event.trust == QUOTED) \
                and not (account and job):
            return "a bounce listener event that names no account and job is not believed"
        if not account:
            return await self._unattributed(event, counts)
        result = "applied"
        if job:
            verdict = await self._handover(event, account, job)
            if verdict.ignored:
                return None
            if verdict is Handover.UNKNOWN_JOB:  # no job to change: as an event naming none
                if event.provider == LISTENER_PROVIDER or event.trust == QUOTED:
                    return "a bounce listener event for a job no longer remembered is not " \
                           "believed (as the listener itself refuses one)"
                job, result = None, verdict.value
        if event.trust == QUOTED:
            await self._quoted(event, suppress)
            return None
        status = _STATUS.get(event.type, "")
        if not status and not counts.hard and not counts.complaints:
            if job:
                log_job_event(event, "", applied=None)
            return None  # accepted / opened / clicked: nothing to record
        recorded = await self._gate.post_send(
            account, job or f"event-{event.event_id}", status=status if job else "",
            attempt=0, provider=event.provider,
            provider_message_id=event.provider_message_id, channel=event.channel,
            reason=event.reason, counts=counts, address=event.recipient or "",
            suppress=suppress, source=_source(event), detail=evidence(event),
            event_id=f"{event.provider}:{event.event_id}", note=event.diagnostic)
        self._metrics.provider_events.labels(event.provider, event.type,
                                             "duplicate" if recorded.applied < 0 else
                                             result).inc()
        if job:
            log_job_event(event, status, applied=recorded.applied)
        if recorded.transition is not None:  # e.g. blocked by a complaint: logged, published
            self._metrics.account_transitions.labels(recorded.transition.from_state,
                                                     recorded.transition.to_state).inc()
            await publish_transition(self._bus, recorded.transition, event.channel)
        await self._announce(event, account)
        if job and status and recorded.applied == 1:
            await self._bus.publish_event(status_event(
                job_id=job, account_id=account, channel=event.channel,
                status=status,
                reason=event.reason, detail=event.diagnostic, provider=event.provider,
                provider_message_id=event.provider_message_id, attempt=0,
                metadata=job_metadata(recorded.metadata)))
            self._metrics.jobs.labels(event.channel, status).inc()
        return None

    async def _quoted(self, event: ProviderEvent, suppress: str | None) -> None:
        """A report that only quotes our headers: the account's own entry for its recipient
        (when a signed one would suppress), once per event; no status, no count."""
        if suppress:
            recorded = await self._gate.post_send(
                str(event.account_id), str(event.job_id), status="", attempt=0,
                provider=event.provider, channel=event.channel, reason=event.reason,
                address=event.recipient or "", suppress=suppress, source=_source(event),
                detail=evidence(event), event_id=f"{event.provider}:{event.event_id}")
            result = "duplicate" if recorded.applied < 0 else "quoted"
        else:
            result = "quoted"
        self._metrics.provider_events.labels(event.provider, event.type, result).inc()
        log.info("job %s %s: report that only quotes our Message-ID, applied to account %s "
                 "alone", event.job_id, event.type, event.account_id,
                 extra={**_job_fields(event, ""), "result": result, "type": event.type,
                        "suppress": suppress or ""})

    async def _handover(self, event: ProviderEvent, account: str, job: str) -> Handover:
        """The job's record's verdict on ``event`` (:mod:`suppression.handover`); an event
        it ignores is counted and logged here."""
        verdict, why = await check(self._redis, account, job, event.recipient,
                                   event.channel, region=self._region)
        if verdict.ignored:
            self._metrics.provider_events.labels(event.provider, event.type,
                                                 verdict.value).inc()
            log.warning("%s %s event ignored: %s", event.provider, event.type, why, extra={
                "provider": event.provider, "type": event.type, "account_id": account,
                "job_id": job, "recipient": event.recipient, "result": verdict.value})
        return verdict

    async def _unattributed(self, event: ProviderEvent, counts: Counts) -> str | None:
        """No account: a fact about the address is still a fact; a choice needs an account."""
        if (counts.hard or counts.complaints) and event.recipient:
            reason = "hard_bounce" if counts.hard else "complaint"
            await self._gate.suppress_address(event.channel, event.recipient, reason=reason,
                                              source=_source(event), detail=evidence(event))
            await self._announce(event, None)
            return None
        if event.type == "unsubscribed":
            return "an unsubscribe that names no account cannot be applied"
        return None

    async def _opt_in(self, event: ProviderEvent) -> str | None:
        if not event.account_id or not event.recipient:
            return "an SMS START that names no account cannot be applied"
        removed = await self._store.remove(event.recipient, channel="sms",
                                           account_id=event.account_id, actor="recipient",
                                           reason="replied START")
        if self._recipients is not None:  # consent stays as STOP left it: revoked
            await self._recipients.announce(Change(event.account_id, "sms", event.recipient,
                                                   "resubscribed", "sms_start",
                                                   removed=bool(removed)))
        return None

    async def _announce(self, event: ProviderEvent, account: str | None) -> None:
        """The recipient event of an unsubscribe or complaint (``sender.recipient_events``)."""
        if self._recipients is not None:
            await self._recipients.from_provider_event(event, account)

    async def _dead(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.warning("provider event not applied: %s", reason)
        await self.settle.dead_letter(message, reason, DEAD_KEY)
