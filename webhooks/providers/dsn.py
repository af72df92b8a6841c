"""Bounces and complaint reports that come back by mail, as received by ``outbox bounces`` and
read by ``outbox bounces parse`` (the same code: :func:`read`, then :func:`events`). Pure.

Readers, tried in this order (``format`` names the one that understood the message):

==============  ===========================================================================
``rfc3464``     a ``message/delivery-status`` part (RFC 3464), wherever it is in the report
``arf``         a ``message/feedback-report`` part (RFC 5965)
``ses-json``    an Amazon SES notification delivered by mail (SNS e-mail subscription)
``complaint``   an abuse report that is not ARF (Microsoft's, a forwarded "abuse report")
<family>        the text of a bounce from a known server family (``postfix``, ``exim``,
                ``qmail``/Yahoo, ``sendmail``, ``exchange``/Outlook/Office 365, ``gmail``,
                ``domino``, ``groupwise``, ``courier``, ``mdaemon``, ``opensmtpd``, ...;
                patterns as data in :mod:`webhooks.providers.bounce_readers`)
``generic``     the text of a message that is a bounce by its sender or subject, of no
                family we know: recipients and diagnostics found by generic patterns
``none``        not a report: an auto-reply (RFC 3834, vacation, out of office,
                challenge-response) or anything else; ``why`` says which. Nothing is done.
==============  ===========================================================================

Each recipient found is one :class:`Finding` (action, enhanced status, reply code, the
server's words) and one event:

======================================  ===================================================
finding                                  ProviderEvent.type (kind)
======================================  ===================================================
``failed``, kind hard                    ``bounced`` (the address is suppressed)
``failed``, other kinds                  ``soft_bounced`` (policy blocks, mailbox full,
                                         system errors: not the address's fault)
``delayed``                              ``soft_bounced``; never hard, suppresses nothing
``delivered``/``relayed``/``expanded``   ``delivered``
a complaint (ARF abuse/fraud, non-ARF)   ``complained``
ARF other feedback types                 ``other``
======================================  ===================================================

A reply whose basic code and enhanced status are both temporary (4xx, 4.x.x) is never read as
hard, whatever its words say: the server itself said "try again" (never suppress on a guess).

Attribution (:class:`Ids`, ``attribution`` says which), first found wins: the VERP envelope
recipient (``verp``); our Message-ID quoted anywhere (``message-id``: the attached original's
headers, the report's ``References``/``In-Reply-To``, ``Message-ID:`` lines of an inline
original), its account from ``X-Outbox-Account``; a VERP address quoted in the report
(``verp-quoted``: ``X-Postfix-Sender``, the original's ``Return-Path``); ``X-Outbox-Account``
alone; the provider's message id (``provider-message-id``). What is *believed* is the listener's
decision (:mod:`webhooks.bounces`), not this module's.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from functools import lru_cache
from typing import Any

from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from suppression.classify import Outcome, classify_provider, classify_smtp
from suppression.verp import parse_verp
from webhooks.providers import bounce_readers as R
from webhooks.providers.base import MESSAGE_ID, PayloadError, safe_id

PROVIDER = "smtp"
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
_FLAGS = re.I | re.M
_CODE = re.compile(r"(?<![\w.:/\-#])#?([245][0-5]\d)(?=[ \-]|$)", re.M)
_ENHANCED = re.compile(r"(?<![\w.])([245]\.\d{1,3}\.\d{1,3})(?![\w]|\.\d)")
_ADDR = re.compile(R.ADDR)
_VERP_ANY = re.compile(r"bounce\+[A-Za-z0-9._\-]+\+[A-Za-z0-9._\-]+(?:\+[A-Za-z2-7]+)?@"
                       r"[A-Za-z0-9.\-]+[A-Za-z0-9]", re.I)
_ACCOUNT = re.compile(r"^X-Outbox-Account:[ \t]*([A-Za-z0-9._\-]+)", _FLAGS)
_MSGID_LINE = re.compile(r"^Message-ID:[ \t]*(<[^<>\s]+>)|\"Message-ID\",\s*\"value\":\s*"
                         r"\"(<[^<>\s\"]+>)\"", _FLAGS)  # a header line, or SES's JSON
_ACCOUNT_JSON = re.compile(r"\"X-Outbox-Account\",\s*\"value\":\s*\"([A-Za-z0-9._\-]+)\"", re.I)
_NOT_RECIPIENTS = re.compile(r"^(?:mailer[-_]?daemon|postmaster|bounces?|noreply|no-reply|"
                             r"abuse|root)(?:[+@])", re.I)
_TYPE_FOR_ACTION = {"delivered": "delivered", "relayed": "delivered", "expanded": "delivered"}
_MAX_DIAG = 1000
#: Bytes of a message examined at most (its first ones): real reports are a few kilobytes, and
#: the returned original's headers come before its body. The listener's
#: ``OUTBOX_BOUNCES_SCAN_BYTES``.
SCAN_BYTES = 256 * 1024
#: A message larger than this whose headers and parts say nothing of a report is read from its
#: first QUICK_BYTES only, and dropped as not a report unless they show one.
QUICK_BYTES = 16 * 1024
_MAX_LINE = 4000  # characters of one line of text scanned (a longer one is cut)
_MAX_HEADERS = 200  # header fields of the report read
#: Recipients read from one report at most: Outbox sends a message to one recipient, so a
#: report about it names one; a long list is read no further.
MAX_FINDINGS = 50
_HTML_TAG = re.compile(r"<[^<>]+>")
_SCRIPT = re.compile(r"<(script|style)\b", re.I)
_REPORT_TYPES = (b"multipart/report", b"message/delivery-status", b"message/feedback-report",
                 b"message/global-delivery-status")


def _compile(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, _FLAGS) for p in patterns)


_FAMILIES = tuple((f, _compile(f.detect), _compile(f.recipients),
                   re.compile(f.begin, _FLAGS) if f.begin else None, _compile(f.delayed))
                  for f in R.FAMILIES)
_BY_NAME = {f.name: (f, _compile(f.headers)) for f in R.FAMILIES}
_ORIGINAL = _compile(R.ORIGINAL_MARKERS)
_GENERIC = _compile(R.GENERIC_RECIPIENTS)
_DELAY = _compile(R.DELAY_MARKERS)
_AUTO_HEADERS, _AUTO_SUBJECTS = _compile(R.AUTO_REPLY_HEADERS), _compile(R.AUTO_REPLY_SUBJECTS)
_COMPLAINT, _COMPLAINT_RCPT = _compile(R.COMPLAINT_MARKERS), _compile(R.COMPLAINT_RECIPIENTS)
_BOUNCE_SENDERS, _BOUNCE_SUBJECTS = re.compile(R.BOUNCE_SENDERS, _FLAGS), \
    re.compile(R.BOUNCE_SUBJECTS, _FLAGS)
_SES = _compile(R.SES_MAIL)


@dataclass(frozen=True, slots=True)
class Finding:
    """What the report says about one recipient. ``outcome``: the report's own verdict (ARF,
    SES), else the classifier decides from the status, reply code and diagnostic."""

    recipient: str | None
    action: str
    status: str | None = None
    reply_code: int | None = None
    diagnostic: str = ""
    outcome: Outcome | None = None
    complaint: bool = False
    #: the recipient's own words, when ``diagnostic`` was widened to the whole notification
    #: (one recipient whose own words carry no code): words elsewhere in it without any reply
    #: code (help text, "possible reasons: ...") are no evidence that names the recipient
    own: str | None = None


@dataclass(frozen=True, slots=True)
class Ids:
    """What ties the report to a job, and how it was found (``attribution``)."""

    account_id: str | None = None
    job_id: str | None = None
    message_id: str | None = None
    provider_message_id: str | None = None
    attribution: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """One message read: which reader understood it, its findings, its ids, and for a message
    that is not a report, why."""

    format: str
    findings: tuple[Finding, ...] = ()
    ids: Ids = field(default_factory=Ids)
    why: str = ""
    report_id: str | None = None  # the report's own Message-ID (evidence)
    feedback_type: str | None = None


# --- the entry points ----------------------------------------------------------------------


def parse(message: bytes, envelope_to: Sequence[str] = (),
          message_id_domain: str | None = None, *,
          scan_bytes: int = SCAN_BYTES) -> list[ProviderEvent]:
    """The events of one report message; PayloadError (saying why) when it is not a report."""
    report = read(message, envelope_to, message_id_domain, scan_bytes=scan_bytes)
    if report.format == "none":
        raise PayloadError(report.why)
    found = events(report, seed=report.report_id or hashlib.sha256(message).hexdigest())
    if not found:
        raise PayloadError(f"a {report.format} report that names no recipient")
    return found


def read(message: bytes, envelope_to: Sequence[str] = (),
         message_id_domain: str | None = None, *, scan_bytes: int = SCAN_BYTES) -> Report:
    """Read one message with the first reader that understands it (see the module doc).

    Linear in the bytes examined: at most the first ``scan_bytes``; a message longer than
    :data:`QUICK_BYTES` whose headers and MIME parts say nothing of a report only its first
    :data:`QUICK_BYTES` (not a report unless they show one)."""
    window = message[:scan_bytes]
    if len(window) > QUICK_BYTES and not looks_like_report(window):
        quick = _read(window[:QUICK_BYTES], envelope_to, message_id_domain)
        if quick.format == "none":
            return replace(quick, why=f"{quick.why} (read its first {QUICK_BYTES} of "
                           f"{len(message)} bytes: no report part, no bounce headers)")
    return _read(window, envelope_to, message_id_domain)


def looks_like_report(message: bytes) -> bool:
    """True when the message's headers or MIME types say it may be a report: a report or
    delivery-status/feedback part, or a bounce's, complaint's, SES's or auto-reply's headers.
    Cheap: a byte search and the top header block."""
    lowered = message.lower()
    if any(kind in lowered for kind in _REPORT_TYPES):
        return True
    top = _header_text(BytesHeaderParser(policy=compat32).parsebytes(message[:QUICK_BYTES]))
    return bool(_BOUNCE_SENDERS.search(top) or _BOUNCE_SUBJECTS.search(top)
                or _any(_COMPLAINT, top) or _SES[0].search(top) or _any(_AUTO_HEADERS, top)
                or _any(_AUTO_SUBJECTS, top))


def _read(message: bytes, envelope_to: Sequence[str],
          message_id_domain: str | None) -> Report:
    msg = message_from_bytes(message, policy=compat32)
    top = _header_text(msg)
    text = _notification_text(msg)
    report_id = (msg.get("Message-ID") or "").strip() or None
    ids = _ids(msg, top, text, message, envelope_to, message_id_domain)
    report = Report("none", ids=ids, report_id=report_id)
    status_blocks = _parts(msg, "message/delivery-status")
    if status_blocks:
        findings = _dsn_findings(status_blocks)
        if findings:
            return replace(report, format="rfc3464", findings=_enrich(findings, top, text))
    feedback = _parts(msg, "message/feedback-report")
    if feedback:
        return _arf(report, msg, feedback[0])
    if _any(_SES[:1], top) and _any(_SES[1:], text):
        ses = _ses_findings(text)
        if ses:
            return replace(report, format="ses-json", findings=ses)
    if _any(_COMPLAINT, top + "\n" + text) and (_original(msg) is not None
                                                or _any(_COMPLAINT_RCPT, top + "\n" + text)):
        # an ARF report whose feedback part is sent as text names the recipient in its text
        return replace(report, format="complaint",
                       findings=(_complaint(msg, top + "\n" + text),))
    return _text_report(report, msg, top, text)


def events(report: Report, seed: str) -> list[ProviderEvent]:
    """One event per finding (see the module doc for the types)."""
    return [_event(report, f, seed) for f in report.findings]


def describe(report: Report) -> list[dict[str, Any]]:
    """What ``outbox bounces parse`` prints: one dict per recipient, or one saying why the
    message is not a report."""
    ids = {"job_id": report.ids.job_id, "account_id": report.ids.account_id,
           "message_id": report.ids.message_id,
           "provider_message_id": report.ids.provider_message_id,
           "attribution": report.ids.attribution, "report_message_id": report.report_id}
    if report.format == "none" or not report.findings:
        return [{"recipient": None, "action": None, "type": "none", "kind": None,
                 "reason": None, "status": None, "reply_code": None, "diagnostic": None,
                 **ids, "format": report.format,
                 "why": report.why or f"a {report.format} report that names no recipient"}]
    lines = []
    for finding, event in zip(report.findings, events(report, seed=report.report_id or ""),
                              strict=True):
        action = None if finding.complaint or report.format == "arf" else finding.action
        lines.append({"recipient": finding.recipient, "action": action,
                      "type": event.type, "kind": event.kind, "reason": event.reason,
                      "status": finding.status, "reply_code": finding.reply_code,
                      "diagnostic": event.diagnostic, **ids, "format": report.format})
    return lines


# --- outcome and event ---------------------------------------------------------------------


def outcome_of(finding: Finding) -> Outcome:
    """The finding's kind and reason (see the module doc for the rules beyond the
    classifier's)."""
    if finding.outcome is not None:
        return finding.outcome
    if finding.action in ("delivered", "relayed", "expanded"):
        return Outcome(None, "delivered", finding.reply_code, finding.status)
    text = finding.diagnostic.split(";", 1)[-1] if finding.diagnostic[:8].lower().startswith(
        ("smtp;", "x-")) else finding.diagnostic
    status = finding.status
    enhanced = _ENHANCED.search(text)
    if enhanced and (not status or status.endswith(".0.0")):
        status = enhanced.group(1)  # the server's own code is more specific than x.0.0
    outcome = classify_smtp(finding.reply_code, text, status)
    if outcome.kind == "hard" and finding.own is not None and not finding.reply_code \
            and not status and classify_smtp(None, finding.own).kind != "hard":
        return replace(outcome, kind="soft")  # words not the recipient's, and no code
    temporary = all(c is None or str(c).startswith("4") for c in (finding.reply_code, status)) \
        and (finding.reply_code or status)
    if outcome.kind == "hard" and (finding.action == "delayed" or temporary):
        return replace(outcome, kind="soft")
    if outcome.kind is None and finding.action in ("failed", "delayed"):
        return Outcome("soft", "undefined", outcome.code, outcome.enhanced)  # not a failure?
    return outcome


def _event(report: Report, finding: Finding, seed: str) -> ProviderEvent:
    outcome = outcome_of(finding)
    if finding.complaint:
        event_type = "complained"
    elif report.format == "arf":
        event_type = "other"
    elif finding.action == "failed":
        event_type = "bounced" if outcome.kind == "hard" else "soft_bounced"
    elif finding.action == "delayed":
        event_type = "soft_bounced"
    else:
        event_type = _TYPE_FOR_ACTION.get(finding.action, "other")
    event_id = hashlib.sha256(f"{seed}|{finding.recipient}|{event_type}".encode()).hexdigest()
    ids = report.ids
    return ProviderEvent(
        provider=PROVIDER, type=event_type, channel="email", recipient=finding.recipient,
        provider_message_id=ids.provider_message_id, message_id=ids.message_id,
        job_id=ids.job_id, kind=outcome.kind, reason=outcome.reason,
        diagnostic=(finding.diagnostic or finding.status or "")[:500], at=utcnow_iso(),
        event_id=event_id[:32], account_id=ids.account_id,
        raw={"format": report.format, "action": finding.action, "status": finding.status,
             "reply_code": finding.reply_code, "report_message_id": report.report_id,
             "attribution": ids.attribution})


# --- RFC 3464 and ARF --------------------------------------------------------------------


def _parts(msg: Message, ctype: str) -> list[Message]:
    """The header blocks of the first ``ctype`` part outside any attached original."""
    for part in _own_parts(msg):
        if part.get_content_type() == ctype:
            payload = part.get_payload(decode=False)
            if isinstance(payload, list):
                return [p for p in payload if isinstance(p, Message)]
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
            return [message_from_bytes(b.encode("utf-8", "replace"), policy=compat32)
                    for b in re.split(r"\r?\n[ \t]*\r?\n", text.strip()) if b.strip()]
    return []


def _own_parts(msg: Message) -> Iterable[Message]:
    """The report's parts, not descending into attached messages."""
    yield msg
    if msg.get_content_type() in ("message/rfc822", "text/rfc822-headers",
                                  "message/rfc822-headers"):
        return
    payload = msg.get_payload()
    if msg.is_multipart() and isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message):
                yield from _own_parts(part)


def _dsn_findings(blocks: list[Message]) -> list[Finding]:
    found: list[Finding] = []
    for block in blocks[:MAX_FINDINGS]:
        recipient = _sent_to(block.get("Original-Recipient")) or _address(
            block.get("Final-Recipient") or block.get("Original-Recipient"))
        status = _status(block.get("Status"))
        action = (block.get("Action") or "").strip().lower().split()[0:1]
        act = action[0] if action else {"5": "failed", "4": "delayed", "2": "delivered"}.get(
            (status or " ")[0], "")
        if not recipient or act not in ACTIONS:
            continue
        diagnostic = " ".join((block.get("Diagnostic-Code") or "").split()) or " ".join(
            (block.get("Status") or "").split())  # "4.0.0 (host name lookup failure)"
        text = diagnostic.split(";", 1)[-1].strip()
        specific = _status(text)
        if specific and (not status or status.endswith(".0.0")) and specific[0] == \
                (status or specific)[0]:
            status = specific  # Exim writes x.0.0 and the server's own code in the text
        found.append(Finding(recipient, act, status, _code(text), diagnostic or status or ""))
    return found


def _sent_to(original: str | None) -> str | None:
    """The address we sent to when a forwarder or alias changed it: RFC 3464's
    ``Original-Recipient: rfc822; ...`` (not Exchange's encapsulated X.500 ``IMCEA...``)."""
    value = (original or "").strip()
    if not value.lower().startswith("rfc822;") or "imcea" in value.lower():
        return None
    return _address(value)


def _enrich(findings: list[Finding], top: str, text: str) -> tuple[Finding, ...]:
    """A DSN whose blocks carry no diagnostic: the server's words from its text part."""
    if all(f.diagnostic and f.diagnostic != f.status for f in findings):
        return tuple(findings)
    texts = {f.recipient: f for f in _text_findings(top, text)[1]}
    return tuple(replace(f, diagnostic=texts[f.recipient].diagnostic,
                         reply_code=f.reply_code or texts[f.recipient].reply_code)
                 if f.recipient in texts and (not f.diagnostic or f.diagnostic == f.status)
                 else f for f in findings)


def _arf(report: Report, msg: Message, block: Message) -> Report:
    feedback = (block.get("Feedback-Type") or "").strip().lower()
    original = _original(msg)
    recipient = _address(block.get("Original-Rcpt-To")
                         or (original.get("To") if original is not None else None))
    complaint = feedback in ("abuse", "fraud", "")
    outcome = Outcome("complaint", "feedback") if complaint else Outcome(None, "undefined")
    return replace(report, format="arf", feedback_type=feedback, findings=(Finding(
        recipient, "failed", None, None, f"feedback-type {feedback}", outcome, complaint),))


def _complaint(msg: Message, top: str) -> Finding:
    original = _original(msg)
    recipient = next((m.group("rcpt") for p in _COMPLAINT_RCPT for m in [p.search(top)] if m),
                     None) or (original.get("To") if original is not None else None)
    return Finding(_address(recipient), "failed", None, None, "complaint report (not ARF)",
                   Outcome("complaint", "feedback"), True)


def _ses_findings(text: str) -> tuple[Finding, ...]:
    """An SES Bounce/Complaint/DeliveryDelay notification's JSON in the body of a mail."""
    start = text.find("{")
    try:
        note = json.loads(text[start:text.rfind("}") + 1]) if start >= 0 else None
    except ValueError:
        return ()
    if not isinstance(note, dict):
        return ()
    kind = note.get("notificationType") or note.get("eventType")
    if kind == "Bounce":
        bounce = note.get("bounce") or {}
        found = []
        for r in bounce.get("bouncedRecipients") or []:
            diag = str(r.get("diagnosticCode") or "")
            outcome = classify_provider("ses", bounce.get("bounceType"),
                                        bounce.get("bounceSubType"), diag.split(";", 1)[-1])
            if outcome.kind == "hard" and str(bounce.get("bounceType")).lower() != "permanent":
                outcome = replace(outcome, kind="soft")
            found.append(Finding(_address(r.get("emailAddress")), "failed",
                                 _status(r.get("status")), _code(diag), diag, outcome))
        return tuple(found)
    if kind == "Complaint":
        return tuple(Finding(_address(r.get("emailAddress")), "failed", None, None,
                             "complaint (Amazon SES)", Outcome("complaint", "feedback"), True)
                     for r in (note.get("complaint") or {}).get("complainedRecipients") or [])
    if kind == "DeliveryDelay":
        return tuple(Finding(_address(r.get("emailAddress")), "delayed",
                             _status(r.get("status")), _code(str(r.get("diagnosticCode"))),
                             str(r.get("diagnosticCode") or ""))
                     for r in (note.get("deliveryDelay") or {}).get("delayedRecipients") or [])
    return ()


# --- bounce text ---------------------------------------------------------------------------


def _text_report(report: Report, msg: Message, top: str, text: str) -> Report:
    auto = _any(_AUTO_SUBJECTS, top)
    family, findings = _text_findings(top, text)
    bouncy = family != "generic" or _BOUNCE_SENDERS.search(top) or _BOUNCE_SUBJECTS.search(top)
    if bouncy and not (auto and family == "generic"):
        if not findings:
            original = _original(msg)
            to = _address(original.get("To")) if original is not None else None
            if to:
                section = _section(text, None)
                findings = [Finding(to, "delayed" if _delayed(top, text, ()) else "failed",
                                    _status_in(section), _code(section), _clean(section),
                                    own="")]  # the whole text: no words of its own
        if findings:
            return replace(report, format=family, findings=tuple(findings))
        return replace(report, why="looks like a bounce, but names no recipient we could find")
    if auto or _any(_AUTO_HEADERS, top):
        return replace(report, why="an auto-reply (RFC 3834 Auto-Submitted, vacation, out of "
                       "office or challenge-response), not a bounce: nothing to act on")
    return replace(report, why="not a delivery status notification, feedback report or bounce "
                   f"(content type {msg.get_content_type()}, subject "
                   f"{_subject(msg)!r})")


def _text_findings(top: str, text: str) -> tuple[str, list[Finding]]:
    """The family whose markers the report carries ("generic" if none) and its findings."""
    head = top + "\n" + text[:4000]
    name = next((f.name for f, detect, *_ in _FAMILIES if _any(detect, head)), "generic")
    if name != "generic" and _BY_NAME[name][1]:  # a family that names the recipient in a header
        found = _findings(top, _BY_NAME[name][1], "", False, _section(text, None))
        if found:
            return name, _as_list_refusal(name, found)
    # the family's own patterns first, then every other family's (those whose section starts
    # after a marker only when the marker is there), then the generic ones
    for family, _, recipients, begin, delayed in sorted(_FAMILIES,
                                                       key=lambda f: f[0].name != name):
        if family.name != name and begin is not None and not begin.search(text):
            continue
        found = _findings(_section(text, begin), recipients, top,
                          _delayed(top, text, delayed))
        if found:
            return name, _as_list_refusal(name, found)
    return name, _as_list_refusal(name, _findings(_section(text, None), _GENERIC, top,
                                                  _delayed(top, text, ())))


def _as_list_refusal(name: str, found: list[Finding]) -> list[Finding]:
    """A mailing list's refusal of a post (Google Groups, fml, Mailman): the list refused
    this recipient by its policy, a ``block`` (``onhold`` when the post is held for the
    moderator): never a hard bounce, nor one of another address."""
    if name == "generic" or not _BY_NAME[name][0].list_refusal:
        return found
    out = []
    for finding in found:
        outcome = outcome_of(finding)
        if outcome.kind not in ("block", "transient") or outcome.reason == "undefined":
            outcome = Outcome("block", "rejected", outcome.code, outcome.enhanced)
        out.append(replace(finding, outcome=outcome))
    return out


def _findings(section: str, patterns: Iterable[re.Pattern[str]], top: str,
              delayed: bool, story: str = "") -> list[Finding]:
    """Recipients the patterns find in ``section``, each with its diagnostic (its ``diag``
    group, the text up to the next recipient, or ``story`` when given)."""
    exclude = {a.lower() for line in top.splitlines() if re.match(
        r"(?:From|To|Cc|Sender|Return-Path|Reply-To|Delivered-To):", line, re.I)
        for a in _ADDR.findall(line)}
    hits: list[tuple[int, int, str, str | None]] = []  # start, end, recipient, diag
    for pattern in patterns:
        for m in pattern.finditer(section):
            rcpt = m.group("rcpt").lower().rstrip(".").lstrip("'")  # ADDR starts a run
            if rcpt in exclude or _NOT_RECIPIENTS.match(rcpt) or parse_verp(rcpt):
                continue
            diag = m.group("diag") if "diag" in pattern.groupindex else None
            hits.append((m.start(), m.end(), rcpt, diag))
        if hits:
            break
    hits.sort()
    found: dict[str, Finding] = {}
    for i, (_, end, rcpt, diag) in enumerate(hits):
        if rcpt in found or len(found) >= MAX_FINDINGS:
            continue
        following = hits[i + 1][0] if i + 1 < len(hits) else len(section)
        words = story or (diag if diag and diag.strip() else section[end:following])
        own = None
        if not story and not _CODE.search(words) and not _ENHANCED.search(words) \
                and len(hits) == 1:
            # its own words: its pattern's diagnostic, else its paragraph (not the help text)
            own = _clean(words if diag and diag.strip() else words.split("\n\n")[0])
            words = f"{words}\n{section}"  # one recipient: the whole section is its story
        clean = _clean(words)
        found[rcpt] = Finding(rcpt, "delayed" if delayed else "failed", _status_in(clean),
                              _code(clean), clean, own=own)
    return list(found.values())


def _section(text: str, begin: re.Pattern[str] | None) -> str:
    """The server's own words: after ``begin`` (when found), before the returned original."""
    match = begin.search(text) if begin else None
    start = match.end() if match else 0
    return text[start:_original_at(text, start)]


@lru_cache(maxsize=16)
def _original_at(text: str, start: int) -> int:
    """Where the returned original starts after ``start`` (the text's end if nowhere): once
    per text and start, not once per family."""
    ends = [m.start() for p in _ORIGINAL for m in [p.search(text, start)] if m]
    return min(ends) if ends else len(text)


def _delayed(top: str, text: str, markers: Iterable[re.Pattern[str]]) -> bool:
    head = top + "\n" + _section(text, None)[:6000]
    permanent = re.search(r"permanent(?:ly)? (?:error|fatal|failure|failed)|"
                          r"failed permanently|gave up|given up|giving up", head, re.I)
    return not permanent and (_any(markers, head) or _any(_DELAY, head))


# --- attribution -------------------------------------------------------------------------


def _ids(msg: Message, top: str, text: str, raw: bytes, envelope_to: Sequence[str],
         message_id_domain: str | None) -> Ids:
    original = _original(msg)
    everything = "\n".join((top, _headers_of(original), text, raw.decode("latin-1")))
    verp = next((v for v in map(parse_verp, envelope_to) if v), None)
    quoted = next((v for v in map(parse_verp, _VERP_ANY.findall(everything)) if v), None)
    candidates = [c.strip() for c in (
        [original.get("Message-ID") or "" if original is not None else ""]
        + [m for h in ("References", "In-Reply-To") for m in re.findall(
            r"<[^<>\s]+>", msg.get(h) or "")]
        + [a or b for a, b in _MSGID_LINE.findall(text)]
        + [a or b for a, b in _MSGID_LINE.findall(raw.decode("latin-1"))])
        if c.strip()]
    own = (msg.get("Message-ID") or "").strip()
    candidates = [c for c in candidates if c != own]
    ours = [c for c in candidates if message_id_domain
            and c.rstrip(">").lower().endswith("@" + message_id_domain.lower())]
    message_id = (ours or candidates or [None])[0]
    match = MESSAGE_ID.fullmatch(message_id or "") if (ours or not message_id_domain) else None
    account = _ACCOUNT.search(_headers_of(original) + "\n" + text) or _ACCOUNT.search(
        everything) or _ACCOUNT_JSON.search(text)
    header_account = safe_id(account.group(1)) if account else None
    account_id: str | None
    job_id: str | None
    attribution: str | None
    if verp:
        account_id, job_id, attribution = verp[0], verp[1], "verp"
    elif match:  # our Message-ID; its account from X-Outbox-Account, or a quoted VERP of it
        job_id, attribution = match.group(1), "message-id"
        account_id = header_account or (quoted[0] if quoted and quoted[1] == job_id else None)
    elif quoted:
        account_id, job_id, attribution = quoted[0], quoted[1], "verp-quoted"
    else:
        account_id, job_id = header_account, None
        attribution = "x-outbox-account" if account_id else None
    provider_mid = message_id if message_id and not match else None
    attribution = attribution or ("provider-message-id" if provider_mid else None)
    return Ids(account_id, job_id, message_id, provider_mid, attribution)


def _original(msg: Message) -> Message | None:
    """The headers of the returned original, when the report attaches it."""
    for part in _own_parts(msg):
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/rfc822-headers", "text/rfc822-headers"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return message_from_bytes(raw, policy=compat32)
    return None


# --- text helpers -------------------------------------------------------------------------


def _notification_text(msg: Message) -> str:
    """The report's own words: its text parts (HTML flattened), not the attached original."""
    texts: list[str] = []
    htmls: list[str] = []
    for part in _own_parts(msg):
        ctype = part.get_content_type()
        if part.is_multipart() or ctype not in ("text/plain", "text/html"):
            continue
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            body = raw.decode(charset, "replace")
        except LookupError:
            body = raw.decode("utf-8", "replace")
        (texts if ctype == "text/plain" else htmls).append(body)
    if not texts and htmls:
        texts = [html.unescape(_HTML_TAG.sub("\n", _without_scripts(h))) for h in htmls]
    return _normalised("\n".join(texts))


def _normalised(text: str) -> str:
    """Lines without trailing white space, cut at :data:`_MAX_LINE`, at most one blank line
    in a row: no pattern then finds a long run of white space to go over again and again."""
    lines = (line[:_MAX_LINE].rstrip() for line in
             text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _without_scripts(page: str) -> str:
    """The HTML without its ``<script>``/``<style>`` elements (one pass: linear)."""
    lowered, kept, at = page.lower(), [], 0
    while (start := _SCRIPT.search(page, at)) is not None:
        end = lowered.find(f"</{start.group(1).lower()}", start.end())
        close = lowered.find(">", end) if end >= 0 else -1
        if close < 0:
            break
        kept.append(page[at:start.start()])
        at = close + 1
    kept.append(page[at:])
    return "".join(kept)


def _header_text(msg: Message) -> str:
    lines = []
    for name, value in msg.items()[:_MAX_HEADERS]:
        text = str(value)[:_MAX_LINE]
        try:
            decoded = str(make_header(decode_header(text)))
        except (ValueError, LookupError, UnicodeDecodeError):
            decoded = text
        lines.append(f"{name}: {' '.join(decoded.split())}")
    return "\n".join(lines)


def _headers_of(msg: Message | None) -> str:
    return "" if msg is None else "\n".join(f"{k}: {str(v)[:_MAX_LINE]}"
                                             for k, v in msg.items()[:_MAX_HEADERS])


def _subject(msg: Message) -> str:
    try:
        return str(make_header(decode_header(msg.get("Subject") or "")))[:100]
    except (ValueError, LookupError, UnicodeDecodeError):
        return str(msg.get("Subject") or "")[:100]


def _any(patterns: Iterable[re.Pattern[str]], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def _clean(text: str) -> str:
    return " ".join(text.split())[:_MAX_DIAG]


def _code(text: str) -> int | None:
    match = _CODE.search(text or "")
    return int(match.group(1)) if match else None


def _status(value: Any) -> str | None:
    match = _ENHANCED.search(str(value or ""))
    return match.group(1) if match else None


def _status_in(text: str) -> str | None:
    return _status(text)


def _address(field: Any) -> str | None:
    """``rfc822; bob@example.com``, ``Bob <bob@example.com>`` → ``bob@example.com``."""
    if not field:
        return None
    value = str(field).split(";", 1)[-1] if ";" in str(field) else str(field)
    match = _ADDR.search(value)
    return match.group(0).lower().rstrip(".") if match else None
