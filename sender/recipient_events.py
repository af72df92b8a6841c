"""Recipient events: every change of whether a recipient may be contacted, published once on
``outbox.status`` as ``recipient.<channel>.<change>`` (README, "Recipient events")::

    {"v": 1, "type": "recipient", "id", "account_id", "channel", "address", "change",
     "source", "at"}

=======================================  ==============  =====================================
happening                                ``change``      ``source``
=======================================  ==============  =====================================
inbound SMS STOP (Twilio; the worker     unsubscribed    ``sms_stop``; the account's consent
applies it)                                              for the number is revoked
inbound SMS START                        resubscribed    ``sms_start``; consent stays revoked
one-click or page unsubscribe (``/u/``)  unsubscribed    ``one_click`` / ``unsubscribe_page``
a provider's unsubscribe event           unsubscribed    the provider (``sendgrid``...)
a provider's complaint (spam report)     complained      the provider (``ses``...)
support adds an entry (CLI, admin API)   suppressed      ``cli`` / ``admin``
support removes one                      unsuppressed    ``cli`` / ``admin``
=======================================  ==============  =====================================

Once: ``recipient.lua`` keeps, per account (or, for changes that name none, globally) and
recipient, the last change recorded. A change equal to it is no change (a second STOP records
nothing); a removal that removed nothing (START without a STOP) is none either, unless the
record says the recipient was last stopped (a retry after the removal was made). A change is
recorded together with its event in the scope's pending hash, atomically; then the pending
events of the scope are published (confirmed) and removed from the pending hash. The script
hands each pending event to one caller at a time (a claim, released when its publish fails,
taken over after :data:`CLAIM_SECONDS` from a caller that died), so two changes applied at
once do not publish the same event twice. The worker's :class:`PendingSweeper` publishes,
every :data:`SWEEP_SECONDS`, what such a caller left (claimed, never published: a process
killed between the two, a try cancelled by a timeout), so nothing waits for the next change.

When the publish fails the change stays made and its event pending, and the caller says so:
the unsubscribe webhook answers 503 (the form or the mailbox provider posts again), the worker
returns the provider event to its queue (redelivered), the CLI exits 1 and the admin API
answers ``"event_published": false``. The retry finds the change recorded and publishes the
pending event; so does the next change of the same account. An event may be published twice
(confirmed, then Redis lost before the pending field was removed; or a publish slower than
:data:`CLAIM_SECONDS`): its ``id`` (also the ``message_id``) tells.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from sender import topology
from sender.bus import Bus
from sender.models import RECIPIENT_CHANGES, SCHEMA_VERSION, utcnow_iso
from sender.periodic import Periodic
from sender.provider_events import ProviderEvent
from suppression import entries, keys
from suppression.gate import Script
from suppression.replies import text
from suppression.roundtrip import Client
from suppression.script_args import Arguments
from suppression.store import ConsentStore

log = logging.getLogger("outbox.recipients")

#: recipient.lua's ARGV (its header says what each is)
RECIPIENT_ARGS = Arguments.declare("recipient", rest="unforced_by", change="str", id="str",
                                   event="str", at="str", source="str", forced="flag",
                                   stale="num")
_RECIPIENT = Script("recipient", RECIPIENT_ARGS)
#: the changes that stop messages to a recipient
STOPPING = ("unsubscribed", "complained", "suppressed")
#: a removal that found nothing to remove is still the change when the record says the
#: recipient was last stopped by one of these (the removal was made, its event not recorded)
_UNDOES = {"resubscribed": ("unsubscribed",), "unsuppressed": STOPPING}
#: a pending event claimed for publishing longer ago than this is published by the next caller
#: (its publisher died between the claim and the confirm)
CLAIM_SECONDS = 60
#: seconds between the worker's sweeps for pending events nobody is publishing
SWEEP_SECONDS = 30.0
#: ``ProviderEvent.reason`` of an inbound SMS STOP (``webhooks.providers.routes``)
SMS_STOP = "sms_stop"
#: ``ProviderEvent.provider`` of the ``/u/<token>`` handler's events
UNSUBSCRIBE_PROVIDER = "unsubscribe"


def _scope(account_id: str | None) -> str:
    return account_id or keys.GLOBAL_RECIPIENT_SCOPE


def routing_key(channel: str, change: str) -> str:
    """``recipient.<channel>.<change>``: three words, so a ``*.<status>`` binding of status
    events never takes one; ``recipient.#`` takes them all."""
    return f"recipient.{channel}.{change}"


def new_id() -> str:
    """An event id that sorts by time (pending events are published oldest first)."""
    return f"{time.time_ns():019d}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Change:
    """One change of whether ``address`` may be contacted by ``account_id`` (None: a global
    entry); ``removed``: the write just made removed an entry (removals only)."""

    account_id: str | None
    channel: str
    address: str
    change: str
    source: str
    removed: bool = False

    def event(self, event_id: str, address: str) -> dict[str, Any]:
        """The event as published (``address`` canonical)."""
        return {"v": SCHEMA_VERSION, "type": "recipient", "id": event_id,
                "account_id": self.account_id, "channel": self.channel, "address": address,
                "change": self.change, "source": self.source, "at": utcnow_iso()}


class RecipientEvents:
    """Records recipient changes once (Redis) and publishes their events (confirmed)."""

    def __init__(self, redis: Client, bus: Bus, *, claim_seconds: float = CLAIM_SECONDS) -> None:
        self._redis = redis
        self._bus = bus
        self._claim_ms = int(claim_seconds * 1000)

    async def announce(self, change: Change) -> dict[str, Any] | None:
        """Record ``change`` unless it is none, then publish every pending event of its scope;
        returns the new event (None: no change). :class:`sender.bus.PublishFailed` when the
        broker does not take them: the change stays recorded and its event pending."""
        event, pending = await self.record(change)
        await self.publish(change.account_id, pending)
        return event

    async def record(self, change: Change) -> tuple[dict[str, Any] | None,
                                                     list[tuple[str, bytes]]]:
        """The new event (or None) and the pending ``(id, body)`` of the scope that nobody
        else is publishing, oldest first, now claimed by this caller.
        :class:`suppression.entries.BadEntry` for a bad channel or address."""
        if change.change not in RECIPIENT_CHANGES:
            raise ValueError(f"not a recipient change: {change.change!r}")
        address = entries.canonical(change.channel, change.address)
        event = change.event(new_id(), address)
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        undoes = () if change.removed else _UNDOES.get(change.change, ())
        recorded, pending = await self._run(
            change.account_id, keys.recipient(change.account_id, change.channel, address),
            RECIPIENT_ARGS.argv(dict(
                change=change.change, id=event["id"], event=body, at=event["at"],
                source=change.source, forced=change.removed, stale=self._claim_ms),
                rest=undoes))
        if pending:  # where the sweeper looks (nothing written when nothing changed)
            await self._redis.sadd(keys.RECIPIENT_SCOPES, _scope(change.account_id))
        return (event if recorded else None), pending

    async def sweep(self) -> int:
        """Publish the pending events nobody is publishing (unclaimed, or claimed longer
        than the claim time ago); returns how many. Raises as :meth:`publish`."""
        published = 0
        for member in await self._redis.smembers(keys.RECIPIENT_SCOPES):
            account_id = None if text(member) == keys.GLOBAL_RECIPIENT_SCOPE else text(member)
            pending_key = keys.recipient_pending(account_id)
            if not await self._redis.hlen(pending_key):
                continue
            _, pending = await self._run(account_id, pending_key, RECIPIENT_ARGS.argv(dict(
                change="", id="", event="", at="", source="", forced=False,
                stale=self._claim_ms)))
            await self.publish(account_id, pending)
            published += len(pending)
        return published

    async def _run(self, account_id: str | None, record_key: str,
                   args: list[Any]) -> tuple[bool, list[tuple[str, bytes]]]:
        """recipient.lua: (recorded, the pending events now claimed, oldest first)."""
        reply = [text(x) for x in await _RECIPIENT(
            self._redis, [record_key, keys.recipient_pending(account_id)], args)]
        pending = sorted(zip(reply[1::2], (r.encode() for r in reply[2::2]), strict=True))
        return reply[0] == "1", pending

    async def publish(self, account_id: str | None, pending: list[tuple[str, bytes]]) -> None:
        """Publish each claimed pending event (confirmed), then forget it; when the broker
        refuses one, the claims of those left are released (they stay pending) and
        :class:`sender.bus.PublishFailed` raised."""
        left = list(pending)
        try:
            while left:
                await self._publish_one(account_id, *left[0])
                left.pop(0)
        finally:
            if left:
                await self._release(account_id, [event_id for event_id, _ in left])

    async def _publish_one(self, account_id: str | None, event_id: str, body: bytes) -> None:
        event = json.loads(body)
        await self._bus.publish(topology.STATUS_EXCHANGE,
                                routing_key(event["channel"], event["change"]), body,
                                message_id=event_id)
        await self._redis.hdel(keys.recipient_pending(account_id), f"e:{event_id}",
                               f"c:{event_id}")
        log.info("recipient event %s: account %s, %s (%s)", event["change"],
                 account_id or "-", event["channel"], event["source"],
                 extra={"account_id": account_id, "channel": event["channel"],
                        "change": event["change"], "source": event["source"],
                        "event_id": event_id})

    async def _release(self, account_id: str | None, event_ids: list[str]) -> None:
        """Let the next caller publish these at once (best effort: else after the claim
        time)."""
        try:
            await self._redis.hdel(keys.recipient_pending(account_id),
                                   *(f"c:{event_id}" for event_id in event_ids))
        except (RedisError, OSError) as exc:
            log.warning("recipient events left claimed for %d s: %s", CLAIM_SECONDS, exc)

    async def from_provider_event(self, event: ProviderEvent,
                                  account_id: str | None) -> dict[str, Any] | None:
        """Announce what a signed provider event changed (an unsubscribe, a complaint; an SMS
        STOP revokes the account's consent for the number first); None when nothing."""
        found = provider_change(event)
        if found is None or not event.recipient:
            return None
        change, source = found
        try:  # the entry writer has the same rule: no canonical form, no entry was written
            entries.canonical(event.channel, event.recipient)
        except entries.BadEntry as exc:
            log.warning("no recipient event for an address without a canonical form: %s", exc)
            return None
        if source == SMS_STOP and account_id:
            await self._revoke_consent(account_id, event)
        return await self.announce(Change(account_id, event.channel, event.recipient, change,
                                          source))

    async def _revoke_consent(self, account_id: str, event: ProviderEvent) -> None:
        """STOP revokes consent (once: a repeated STOP leaves the first revocation's record)."""
        consent = ConsentStore(self._redis)
        assert event.recipient is not None
        record = await consent.get(account_id, event.recipient, channel=event.channel)
        if record["status"] != "revoked":
            await consent.revoke(account_id, event.recipient, channel=event.channel,
                                 source=SMS_STOP, actor="recipient",
                                 evidence=f"{event.provider}:{event.event_id}")


def provider_change(event: ProviderEvent) -> tuple[str, str] | None:
    """``(change, source)`` a signed provider event announces, or None: unsubscribes, and
    complaints that suppress (a spam report; not Twilio's carrier filtering)."""
    if event.type == "unsubscribed":
        return "unsubscribed", unsubscribe_source(event)
    if event.type == "complained" and event.kind == "complaint":
        return "complained", event.provider
    return None


def unsubscribe_source(event: ProviderEvent) -> str:
    """``sms_stop``, ``one_click``, ``unsubscribe_page``, or the provider's name."""
    if event.reason == SMS_STOP:
        return SMS_STOP
    if event.provider == UNSUBSCRIBE_PROVIDER:
        return "one_click" if event.diagnostic == "one-click" else "unsubscribe_page"
    return event.provider


class PendingSweeper(Periodic):
    """The worker's task that runs :meth:`RecipientEvents.sweep` every ``period`` seconds
    until stopped; an outage is logged and tried again at the next sweep."""

    name = "recipient events sweep"
    log = log

    def __init__(self, events: RecipientEvents, period: float = SWEEP_SECONDS) -> None:
        super().__init__(period)
        self._events = events

    async def turn(self) -> None:
        published = await self._events.sweep()
        if published:
            log.info("recipient events sweep: %d published", published,
                     extra={"published": published})
