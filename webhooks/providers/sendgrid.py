"""Twilio SendGrid Event Webhook: signature check and events. Pure: no I/O.

SendGrid posts a JSON array of events (``application/json``). With the Signed Event Webhook on,
``X-Twilio-Email-Event-Webhook-Signature`` is an ECDSA P-256 / SHA-256 signature (base64 DER)
over the ``X-Twilio-Email-Event-Webhook-Timestamp`` value followed by the raw body, made with
the key whose public half SendGrid shows as base64 DER (SubjectPublicKeyInfo).

``event`` → ``ProviderEvent.type`` (kind and reason from the classifier, keyed by ``event`` and
``type`` — ``bounce``/``blocked`` — or the drop ``reason``; the bounce ``reason``/``status``
is the diagnostic reply that refines a generic verdict):

==========================================  ==============================================
``delivered``                                ``delivered``
``bounce``/``dropped``, kind ``hard``        ``bounced``
``bounce``/``dropped``/``deferred``, other   ``soft_bounced`` (``blocked`` is a policy
                                             block: not the recipient's fault)
``spamreport``                               ``complained``
``unsubscribe``/``group_unsubscribe``        ``unsubscribed``
``processed``                                ``accepted``
``open`` / ``click``                         ``opened`` / ``clicked``
anything else (``group_resubscribe``…)       ``other``
==========================================  ==============================================

A reply that reads permanent in a ``deferred`` or ``blocked`` event is kind ``soft``: SendGrid
retries those. The job is the custom argument ``outbox_job``, else ``<job-id@domain>`` in
``smtp-id`` (the message's own Message-ID); the account is the custom argument
``outbox_account`` (custom arguments, set with ``X-SMTPAPI`` ``unique_args`` over SMTP, arrive
as top-level keys). ``sg_event_id`` is the event id.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from suppression.classify import Outcome, classify_provider
from webhooks.providers.base import (
    MESSAGE_ID,
    PayloadError,
    json_body,
    safe_id,
)

PROVIDER = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

_SIMPLE = {"delivered": "delivered", "processed": "accepted", "open": "opened",
           "click": "clicked", "spamreport": "complained", "unsubscribe": "unsubscribed",
           "group_unsubscribe": "unsubscribed"}
_FAILURES = frozenset({"bounce", "dropped", "deferred", "blocked"})


def load_public_key(public_key: str) -> ec.EllipticCurvePublicKey | None:
    """The P-256 key of a base64 DER SubjectPublicKeyInfo (PEM armour tolerated), or None."""
    text = "".join(line for line in public_key.strip().splitlines() if not line.startswith("-----"))
    try:
        key = load_der_public_key(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return None
    return key


def verify(payload: bytes, signature: str, timestamp: str, public_key: str) -> bool:
    """Whether ``signature`` signs ``timestamp`` + ``payload`` (the raw body, byte for byte)
    with the private half of ``public_key``. Freshness of ``timestamp`` is the caller's."""
    key = load_public_key(public_key or "")
    if key is None or not signature or not timestamp:
        return False
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, timestamp.strip().encode("utf-8") + payload, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def parse(body: bytes, content_type: str) -> list[ProviderEvent]:
    """One :class:`ProviderEvent` per element of the posted array; :class:`PayloadError` if
    the body is not a JSON array of objects with ``event`` and ``email``."""
    items = json_body(body, content_type, "SendGrid")
    if not isinstance(items, list):
        raise PayloadError("SendGrid posts a JSON array of events")
    return [_event(item) for item in items]


def _event(item: Any) -> ProviderEvent:
    if not isinstance(item, dict) or not item.get("event") or not item.get("email"):
        raise PayloadError("SendGrid event without event or email")
    name = str(item["event"]).lower()
    outcome, event_type, diagnostic = _outcome(name, item)
    smtp_id = str(item.get("smtp-id") or "").strip() or None
    match = MESSAGE_ID.search(smtp_id or "")
    return ProviderEvent(
        provider=PROVIDER, type=event_type, channel="email",
        recipient=str(item["email"]).strip().lower(),
        provider_message_id=_sg_message_id(item.get("sg_message_id")), message_id=smtp_id,
        job_id=safe_id(item.get("outbox_job") or (match.group(1) if match else None)),
        kind=outcome.kind, reason=outcome.reason, diagnostic=diagnostic, at=_iso(item),
        event_id=str(item.get("sg_event_id") or _fallback_id(item)),
        account_id=safe_id(item.get("outbox_account")))


def _outcome(name: str, item: dict[str, Any]) -> tuple[Outcome, str, str | None]:
    """(outcome, event type, diagnostic) of one event."""
    if name in _FAILURES:
        reply = " ".join(str(item.get(k) or "") for k in ("reason", "status", "response")).strip()
        if name == "dropped":  # never sent: the reason names SendGrid's list, not a reply
            outcome = classify_provider(PROVIDER, name, item.get("reason"))
        else:
            outcome = classify_provider(PROVIDER, name, item.get("type"), reply or None)
        if outcome.kind == "hard" and not _permanent(name, item):
            outcome = dataclasses.replace(outcome, kind="soft")  # SendGrid retries it
        kind_type = {"hard": "bounced", "complaint": "complained"}.get(outcome.kind or "")
        return outcome, kind_type or "soft_bounced", (reply or name)[:500]
    if name == "delivered":
        return Outcome(None, "delivered"), "delivered", (item.get("response") or None)
    if name == "spamreport":
        return Outcome("complaint", "feedback"), "complained", "spamreport"
    if name in ("unsubscribe", "group_unsubscribe"):
        group = item.get("asm_group_id")
        return Outcome(None, "unsubscribe"), "unsubscribed", f"{name} {group or ''}".strip()
    event_type = _SIMPLE.get(name, "other")
    return Outcome(None, "undefined"), event_type, (item.get("url") or None)


def _permanent(name: str, item: dict[str, Any]) -> bool:
    """Whether SendGrid gave up: a ``dropped``, or a ``bounce`` of type ``bounce``."""
    return name == "dropped" or (name == "bounce" and
                                 str(item.get("type") or "bounce").lower() == "bounce")


def _sg_message_id(value: Any) -> str | None:
    """``sg_message_id`` up to ``.filter…`` (the part SendGrid's API returns as X-Message-Id)."""
    text = str(value or "").strip()
    return text.split(".filter", 1)[0] or None




def _fallback_id(item: dict[str, Any]) -> str:
    seed = json.dumps(item, sort_keys=True, default=str)
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def _iso(item: dict[str, Any]) -> str:
    try:
        when = datetime.fromtimestamp(float(item["timestamp"]), UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return utcnow_iso()
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
