"""What the provider modules share: :class:`PayloadError` for a body they cannot read, and the
helpers that read ids and JSON bodies. What they return, one
:class:`sender.provider_events.ProviderEvent` per recipient and happening, is the contract of
``outbox.events`` and lives beside the worker that applies it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from suppression import ids, json_limits


class PayloadError(ValueError):
    """The webhook body is malformed (wrong content type, not decodable, a required field
    missing); the message says what is wrong. The server answers 400 and changes nothing."""


#: JSON nested deeper than this is refused: no provider's payload comes near it (SES and
#: Mailgun nest about six levels), and a deeper one only costs stack and CPU downstream
MAX_DEPTH = json_limits.MAX_DEPTH

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
    return loads_json(body, "body")


def loads_json(text: bytes | str, what: str) -> Any:
    """``text`` decoded as JSON, at most :data:`MAX_DEPTH` deep and every number finite;
    :class:`PayloadError` naming ``what`` otherwise. Never RecursionError: a hostile depth
    (``[[[[...``) is a bad payload (400), not a server error."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise PayloadError(f"{what} is not JSON: {exc}"[:300]) from None
    except RecursionError:
        raise PayloadError(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    problem = _unreadable(data)
    if problem:
        raise PayloadError(f"{what} is {problem}")
    return data


def _unreadable(data: Any) -> str | None:
    """Why decoded JSON is refused (too deep, a number out of range), or None
    (:func:`suppression.json_limits.problem`)."""
    found = json_limits.problem(data)
    if found == "too_deep":
        return f"nested more than {MAX_DEPTH} levels deep"
    return "JSON with a number out of range (not finite)" if found else None
