"""Status events for every change of an account's state, logged at WARNING as well.

Support actions (unblock, suspend, unsuspend; the CLI and the admin API alike) are published
on ``outbox.status`` as ``account.<state>``; automatic transitions found by the post-send
script (the pipeline after a send, the worker after a provider event: a complaint webhook can
block an account too) as ``<channel>.<state>``, the channel whose rates moved it (actor
``system``). Both with id ``<account>:<audit id>``, so the CRM sees every state change,
whatever caused it, and so does the log (account, from, to, reason).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sender import topology
from sender.bus import Bus
from sender.models import status_event
from suppression.gate import Transition
from suppression.store import Change

log = logging.getLogger("outbox.accounts")


def account_event(change: Change, *, action: str, actor: str, reason: str) -> dict[str, Any]:
    """The status event of one support action."""
    extra: dict[str, Any] = {"from": change.from_state}  # a keyword Python reserves
    return status_event(
        job_id=f"{change.account_id}:{change.audit_id}", account_id=change.account_id,
        channel=None, status=change.to_state, reason=reason,
        detail=f"{actor}: {reason}", attempt=0, action=action, actor=actor,
        probation_until=change.probation_until, **extra)


async def publish_account_event(bus: Bus, change: Change, *, action: str, actor: str,
                                reason: str) -> dict[str, Any]:
    """Publish the event of ``change`` (confirmed) and return it; raises
    :class:`sender.bus.PublishFailed` when the broker does not take it."""
    event = account_event(change, action=action, actor=actor, reason=reason)
    log.warning("account %s: %s -> %s by %s", change.account_id, change.from_state,
                change.to_state, actor, extra={
                    "account_id": change.account_id, "from": change.from_state,
                    "to": change.to_state, "reason": reason, "action": action, "actor": actor,
                    "audit_id": change.audit_id})
    await bus.publish(topology.STATUS_EXCHANGE, f"account.{change.to_state}",
                      json.dumps(event, ensure_ascii=False).encode(), message_id=event["id"])
    return event


def transition_event(t: Transition, channel: str) -> dict[str, Any]:
    """The status event of an automatic transition (``<channel>.<state>``, actor system)."""
    event = status_event(
        job_id=f"{t.account_id}:{t.audit_id}", account_id=t.account_id, channel=channel,
        status=t.to_state, reason=t.reason, detail=f"system: {t.detail}",
        attempt=0, actor="system")
    event["from"] = t.from_state
    return event


async def publish_transition(bus: Bus, t: Transition, channel: str) -> None:
    """Log an automatic transition at WARNING and publish its status event (confirmed;
    :class:`sender.bus.PublishFailed` when the broker does not take it)."""
    log.warning("account %s: %s -> %s (%s)", t.account_id, t.from_state, t.to_state,
                t.reason, extra={
                    "account_id": t.account_id, "from": t.from_state, "to": t.to_state,
                    "reason": t.reason, "detail": t.detail, "channel": channel,
                    "actor": "system", "audit_id": t.audit_id})
    await bus.publish_event(transition_event(t, channel))
