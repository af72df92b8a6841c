"""Which headers a job (the CRM) may set: an allow-list, with a reason for every refusal.

A job's ``headers`` are the CRM's own labels and threading, never instructions to a mail
server or relay. The rule, in order (names compare case-insensitively):

1. the name must be RFC 5322 ftext (printable ASCII without ``:``), at most 76 characters;
2. a name in :data:`REFUSED` (exactly, or by a prefix: an entry ending in ``-`` or ``*``)
   is refused with the
   reason given there: routing (who gets the mail, where bounces and receipts go), trace and
   authentication (what a receiving server writes), relay control (instructions SES,
   SendGrid, Mailgun, Postmark, Mandrill, SparkPost, Mailjet, Brevo read and strip: a
   configuration set decides which events come back, so it could switch off the reputation
   checks), and the headers the renderer or the worker writes itself;
3. a name in :data:`ALLOWED` is accepted (see there for why each is there);
4. any other ``X-`` name is accepted: the CRM's own labels (``X-Campaign``...);
5. anything else is refused as not on the allow-list.

Job validation (:class:`sender.models.EmailJob`) applies this, so a job with a refused header
is dead-lettered and announced ``rejected`` with the reason before anything is claimed; the
renderer (:mod:`sender.mime`) applies it again to whatever reaches it.
"""

from __future__ import annotations

import re

MAX_NAME = 76  # longest header name accepted (keeps "Name: " + one encoded-word foldable)
_FTEXT_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")

_ROUTING = "routing header: a job has exactly one recipient (`to`) and no other destinations"
_REPLIES = "use the job's `reply_to` field"
_BOUNCES = "routing header: where bounces and receipts go is the worker's (VERP) decision"
_TRACE = "trace or authentication header: only receiving and signing servers write these"
_RELAY = "relay-control header: instructions to the relay are the worker's alone"
_OURS = "written by the renderer or the worker itself"
_UNSUB = "set by the worker (marketing carries its own signed one-click unsubscribe)"

#: name (lower case) or prefix (ending in ``-``, or ``*`` which is not part of it) → why a
#: job may not set it
REFUSED: dict[str, str] = {
    # routing: other recipients, other reply or bounce destinations
    **dict.fromkeys(("to", "cc", "bcc", "resent-", "apparently-to", "envelope-to",
                     "delivered-to", "x-original-to", "x-envelope-to", "x-envelope-from",
                     "x-forwarded-to", "x-forwarded-for", "x-rcpt-to"), _ROUTING),
    **dict.fromkeys(("reply-to", "mail-reply-to", "mail-followup-to"), _REPLIES),
    **dict.fromkeys(("errors-to", "return-path", "return-receipt-to",
                     "disposition-notification-to", "disposition-notification-options",
                     "x-confirm-reading-to", "sender"), _BOUNCES),
    # trace, authentication, filtering verdicts
    **dict.fromkeys(("received", "x-received", "received-spf", "authentication-results",
                     "arc-", "dkim-", "domainkey-signature", "x-google-dkim-signature",
                     "x-originating-ip", "x-spam-", "x-virus-", "x-ms-exchange-",
                     "x-microsoft-antispam*", "x-forefront-", "x-google-", "x-gm-", "x-sg-"),
                    _TRACE),
    # relay control (read and stripped by providers)
    **dict.fromkeys(("x-ses-", "x-smtpapi*", "x-mailgun-", "x-pm-", "x-postmark-", "x-mc-",
                     "x-msys-api*", "x-mj-", "x-mailjet-", "x-mailin-", "x-sib-",
                     "x-elasticemail-", "x-sendgrid-", "x-amz-", "x-outbox-"), _RELAY),
    # the message's own structure
    **dict.fromkeys(("from", "subject", "date", "message-id", "mime-version", "content-"),
                    _OURS),
    "list-unsubscribe*": _UNSUB,  # and List-Unsubscribe-Post
}
_REFUSED_NAMES = {k: v for k, v in REFUSED.items() if not k.endswith(("-", "*"))}
_REFUSED_PREFIXES = tuple((k.rstrip("*"), v) for k, v in REFUSED.items()
                          if k.endswith(("-", "*")))

#: non-``X-`` names a job may set (lower case), and why a CRM legitimately sets them
ALLOWED = frozenset((
    "in-reply-to", "references",  # threading a reply into the recipient's conversation
    "keywords", "comments",  # RFC 5322 informational fields
    "importance", "priority",  # RFC 2156; a reminder marked urgent
    "auto-submitted",  # RFC 3834 "auto-generated": autoresponders do not answer notifications
    "precedence",  # "bulk"/"list": the same for older autoresponders
    "feedback-id",  # Gmail's feedback loop campaign identifier
    "list-id", "list-help", "list-subscribe", "list-post", "list-owner",
    "list-archive",  # RFC 2369 / 2919 list headers, all but unsubscribe
    "organization",  # informational
))


def refusal(name: str) -> str | None:
    """Why a job may not set the header ``name``, or None when it may."""
    if not isinstance(name, str) or not _FTEXT_RE.match(name):
        return f"invalid header name {name!r} (printable ASCII without ':' or spaces)"
    if len(name) > MAX_NAME:
        return f"header name {name[:20]!r}... is over {MAX_NAME} characters"
    lname = name.lower()
    why = _REFUSED_NAMES.get(lname)
    if why is None:
        why = next((w for prefix, w in _REFUSED_PREFIXES if lname.startswith(prefix)), None)
    if why is not None:
        return f"header {name} is refused: {why}"
    if lname in ALLOWED or lname.startswith("x-"):
        return None
    return (f"header {name} is refused: not on the allow-list for job headers "
            "(X-… names, List-Id/Help/Subscribe/Post/Owner/Archive, In-Reply-To, References, "
            "Keywords, Comments, Importance, Priority, Auto-Submitted, Precedence, Feedback-ID, "
            "Organization)")


def check(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` unchanged when every name may be set; ValueError naming the first that
    may not."""
    for name in headers:
        why = refusal(name)
        if why is not None:
            raise ValueError(why)
    return headers
