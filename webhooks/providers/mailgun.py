"""Mailgun webhooks: signature check and events. Pure: no I/O.

Mailgun posts ``application/json``: ``{"signature": {"timestamp", "token", "signature"},
"event-data": {...}}``. ``signature`` is the hex HMAC-SHA256 of ``timestamp`` + ``token``
keyed with the webhook signing key. It does not cover ``event-data``: the server must refuse
old timestamps and tokens it has seen (replays of a captured signature with another body).

``event-data.event`` → ``ProviderEvent.type`` (kind and reason from the classifier, keyed by
``severity`` and ``reason``; ``delivery-status`` code and message are the diagnostic reply):

==========================================  ==============================================
``delivered``                                ``delivered``
``failed``, kind ``hard``                    ``bounced`` (``severity`` permanent)
``failed``, other kinds                      ``soft_bounced`` (temporary — a reply that
                                             reads permanent is then kind ``soft``: Mailgun
                                             retries; permanent policy blocks, ``old``)
``complained``                               ``complained``
``unsubscribed``                             ``unsubscribed``
``rejected``                                 ``failed`` (Mailgun refused to send it: reason
                                             ``rejected``, no kind; ``reject.reason`` and
                                             ``reject.description`` are the diagnostic)
``accepted``                                 ``accepted``
``opened`` / ``clicked``                     ``opened`` / ``clicked``
anything else (``stored``…)                  ``other``
==========================================  ==============================================

``message.headers.message-id`` is the message's Message-ID without its angle brackets; the job
is the ``outbox_job`` user variable (``X-Mailgun-Variables`` over SMTP), else the Message-ID's
local part when it reads ``job-id@domain``. The account is the ``outbox_account`` user variable.
The event id is Mailgun's ``event-data.id``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any

from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from suppression import ids
from suppression.classify import Outcome, classify_provider
from webhooks.providers.base import PayloadError, json_body, safe_id

PROVIDER = "mailgun"
_MESSAGE_ID = re.compile(rf"^<?({ids.PATTERN})@[^<>@\s]+>?$")
_SIMPLE = {"delivered": "delivered", "complained": "complained", "unsubscribed": "unsubscribed",
           "accepted": "accepted", "opened": "opened", "clicked": "clicked"}
_OUTCOMES = {"delivered": Outcome(None, "delivered"),
             "complained": Outcome("complaint", "feedback"),
             "unsubscribed": Outcome(None, "unsubscribe")}


def verify(timestamp: str, token: str, signature: str, signing_key: str) -> bool:
    """Whether ``signature`` is HMAC-SHA256(``signing_key``, ``timestamp`` + ``token``) in hex,
    compared in constant time. Freshness and replay are the caller's. Mailgun's three values
    are ASCII (digits, hex): any other character makes the request unsigned, not an error."""
    signed = (timestamp, token, signature)
    if not (all(signed) and signing_key) or not all(v.isascii() for v in signed):
        return False
    expected = hmac.new(signing_key.encode(), f"{timestamp}{token}".encode(),
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())


def decode(body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON body, with ``signature`` (timestamp, token and signature as strings) and
    ``event-data`` checked present. :class:`PayloadError` otherwise."""
    data = json_body(body, content_type, "Mailgun")
    if not isinstance(data, dict) or not isinstance(data.get("event-data"), dict):
        raise PayloadError("no event-data object")
    sig = data.get("signature")
    if not isinstance(sig, dict) or not all(sig.get(k) for k in ("timestamp", "token",
                                                                 "signature")):
        raise PayloadError("no signature object with timestamp, token and signature")
    data["signature"] = {k: str(v) for k, v in sig.items()}
    return data


def parse(body: bytes, content_type: str) -> list[ProviderEvent]:
    """The one event of a webhook body; :class:`PayloadError` if it is malformed."""
    data = decode(body, content_type)
    event = data["event-data"]
    name = str(event.get("event") or "").lower()
    if not name:
        raise PayloadError("event-data without event")
    outcome, event_type, diagnostic = _outcome(name, event)
    headers = (event.get("message") or {}).get("headers") or {}
    message_id = str(headers.get("message-id") or "").strip() or None
    variables = event.get("user-variables") or {}
    match = _MESSAGE_ID.match(message_id or "")
    recipient = str(event.get("recipient") or "").strip().lower() or None
    return [ProviderEvent(
        provider=PROVIDER, type=event_type, channel="email", recipient=recipient,
        provider_message_id=message_id, message_id=f"<{message_id.strip('<>')}>"
        if message_id else None,
        job_id=safe_id(_var(variables, "outbox_job") or (match.group(1) if match else None)),
        kind=outcome.kind, reason=outcome.reason, diagnostic=diagnostic, at=_iso(event),
        event_id=str(event.get("id") or _fallback_id(event)),
        account_id=safe_id(_var(variables, "outbox_account")))]


def _outcome(name: str, event: dict[str, Any]) -> tuple[Outcome, str, str | None]:
    if name == "failed":
        status = event.get("delivery-status") or {}
        reply = " ".join(str(status.get(k) or "") for k in ("code", "message")).strip()
        detail = reply or str(status.get("description") or "").strip() or None
        severity = str(event.get("severity") or "").lower()
        outcome = classify_provider(PROVIDER, severity, event.get("reason"), detail)
        if outcome.kind == "hard" and severity != "permanent":  # Mailgun retries it
            outcome = dataclasses.replace(outcome, kind="soft")
        kind_type = {"hard": "bounced", "complaint": "complained"}.get(outcome.kind or "")
        return outcome, kind_type or "soft_bounced", (detail or name)[:500]
    if name in _OUTCOMES:
        status = event.get("delivery-status") or {}
        detail = " ".join(str(status.get(k) or "") for k in ("code", "message")).strip()
        return _OUTCOMES[name], _SIMPLE[name], detail or None
    if name == "rejected":  # never sent: not a bounce, nothing learnt about the address
        reject = event.get("reject")
        reject = reject if isinstance(reject, dict) else {}
        words = " — ".join(str(reject[k]).strip() for k in ("reason", "description")
                           if str(reject.get(k) or "").strip())
        return Outcome(None, "rejected"), "failed", (words or name)[:500]
    detail = event.get("url")
    text = str(detail)[:500] if detail else None  # a signed payload may still hold any JSON
    return Outcome(None, "undefined"), _SIMPLE.get(name, "other"), text


def _var(variables: Any, name: str) -> str | None:
    value = variables.get(name) if isinstance(variables, dict) else None
    return str(value) if value not in (None, "") else None




def _fallback_id(event: dict[str, Any]) -> str:
    seed = json.dumps(event, sort_keys=True, default=str)
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def _iso(event: dict[str, Any]) -> str:
    try:
        when = datetime.fromtimestamp(float(event["timestamp"]), UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return utcnow_iso()
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
