"""What every provider module returns: one normalised :class:`ProviderEvent` per recipient and
happening (DESIGN.md, "Webhook providers"), and :class:`PayloadError` for a body it cannot read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

EventType = Literal[
    "delivered",
    "bounced",
    "soft_bounced",
    "complained",
    "unsubscribed",
    "accepted",
    "opened",
    "clicked",
    "other",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class PayloadError(ValueError):
    """The webhook body is malformed (wrong content type, not decodable, a required field
    missing); the message says what is wrong. The server answers 400 and changes nothing."""


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """One thing a provider says happened to one message for one recipient.

    ``kind`` and ``reason`` are the outcome classifier's (``suppression.classify``);
    ``event_id`` is stable for the same happening, so the server can deduplicate;
    ``job_id``/``message_id``/``account_id`` are filled when the payload carries them, else the
    server recovers them from ``provider_message_id``; ``raw`` is the provider's payload.
    """

    provider: str
    type: str
    recipient: str | None
    provider_message_id: str | None
    message_id: str | None
    job_id: str | None
    kind: str | None
    reason: str | None
    diagnostic: str | None
    at: str
    event_id: str
    account_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (as published on ``outbox.events``)."""
        return dataclasses.asdict(self)
