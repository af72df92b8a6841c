"""Asynchronous bounces from a self-run relay: RFC 3464 delivery status notifications and
RFC 5965 (ARF) feedback reports, as received by ``outbox bounces``. Pure: no I/O.

``parse(message: bytes, envelope_to: Sequence[str] = ())`` returns one ProviderEvent per
recipient block. The job is found from the VERP envelope recipient
(:func:`suppression.verp.verp_address`), else from the quoted original's
``Message-ID: <job-id@domain>`` and ``X-Outbox-Account`` header.

=====================================  =============================================
report                                  ProviderEvent.type
=====================================  =============================================
DSN ``Action: failed``, kind hard       ``bounced``
DSN ``Action: failed``, other kinds     ``soft_bounced`` (policy blocks are not the
                                        recipient's fault; transient errors recur)
DSN ``Action: delayed``                 ``soft_bounced``
DSN ``Action: delivered``/``relayed``   ``delivered``
ARF ``Feedback-Type: abuse``/``fraud``  ``complained``
ARF other feedback types                ``other``
=====================================  =============================================
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from suppression.classify import Outcome, classify_smtp
from suppression.verp import parse_verp
from webhooks.providers.base import MESSAGE_ID, PayloadError, safe_id

PROVIDER = "smtp"
_CODE = re.compile(r"\b([245]\d\d)\b")
_TYPE_FOR_ACTION = {"delayed": "soft_bounced", "delivered": "delivered",
                    "relayed": "delivered", "expanded": "delivered"}


def parse(message: bytes, envelope_to: Sequence[str] = ()) -> list[ProviderEvent]:
    """The events in one report message; PayloadError when it is not a DSN or ARF report."""
    msg = message_from_bytes(message, policy=compat32)
    report_type = (msg.get_param("report-type") or "").lower() \
        if msg.get_content_type() == "multipart/report" else ""
    ids = _ids(msg, envelope_to)
    event_seed = msg.get("Message-ID") or hashlib.sha256(message).hexdigest()
    if report_type == "delivery-status":
        return _dsn_events(msg, ids, event_seed)
    if report_type == "feedback-report":
        return _arf_events(msg, ids, event_seed)
    raise PayloadError("not a delivery status notification or feedback report "
                       f"(content type {msg.get_content_type()}, report-type {report_type!r})")


def _ids(msg: Message, envelope_to: Sequence[str]) -> dict[str, str | None]:
    """Job id, account id and the original's Message-ID, by VERP first, quoted headers next."""
    original = _original_headers(msg)
    message_id = original.get("Message-ID") if original is not None else None
    verp = next((v for v in map(parse_verp, envelope_to) if v), None)
    match = MESSAGE_ID.search(message_id or "")
    return {
        "account_id": verp[0] if verp else safe_id(_header(original, "X-Outbox-Account")),
        "job_id": verp[1] if verp else (match.group(1) if match else None),
        "message_id": message_id.strip() if message_id else None,
        "to": original.get("To") if original is not None else None,
    }


def _header(msg: Message | None, name: str) -> str | None:
    value = msg.get(name) if msg is not None else None
    return value.strip() if value else None


def _original_headers(msg: Message) -> Message | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/rfc822-headers", "text/rfc822-headers"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]
            if isinstance(payload, str):
                return message_from_bytes(payload.encode("utf-8", "replace"), policy=compat32)
    return None


def _status_blocks(msg: Message, ctype: str) -> list[Message]:
    for part in msg.walk():
        if part.get_content_type() == ctype:
            payload = part.get_payload()
            if isinstance(payload, list):
                return payload
            text = payload if isinstance(payload, str) else ""
            return [message_from_bytes(b.encode(), policy=compat32)
                    for b in re.split(r"\r?\n\r?\n", text.strip()) if b.strip()]
    return []


def _dsn_events(msg: Message, ids: dict[str, str | None], seed: str) -> list[ProviderEvent]:
    blocks = _status_blocks(msg, "message/delivery-status")
    if len(blocks) < 2:
        raise PayloadError("delivery status notification without a per-recipient block")
    return [_dsn_event(block, ids, seed) for block in blocks[1:] if block.get("Action")]


def _dsn_event(block: Message, ids: dict[str, str | None], seed: str) -> ProviderEvent:
    recipient = _address(block.get("Final-Recipient") or block.get("Original-Recipient"))
    action = (block.get("Action") or "").strip().lower()
    status = (block.get("Status") or "").strip()
    diagnostic = " ".join((block.get("Diagnostic-Code") or "").split())
    text = diagnostic.split(";", 1)[-1].strip()
    code_match = _CODE.search(text)
    outcome = classify_smtp(int(code_match.group(1)) if code_match else None, text,
                            status or None)
    kind_type = "bounced" if outcome.kind == "hard" else "soft_bounced"
    event_type = kind_type if action == "failed" else _TYPE_FOR_ACTION.get(action, "other")
    return _event(event_type, recipient, ids, outcome, diagnostic or status, seed)


def _arf_events(msg: Message, ids: dict[str, str | None], seed: str) -> list[ProviderEvent]:
    blocks = _status_blocks(msg, "message/feedback-report")
    if not blocks:
        raise PayloadError("feedback report without a message/feedback-report part")
    report = blocks[0]
    feedback = (report.get("Feedback-Type") or "").strip().lower()
    recipient = _address(report.get("Original-Rcpt-To") or ids.get("to"))
    event_type = "complained" if feedback in ("abuse", "fraud", "") else "other"
    outcome = Outcome("complaint", "feedback") if event_type == "complained" \
        else Outcome(None, "undefined")
    return [_event(event_type, recipient, ids, outcome, f"feedback-type {feedback}", seed)]


def _event(event_type: str, recipient: str | None, ids: dict[str, str | None],
           outcome: Outcome, diagnostic: str, seed: str) -> ProviderEvent:
    event_id = hashlib.sha256(f"{seed}|{recipient}|{event_type}".encode()).hexdigest()[:32]
    return ProviderEvent(
        provider=PROVIDER, type=event_type, channel="email", recipient=recipient,
        provider_message_id=None, message_id=ids["message_id"], job_id=ids["job_id"],
        kind=outcome.kind, reason=outcome.reason, diagnostic=diagnostic[:500], at=utcnow_iso(),
        event_id=event_id, account_id=ids["account_id"])


def _address(field: str | None) -> str | None:
    """``rfc822; bob@example.com`` or ``<bob@example.com>`` → ``bob@example.com``."""
    if not field:
        return None
    value = field.split(";", 1)[-1].strip().strip("<>").strip()
    return value.lower() or None
