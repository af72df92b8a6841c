"""Status events for support actions on an account (unblock, suspend, unsuspend).

Published on ``outbox.status`` as ``account.<state>`` with id ``<account>:<audit id>``, so the
CRM sees every state change, whoever made it. Used by the CLI (``outbox accounts unblock``)
and the admin API alike; the worker publishes its automatic blocks itself.
"""

from __future__ import annotations

import json
from typing import Any

from sender import topology
from sender.bus import Bus
from sender.models import status_event
from suppression.store import Change


def account_event(change: Change, *, action: str, actor: str, reason: str) -> dict[str, Any]:
    """The status event of one support action."""
    return status_event(
        job_id=f"{change.account_id}:{change.audit_id}", account_id=change.account_id,
        channel=None, status=change.to_state, reason=reason,  # type: ignore[arg-type]
        detail=f"{actor}: {reason}", attempt=0, action=action, actor=actor,
        probation_until=change.probation_until, **{"from": change.from_state})


async def publish_account_event(bus: Bus, change: Change, *, action: str, actor: str,
                                reason: str) -> dict[str, Any]:
    """Publish the event of ``change`` (confirmed) and return it; raises
    :class:`sender.bus.PublishFailed` when the broker does not take it."""
    event = account_event(change, action=action, actor=actor, reason=reason)
    await bus.publish(topology.STATUS_EXCHANGE, f"account.{change.to_state}",
                      json.dumps(event, ensure_ascii=False).encode(), message_id=event["id"])
    return event
