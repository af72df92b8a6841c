"""What every provider module returns: one normalised :class:`ProviderEvent` per recipient and
happening (DESIGN.md, "Webhook providers"), and :class:`PayloadError` for a body it cannot read.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sender.models import SAFE_ID

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


#: ``<job-id@domain>`` as Outbox writes Message-IDs; group 1 is the job id.
MESSAGE_ID = re.compile(r"<([A-Za-z0-9][A-Za-z0-9._\-]{0,127})@[^<>@\s]+>")
_SAFE_ID = re.compile(SAFE_ID)


def safe_id(value: Any) -> str | None:
    """``value`` as a job or account id if it is one (``[A-Za-z0-9._-]``), else None."""
    text = str(value or "").strip()
    return text if _SAFE_ID.match(text) else None


def json_body(body: bytes, content_type: str, provider: str) -> Any:
    """The decoded JSON of a webhook that must be ``application/json``; PayloadError else."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise PayloadError(f"{provider} webhooks are application/json, not {content_type!r}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
