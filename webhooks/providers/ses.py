"""Amazon SES through Amazon SNS: signature check and bounce/complaint/delivery notifications.
Pure: the SNS signing certificate is fetched by :mod:`webhooks.sns_certificates`.

SNS posts a JSON envelope (``Type``: ``Notification``, ``SubscriptionConfirmation`` or
``UnsubscribeConfirmation``) signed by SNS (``SignatureVersion`` 1: SHA1withRSA, 2:
SHA256withRSA) with the key in the X.509 certificate at ``SigningCertURL``. The string to sign
is ``name\\nvalue\\n`` for each of these keys, in this order (the order AWS documents, which is
byte order):

* ``Notification``: ``Message``, ``MessageId``, ``Subject`` (only when present), ``Timestamp``,
  ``TopicArn``, ``Type``;
* ``SubscriptionConfirmation``/``UnsubscribeConfirmation``: ``Message``, ``MessageId``,
  ``SubscribeURL``, ``Timestamp``, ``Token``, ``TopicArn``, ``Type``.

The certificate may come only from ``https://sns.<region>.amazonaws.com/....pem``
(:func:`signing_cert_url_ok`; any other URL is refused before anything is fetched) and must be
within its validity period (:func:`certificate_current`); :func:`verify` trusts the certificate
it is given as it is.

A ``Notification``'s ``Message`` is the SES notification (``notificationType``, or
``eventType`` with event publishing) → ``ProviderEvent.type``, one per recipient:

=========================================  =================================================
``Bounce``, classifier kind ``hard``        ``bounced`` (``bounceType``/``bounceSubType``
                                            and the ``diagnosticCode`` → kind, reason)
``Bounce``, other kinds                     ``soft_bounced`` (Transient, Undetermined: a
                                            reply that reads permanent is kind ``soft``)
``Complaint``                               ``complained`` (kind ``complaint``, ``feedback``)
``Delivery``                                ``delivered``
``DeliveryDelay``                           ``soft_bounced``, kind ``transient``
``Send``                                    ``accepted``
``Reject``                                  ``failed`` (SES found a virus and did not send
                                            it: reason ``virusdetected``, no kind)
``Rendering Failure``                       ``failed`` (the template did not render, so
                                            nothing was sent: reason ``contenterror``)
``Open`` / ``Click``                        ``opened`` / ``clicked``
anything else (``Subscription`` …)          ``other``
=========================================  =================================================

The job is the ``outbox_job`` message tag, else ``<job-id@domain>`` in the original
``Message-ID`` (``mail.headers`` when SES includes original headers, else
``mail.commonHeaders.messageId``); the account is the ``X-Outbox-Account`` header or the
``outbox_account`` tag.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from suppression.classify import Outcome, classify_provider
from webhooks.providers.base import (
    MESSAGE_ID,
    PayloadError,
    loads_json,
    safe_id,
)

PROVIDER = "ses"
NOTIFICATION = "Notification"
CONFIRMATION_TYPES = ("SubscriptionConfirmation", "UnsubscribeConfirmation")
_SIGNED_KEYS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    **{t: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
       for t in CONFIRMATION_TYPES},
}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_CERT_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com$")


def signing_cert_url_ok(url: str) -> bool:
    """Whether ``url`` is one SNS signs with: https, host ``sns.<region>.amazonaws.com``,
    default port, no user info, a ``.pem`` path."""
    try:
        parts = urlsplit(url or "")
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme == "https" and _CERT_HOST.fullmatch(parts.hostname or "") is not None
            and port in (None, 443) and parts.username is None and parts.password is None
            and parts.path.endswith(".pem"))


def string_to_sign(message: Mapping[str, Any]) -> bytes | None:
    """The canonical string SNS signed, or None for an unknown ``Type`` or a missing key."""
    keys = _SIGNED_KEYS.get(str(message.get("Type")))
    if keys is None:
        return None
    out = []
    for key in keys:
        value = message.get(key)
        if value is None:
            if key == "Subject":
                continue  # signed only when present
            return None
        out.append(f"{key}\n{value}\n")
    return "".join(out).encode("utf-8")


def verify(message: dict[str, Any], certificate_pem: str) -> bool:
    """Whether the SNS ``message`` (the decoded JSON body) carries a valid SNS signature made
    with the key of ``certificate_pem`` (trusted as it is: fetch it with
    :class:`webhooks.sns_certificates.SnsCertificates`, which checks its URL and validity)."""
    if not isinstance(message, Mapping):
        return False
    algorithm = _HASHES.get(str(message.get("SignatureVersion")))
    data = string_to_sign(message)
    if algorithm is None or data is None:
        return False
    try:
        signature = base64.b64decode(str(message.get("Signature") or ""), validate=True)
    except (binascii.Error, ValueError):
        return False
    return _rsa_verify(certificate_pem, signature, data, algorithm())


def certificate_current(pem: str, now: datetime | None = None) -> bool:
    """Whether ``pem`` is a readable X.509 certificate within its validity period."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        return False
    now = now or datetime.now(UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _rsa_verify(pem: str, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm) -> bool:
    try:
        key = x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()
    except (ValueError, UnicodeEncodeError):
        return False
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        return False
    return True


def decode_envelope(body: bytes, content_type: str = "") -> dict[str, Any]:
    """The SNS envelope as a dict. SNS posts ``text/plain; charset=UTF-8`` (raw message
    delivery off), so the content type is not checked. :class:`PayloadError` if not JSON."""
    envelope = loads_json(body, "SNS body")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("Type"), str):
        raise PayloadError("not an SNS message (no Type)")
    return envelope


def parse(body: bytes, content_type: str) -> list[ProviderEvent]:
    """The events of one SNS ``Notification`` carrying an SES notification; ``[]`` for a
    subscription or unsubscribe confirmation. :class:`PayloadError` for anything else."""
    envelope = decode_envelope(body, content_type)
    if envelope["Type"] in CONFIRMATION_TYPES:
        return []
    if envelope["Type"] != NOTIFICATION:
        raise PayloadError(f"unknown SNS message type {envelope['Type']!r}")
    message = envelope.get("Message")
    if not isinstance(message, str):
        raise PayloadError("SNS Message is not an SES notification (not a string)")
    note = loads_json(message, "SNS Message")
    if not isinstance(note, dict) or not isinstance(note.get("mail"), dict):
        raise PayloadError("SNS Message is not an SES notification (no mail object)")
    kind = note.get("notificationType") or note.get("eventType")
    if not isinstance(kind, str):
        raise PayloadError("SES notification without notificationType/eventType")
    return _events(kind, note, _ids(note["mail"]), str(envelope.get("MessageId") or ""))


def _events(kind: str, note: dict[str, Any], ids: dict[str, str | None],
            seed: str) -> list[ProviderEvent]:
    mail = note["mail"]
    if kind == "Bounce":
        return [_bounce(r, note.get("bounce") or {}, ids) for r in
                _list(note.get("bounce"), "bouncedRecipients")]
    if kind == "Complaint":
        complaint = note.get("complaint") or {}
        return [_event("complained", _address(r), ids, Outcome("complaint", "feedback"),
                       f"feedback-type {complaint.get('complaintFeedbackType') or 'unknown'}",
                       complaint.get("timestamp"), complaint.get("feedbackId") or seed)
                for r in _list(complaint, "complainedRecipients")]
    if kind == "DeliveryDelay":
        delay = note.get("deliveryDelay") or {}
        return [_event("soft_bounced", _address(r), ids, Outcome("transient", "undefined"),
                       r.get("diagnosticCode") or delay.get("delayType"), delay.get("timestamp"),
                       f"{seed}:delay") for r in _list(delay, "delayedRecipients")]
    if kind in _NEVER_SENT:
        section_name, field, reason = _NEVER_SENT[kind]
        section = note.get(section_name) or {}
        section = section if isinstance(section, dict) else {}
        words = " ".join(str(section.get(k) or "") for k in (field, "templateName")).strip()
        return [_event("failed", str(r).strip().lower() or None, ids, Outcome(None, reason),
                       words or kind, mail.get("timestamp"), f"{seed}:{kind}")
                for r in (mail.get("destination") or [])]
    event_type, detail = _SIMPLE.get(kind, ("other", None))
    section = note.get(detail or "") or {}
    recipients = section.get("recipients") if kind == "Delivery" else mail.get("destination")
    outcome = Outcome(None, "delivered") if kind == "Delivery" else Outcome(None, "undefined")
    diagnostic = section.get("smtpResponse") or section.get("link") or kind
    return [_event(event_type, str(r), ids, outcome, diagnostic,
                   section.get("timestamp") or mail.get("timestamp"), f"{seed}:{kind}")
            for r in (recipients or [])]


#: event types of messages SES never sent: the record's section, the field with SES's words,
#: and the reason (no kind: not a bounce, nothing learnt about the address)
_NEVER_SENT = {"Reject": ("reject", "reason", "virusdetected"),
               "Rendering Failure": ("failure", "errorMessage", "contenterror")}
_SIMPLE = {"Delivery": ("delivered", "delivery"), "Send": ("accepted", "send"),
           "Open": ("opened", "open"), "Click": ("clicked", "click")}


def _bounce(recipient: dict[str, Any], bounce: dict[str, Any],
            ids: dict[str, str | None]) -> ProviderEvent:
    diagnostic = recipient.get("diagnosticCode") or recipient.get("status")
    outcome = classify_provider(PROVIDER, bounce.get("bounceType"), bounce.get("bounceSubType"),
                                _smtp_text(diagnostic))
    if outcome.kind == "hard" and str(bounce.get("bounceType")).lower() != "permanent":
        outcome = dataclasses.replace(outcome, kind="soft")  # SES did not give up
    event_type = "bounced" if outcome.kind == "hard" else "soft_bounced"
    detail = diagnostic or f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}"
    return _event(event_type, _address(recipient), ids, outcome, detail, bounce.get("timestamp"),
                  str(bounce.get("feedbackId") or ""))


def _smtp_text(diagnostic: str | None) -> str | None:
    """``smtp; 550 5.1.1 ...`` → ``550 5.1.1 ...`` (the DSN's diagnostic type dropped)."""
    if not diagnostic:
        return None
    head, sep, tail = diagnostic.partition(";")
    return tail.strip() if sep and head.strip().lower() in ("smtp", "x-postfix") else diagnostic


def _ids(mail: dict[str, Any]) -> dict[str, str | None]:
    """Job id, account id, original Message-ID and SES message id of the ``mail`` object."""
    headers = {str(h.get("name", "")).lower(): str(h.get("value", ""))
               for h in mail.get("headers") or [] if isinstance(h, dict)}
    common = mail.get("commonHeaders") or {}
    tags = mail.get("tags") or {}
    message_id = headers.get("message-id") or common.get("messageId") or None
    match = MESSAGE_ID.search(message_id or "")
    return {
        "job_id": safe_id(_tag(tags, "outbox_job") or (match.group(1) if match else None)),
        "account_id": safe_id(headers.get("x-outbox-account") or _tag(tags, "outbox_account")),
        "message_id": message_id.strip() if message_id else None,
        "ses_id": mail.get("messageId"),
    }


def _tag(tags: Any, name: str) -> str | None:
    value = tags.get(name) if isinstance(tags, dict) else None
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value else None




def _list(section: Any, key: str) -> list[dict[str, Any]]:
    items = section.get(key) if isinstance(section, dict) else None
    return [i for i in items or [] if isinstance(i, dict)]


def _address(recipient: dict[str, Any]) -> str | None:
    value = str(recipient.get("emailAddress") or "").strip()
    if "<" in value:  # SES may quote a display name: "Jane <jane@example.com>"
        value = value[value.rfind("<") + 1:].rstrip(">")
    return value.lower() or None


def _event(event_type: str, recipient: str | None, ids: dict[str, str | None], outcome: Outcome,
           diagnostic: str | None, when: Any, seed: str) -> ProviderEvent:
    event_id = hashlib.sha256(
        f"{ids['ses_id']}|{seed}|{recipient}|{event_type}".encode()).hexdigest()[:32]
    return ProviderEvent(
        provider=PROVIDER, type=event_type, channel="email", recipient=recipient,
        provider_message_id=ids["ses_id"], message_id=ids["message_id"], job_id=ids["job_id"],
        kind=outcome.kind, reason=outcome.reason, diagnostic=(diagnostic or "")[:500] or None,
        at=_iso(when), event_id=event_id, account_id=ids["account_id"])


def _iso(value: Any) -> str:
    """An SES ISO 8601 timestamp as RFC 3339 UTC with milliseconds; now when absent."""
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return utcnow_iso()
    if when.tzinfo is None:
        return utcnow_iso()
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
