"""Postmark webhooks: events. Pure: no I/O. Postmark signs nothing: the webhook URL carries
HTTP basic auth credentials, and the server checks them (:func:`basic_auth_ok`).

Postmark posts one JSON record (``application/json``) per request; a JSON array of records
is read too. ``RecordType`` → ``ProviderEvent.type``:

=============================================  ===========================================
``Bounce``, classifier kind ``hard``            ``bounced`` (``Type``, or ``TypeCode`` when
                                                ``Type`` is missing, and the ``Details``
                                                reply → kind, reason)
``Bounce``, kind ``complaint``                  ``complained``
``Bounce``, other kinds                         ``soft_bounced`` (SoftBounce, Transient,
                                                DnsError, SpamNotification, Blocked…)
``Bounce``, AutoResponder/Subscribe             ``other`` (not a failure)
``Bounce``, Unsubscribe                         ``unsubscribed`` (the recipient asked)
``SpamComplaint``                               ``complained``
``Delivery``                                    ``delivered``
``SubscriptionChange``, ``SuppressSending``     ``bounced`` (kind ``hard``) / ``complained``,
true, reason ``HardBounce`` / ``SpamComplaint``  as the Bounce / SpamComplaint record
``SubscriptionChange``, ``SuppressSending``     ``unsubscribed`` when the recipient asked
true, reason ``ManualSuppression``              (``Origin`` ``Recipient``: Postmark's
                                                unsubscribe link); else ``other`` (made by
                                                the customer or a Postmark admin: nothing
                                                the recipient said)
``SubscriptionChange``, reactivation            ``other``
``Open`` / ``Click``                            ``opened`` / ``clicked``
anything else                                   ``other``
=============================================  ===========================================

A hard bounce or a spam complaint reaches us twice, as its Bounce / SpamComplaint record and
as the SubscriptionChange that suppressed the address: both get one event id, from the
message, the recipient and the type, so the worker applies it once (counted once).

``MessageID`` is Postmark's id, not the Message-ID header; the job and account are the
``outbox_job`` and ``outbox_account`` metadata (``X-PM-Metadata-outbox_job`` over SMTP).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
from datetime import UTC, datetime
from typing import Any

from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from suppression.classify import Outcome, classify_provider
from webhooks.providers.base import PayloadError, json_body, safe_id

PROVIDER = "postmark"
#: Postmark's bounce TypeCodes, for a record that has the code but not the name.
TYPE_CODES = {
    1: "HardBounce", 2: "Transient", 16: "Unsubscribe", 32: "Subscribe", 64: "AutoResponder",
    128: "AddressChange", 256: "DnsError", 512: "SpamNotification", 1024: "OpenRelayTest",
    2048: "Unknown", 4096: "SoftBounce", 8192: "VirusNotification",
    16384: "ChallengeVerification", 100000: "BadEmailAddress", 100001: "SpamComplaint",
    100002: "ManuallyDeactivated", 100003: "Unconfirmed", 100006: "Blocked",
    100007: "SMTPApiError", 100008: "InboundError", 100009: "DMARCPolicy",
    100010: "TemplateRenderingFailed",
}
#: the Types in which Postmark itself calls the failure permanent (a ``Details`` reply that
#: reads permanent in any other Type is kind ``soft``: Postmark did not give up)
_HARD_TYPES = frozenset({"hardbounce", "bademailaddress", "manuallydeactivated", "addresschange"})
_NOT_FAILURES = frozenset({"autoresponder", "subscribe"})
#: the classifier's kinds that are a failure of their own event type (any other: soft)
_KIND_TYPES = {"hard": "bounced", "complaint": "complained"}
#: SubscriptionChange reasons that are a hard bounce or a complaint (classified like a Bounce
#: record of that Type): the same event as Postmark's own Bounce / SpamComplaint record
_SUPPRESSION_REASONS = frozenset({"HardBounce", "SpamComplaint"})
_SIMPLE = {"Delivery": ("delivered", "DeliveredAt"), "Open": ("opened", "ReceivedAt"),
           "Click": ("clicked", "ReceivedAt")}


def basic_auth_ok(authorization: str | None, user: str, password: str) -> bool:
    """Whether an ``Authorization: Basic …`` header names ``user`` and ``password``
    (both compared in constant time)."""
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        given_user, sep, given_password = base64.b64decode(
            encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return False
    user_ok = hmac.compare_digest(given_user.encode(), user.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    return bool(sep) and user_ok and password_ok


def parse(body: bytes, content_type: str) -> list[ProviderEvent]:
    """The events of one webhook body; :class:`PayloadError` if it is not JSON records with
    a ``RecordType``."""
    data = json_body(body, content_type, "Postmark")
    records = data if isinstance(data, list) else [data]
    if not records or not all(isinstance(r, dict) and r.get("RecordType") for r in records):
        raise PayloadError("Postmark record without RecordType")
    return [_event(record) for record in records]


def _event(record: dict[str, Any]) -> ProviderEvent:
    record_type = str(record["RecordType"])
    if record_type == "Bounce":
        outcome, event_type, diagnostic, when = _bounce(record)
    elif record_type == "SpamComplaint":
        outcome, event_type = Outcome("complaint", "feedback"), "complained"
        diagnostic, when = record.get("Details") or "spam complaint", record.get("BouncedAt")
    elif record_type == "SubscriptionChange":
        outcome, event_type, diagnostic = _subscription(record)
        when = record.get("ChangedAt")
    else:
        event_type, time_key = _SIMPLE.get(record_type, ("other", "ReceivedAt"))
        outcome = Outcome(None, "delivered" if event_type == "delivered" else "undefined")
        diagnostic = record.get("Details") or record.get("OriginalLink") or record_type
        when = record.get(time_key)
    recipient = str(record.get("Email") or record.get("Recipient") or "").strip().lower()
    metadata = record.get("Metadata") or {}
    return ProviderEvent(
        provider=PROVIDER, type=event_type, channel="email", recipient=recipient or None,
        provider_message_id=str(record.get("MessageID") or "") or None, message_id=None,
        job_id=_meta(metadata, "outbox_job"), kind=outcome.kind, reason=outcome.reason,
        diagnostic=str(diagnostic or "")[:500] or None, at=_iso(when),
        event_id=_event_id(record, record_type, event_type, recipient, when),
        account_id=_meta(metadata, "outbox_account"))


def _bounce(record: dict[str, Any]) -> tuple[Outcome, str, str | None, Any]:
    name = str(record.get("Type") or TYPE_CODES.get(_int(record.get("TypeCode")), "Unknown"))
    details = str(record.get("Details") or "").strip()
    reply = details.split(";", 1)[1].strip() if details.lower().startswith("smtp;") else details
    outcome = classify_provider(PROVIDER, name, None, reply or None)
    if outcome.kind == "hard" and name.lower() not in _HARD_TYPES:
        outcome = dataclasses.replace(outcome, kind="soft")
    if name.lower() in _NOT_FAILURES:
        event_type = "other"
    elif name.lower() == "unsubscribe":  # the recipient replied asking to be removed
        outcome, event_type = Outcome(None, "unsubscribe"), "unsubscribed"
    else:
        event_type = _KIND_TYPES.get(outcome.kind or "", "soft_bounced")
    diagnostic = details or record.get("Description") or name
    return outcome, event_type, diagnostic, record.get("BouncedAt")


def _subscription(record: dict[str, Any]) -> tuple[Outcome, str, str]:
    reason = str(record.get("SuppressionReason") or "")
    origin = str(record.get("Origin") or "")
    detail = f"{'suppress' if record.get('SuppressSending') else 'reactivate'} {reason} {origin}"
    if not record.get("SuppressSending"):
        return Outcome(None, "undefined"), "other", detail.strip()
    if reason in _SUPPRESSION_REASONS:
        outcome = classify_provider(PROVIDER, reason)
        return outcome, _KIND_TYPES.get(outcome.kind or "", "other"), detail.strip()
    if reason == "ManualSuppression" and origin == "Recipient":
        return Outcome(None, "unsubscribe"), "unsubscribed", detail.strip()
    return Outcome(None, "undefined"), "other", detail.strip()


def _event_id(record: dict[str, Any], record_type: str, event_type: str, recipient: str,
              when: Any) -> str:
    """A hard bounce or complaint: one id per message, recipient and type, whichever record
    says it (Bounce / SpamComplaint, SubscriptionChange). Else Postmark's bounce ``ID`` when
    there is one, else a hash of what names the happening."""
    if event_type in ("bounced", "complained") and record.get("MessageID") and recipient:
        seed = f"{record['MessageID']}|{event_type}|{recipient}"
        return f"{event_type}-{hashlib.sha256(seed.encode()).hexdigest()[:32]}"
    if record.get("ID") and record_type in ("Bounce", "SpamComplaint"):
        return f"{record_type.lower()}-{record['ID']}"
    seed = f"{record.get('MessageID')}|{record_type}|{recipient}|{when}|" \
           f"{record.get('SuppressSending')}|{record.get('OriginalLink')}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def _meta(metadata: Any, name: str) -> str | None:
    return safe_id(metadata.get(name)) if isinstance(metadata, dict) else None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _iso(value: Any) -> str:
    """Postmark's ISO 8601 times carry 7 fractional digits, which Python reads only up to 6."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(value or "")).replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return utcnow_iso()
    if when.tzinfo is None:
        return utcnow_iso()
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
