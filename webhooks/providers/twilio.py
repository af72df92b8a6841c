"""Twilio: signature check, status callbacks, inbound SMS. Pure: no I/O.

Status callbacks (``POST /webhooks/twilio/status``) are form-encoded with, among others,
``MessageSid``, ``SmsSid``, ``AccountSid``, ``MessagingServiceSid``, ``From``, ``To``,
``MessageStatus``, ``SmsStatus``, ``ErrorCode`` (failures only), ``ApiVersion`` and, for
``delivered``/``undelivered``, ``RawDlrDoneDate``. Twilio adds parameters without notice, so
:func:`verify` signs whatever was posted and :func:`parse` ignores what it does not know.
The body is decoded once, strictly (:func:`decode_form`), and that one :class:`Form` is both
what :func:`verify` checks and what :func:`parse`/:func:`parse_inbound` read: a field added,
repeated or reordered by someone else cannot mean one thing to the signature and another to the
parser (a repeated name is refused outright; Twilio repeats none here).

``MessageStatus`` → ``ProviderEvent.type``:

=============================================  ==============================================
``delivered``                                   ``delivered``
``undelivered``/``failed``, ErrorCode 21610     ``unsubscribed`` (the recipient sent STOP)
``undelivered``/``failed``, ErrorCode 30007     ``complained`` (carrier filtering counts
                                                against the account like a complaint)
``undelivered``/``failed``, classifier kind     ``hard`` → ``bounced``; ``complaint`` →
                                                ``complained``; ``soft``/``transient``/
                                                ``block``/none → ``soft_bounced``
``undelivered``/``failed`` without ErrorCode    ``soft_bounced``, kind ``transient``,
                                                reason ``undefined``
``accepted``/``queued``/``sending``/``sent``    ``accepted``
``read``                                        ``opened``
anything else (``scheduled``, ``canceled``…)    ``other``
=============================================  ==============================================

Inbound SMS (``POST /webhooks/twilio/inbound``): :func:`parse_inbound` reads ``From``, ``To``,
``Body``, ``MessageSid`` and decides the keyword. The whole body, trimmed and case-insensitive,
must be one of Twilio's default keywords — STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE,
OPTOUT → ``"stop"``; START, YES, UNSTOP → ``"start"``; HELP, INFO → ``"help"`` — or, for Hong Kong
recipients, 取消 ("cancel") or 退訂/退订 ("unsubscribe", traditional and simplified) → ``"stop"``
(Twilio itself does not act on these; we honour them). "Stop texting me" is not a keyword. When
the Messaging Service uses Advanced Opt-Out, Twilio posts ``OptOutType`` (STOP/START/HELP) for
its own configured keywords, and that wins.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlparse

from twilio.request_validator import RequestValidator, add_port, remove_port

from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from suppression.classify import classify_twilio
from webhooks.providers.base import PayloadError

PROVIDER = "twilio"
SIGNATURE_HEADER = "X-Twilio-Signature"

STOP_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
     "取消", "退訂", "退订"}
)
START_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

_ACCEPTED = frozenset({"accepted", "queued", "sending", "sent"})
_FAILED = frozenset({"undelivered", "failed"})
#: Carrier filtering: counted against the account like a complaint.
CARRIER_FILTERED = "30007"
#: The recipient replied STOP to this sender ("Attempt to send to unsubscribed recipient").
UNSUBSCRIBED_RECIPIENT = "21610"


def verify(url: str, params: Mapping[str, str], signature: str, auth_token: str) -> bool:
    """Whether ``signature`` (the ``X-Twilio-Signature`` header) signs ``url`` + ``params``.

    ``url`` is the full URL Twilio requested (scheme, host, path and query, as configured in
    Twilio, i.e. ``OUTBOX_PUBLIC_URL`` + path); ``params`` the POSTed fields: a :class:`Form`
    from :func:`decode_form` (every value of a repeated name counts) or a plain mapping.
    Twilio's algorithm: HMAC-SHA1 keyed with the auth token over the URL followed by each name
    and value, names in order and a repeated name's values in order, base64 — computed by the
    twilio package's ``RequestValidator``. Like it, the URL is tried with and without an
    explicit port (Twilio is inconsistent about ``:443``); unlike its ``compare``, the comparison
    is :func:`hmac.compare_digest`, on bytes (a non-ASCII header is simply wrong).
    """
    if not signature or not auth_token:
        return False
    validator = RequestValidator(auth_token)
    parsed = urlparse(url)
    given = signature.strip().encode("utf-8", "surrogateescape")
    ok = False
    for candidate in dict.fromkeys((remove_port(parsed), add_port(parsed))):
        expected = validator.compute_signature(candidate, params).encode("utf-8")
        ok |= hmac.compare_digest(expected, given)
    return ok


@dataclass(frozen=True, slots=True)
class Form(Mapping[str, str]):
    """A webhook body decoded once (by :func:`decode_form`), for the signature check and the
    parser alike: ``pairs`` in the order posted; as a mapping, each name's (first) value;
    :meth:`getall` every value of a name (what ``RequestValidator`` signs)."""

    pairs: tuple[tuple[str, str], ...]
    _first: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        first: dict[str, str] = {}
        for name, value in self.pairs:
            first.setdefault(name, value)
        object.__setattr__(self, "_first", first)

    def __getitem__(self, name: str) -> str:
        return self._first[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def getall(self, name: str) -> list[str]:
        """Every value posted for ``name``, in order (``KeyError`` if none)."""
        values = [v for k, v in self.pairs if k == name]
        if not values:
            raise KeyError(name)
        return values


#: Names Twilio may post more than once in a Messaging webhook: none. Media come as
#: ``MediaUrl0``, ``MediaUrl1``…; the webhooks that do repeat a name (Conversations'
#: ``MessagingBinding.Address``, Autopilot fields) are not posted to these endpoints. A repeated
#: name is therefore someone else's edit, and is refused before anything reads the form.
REPEATABLE: frozenset[str] = frozenset()
#: More fields than any Twilio Messaging webhook posts (an MMS with 10 media has under 60).
MAX_FIELDS = 256
_FORM_TYPE = "application/x-www-form-urlencoded"


def decode_form(body: bytes, content_type: str,
                repeatable: frozenset[str] = REPEATABLE) -> Form:
    """The one decoding of a Twilio webhook body; :class:`PayloadError` unless it is
    ``application/x-www-form-urlencoded`` (charset absent or UTF-8; ``content_type`` is the whole
    header), UTF-8, a well-formed form of at most :data:`MAX_FIELDS` fields, and names no field
    twice but those in ``repeatable``."""
    mime, _, rest = (content_type or "").partition(";")
    if mime.strip().lower() != _FORM_TYPE:
        raise PayloadError(f"Twilio webhooks are {_FORM_TYPE}, not {content_type or 'untyped'!r}")
    params = (p.partition("=") for p in rest.split(";"))
    charsets = [v.strip().strip('"').lower() for k, _, v in params
                if k.strip().lower() == "charset"]
    if any(c not in ("utf-8", "utf8") for c in charsets):
        charset = ", ".join(charsets)
        raise PayloadError(f"Twilio webhooks are UTF-8, not {charset!r}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not UTF-8: {exc}") from None
    if not text.strip():
        raise PayloadError("empty body")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                          encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"body is not a valid form: {exc}") from None
    counts = Counter(name for name, _ in pairs)
    repeated = sorted(n for n, c in counts.items() if c > 1 and n not in repeatable)
    if repeated:
        raise PayloadError(f"field(s) posted more than once: {', '.join(repeated)}")
    return Form(tuple(pairs))


def _require(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise PayloadError(f"missing {name}")
    return value


def _event_time(fields: Mapping[str, str]) -> str:
    """``Timestamp`` when Twilio sent one (RFC 2822 or ISO 8601), else now. ``RawDlrDoneDate``
    is not used: it is the carrier's local time, minute precision, with no time zone."""
    raw = fields.get("Timestamp", "").strip()
    when: datetime | None = None
    if raw:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            try:
                when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                when = None
    if when is not None and when.tzinfo is not None:
        return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return utcnow_iso()


def _failure_type(error_code: str | None, kind: str | None) -> str:
    if error_code == UNSUBSCRIBED_RECIPIENT:
        return "unsubscribed"
    if error_code == CARRIER_FILTERED:
        return "complained"
    if kind == "hard":
        return "bounced"
    if kind == "complaint":
        return "complained"
    return "soft_bounced"


def parse(body: bytes, content_type: str) -> list[ProviderEvent]:
    """The provider-module contract: :func:`parse_fields` of :func:`decode_form`. The webhook
    server decodes once itself, so that the signature covers exactly what is parsed."""
    return parse_fields(decode_form(body, content_type))


def parse_fields(fields: Mapping[str, str]) -> list[ProviderEvent]:
    """One :class:`ProviderEvent` for a message status callback, from the fields
    :func:`decode_form` decoded (and the signature covered); :class:`PayloadError` without
    ``MessageSid``/``MessageStatus``."""
    sid = _require(fields, "MessageSid")
    status = _require(fields, "MessageStatus").lower()
    error_code = fields.get("ErrorCode", "").strip() or None
    kind: str | None = None
    reason: str | None = None
    diagnostic: str | None = None

    if status == "delivered":
        event_type, reason = "delivered", "delivered"
    elif status in _FAILED:
        if error_code is None:  # a failure Twilio did not explain: retry, suppress nothing
            kind, reason = "transient", "undefined"
        else:
            outcome = classify_twilio(error_code)
            kind, reason = outcome.kind, outcome.reason
        event_type = _failure_type(error_code, kind)
        diagnostic = error_code
        if error_code and fields.get("ErrorMessage", "").strip():
            diagnostic = f"{error_code}: {fields['ErrorMessage'].strip()}"
    elif status in _ACCEPTED:
        event_type = "accepted"
    elif status == "read":
        event_type = "opened"
    else:
        event_type = "other"

    return [
        ProviderEvent(
            provider=PROVIDER,
            type=event_type,
            channel="sms",
            recipient=fields.get("To") or None,
            provider_message_id=sid,
            message_id=None,
            job_id=None,
            kind=kind,
            reason=reason,
            diagnostic=diagnostic,
            at=_event_time(fields),
            event_id=f"{sid}:{status}",
            raw=dict(fields),
        )
    ]


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An SMS a recipient sent to one of our numbers. ``keyword``: ``"stop"``, ``"start"``,
    ``"help"`` or ``None`` (see the module docstring)."""

    from_: str
    to: str
    body: str
    message_sid: str
    keyword: str | None
    account_sid: str | None = None
    messaging_service_sid: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def keyword_of(body: str, opt_out_type: str | None = None) -> str | None:
    """The opt-out/opt-in/help keyword the whole ``body`` is, if any."""
    if opt_out_type and opt_out_type.strip().upper() in {"STOP", "START", "HELP"}:
        return opt_out_type.strip().lower()
    word = body.strip().upper()
    if word in STOP_KEYWORDS:
        return "stop"
    if word in START_KEYWORDS:
        return "start"
    if word in HELP_KEYWORDS:
        return "help"
    return None


def parse_inbound(body: bytes, content_type: str) -> InboundSms:
    """:func:`parse_inbound_fields` of :func:`decode_form`."""
    return parse_inbound_fields(decode_form(body, content_type))


def parse_inbound_fields(fields: Mapping[str, str]) -> InboundSms:
    """The inbound message Twilio posted, from the fields :func:`decode_form` decoded;
    :class:`PayloadError` without ``From``, ``To`` or ``MessageSid``. ``Body`` may be empty (an
    MMS with only media)."""
    text = fields.get("Body", "")
    return InboundSms(
        from_=_require(fields, "From"),
        to=_require(fields, "To"),
        body=text,
        message_sid=_require(fields, "MessageSid"),
        keyword=keyword_of(text, fields.get("OptOutType")),
        account_sid=fields.get("AccountSid") or None,
        messaging_service_sid=fields.get("MessagingServiceSid") or None,
        raw=dict(fields),
    )
