"""What the provider modules share: :class:`PayloadError` for a body they cannot read, and the
helpers that read ids and JSON bodies. What they return, one
:class:`sender.provider_events.ProviderEvent` per recipient and happening, is the contract of
``outbox.events`` and lives beside the worker that applies it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from suppression import ids


class PayloadError(ValueError):
    """The webhook body is malformed (wrong content type, not decodable, a required field
    missing); the message says what is wrong. The server answers 400 and changes nothing."""


#: ``<job-id@domain>`` as Outbox writes Message-IDs; group 1 is the job id.
MESSAGE_ID = re.compile(rf"<({ids.PATTERN})@[^<>@\s]+>")


def safe_id(value: Any) -> str | None:
    """``value`` as a job or account id if it is one (:mod:`suppression.ids`), else None."""
    text = str(value or "").strip()
    return text if ids.is_id(text) else None


def json_body(body: bytes, content_type: str, provider: str) -> Any:
    """The decoded JSON of a webhook that must be ``application/json``; PayloadError else."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise PayloadError(f"{provider} webhooks are application/json, not {content_type!r}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
