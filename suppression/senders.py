"""Who a job claims to send as, in the form the pre-send script checks (``pre_send.lua``,
argument ``senders``): the rule "a job may only send as its account's verified domains" on the
hot path, inside the round trip the job makes anyway.

E-mail: the domain of ``from`` (and of each ``reply_to`` address) with its parents, most
specific first (:func:`suppression.domains.domain_candidates`): a sender on ``news.shop.example``
is covered by ``shop.example`` verified for the account. SMS: the sender (``from``: a number,
taken to E.164; a Messaging Service SID or an alphanumeric or registered sender ID such as Hong
Kong's ``#`` IDs, as given); a job without ``from`` is sent from Outbox's own configured sender
(``OUTBOX_TWILIO_FROM`` or its Messaging Service) and needs no check, nor does one naming it.

The script refuses with status ``rejected`` and reason :data:`NOT_VERIFIED` (a sender not on a
domain verified for the account, or an SMS sender not in the account's ``sms_senders``) or
:data:`DMARC_MISSING` (marketing from a verified domain without a DMARC record, unless the
account's ``allow_missing_dmarc`` is on). The account's ``allow_any_reply_to`` lifts the
``reply_to`` rule.
"""

from __future__ import annotations

import json
import re
from email.utils import getaddresses
from functools import lru_cache

from suppression.address import BadAddress, e164, email_domain

NOT_VERIFIED = "sender_not_verified"
DMARC_MISSING = "dmarc_missing"
#: account settings (the ``cfg`` hash; ``outbox accounts configure``)
ACCOUNT_SETTINGS = ("sms_senders", "allow_any_reply_to", "allow_missing_dmarc")
_NUMBER = re.compile(r"^\+?[0-9 ()\-]{3,32}$")


@lru_cache(maxsize=4096)
def domains_of(header: str) -> tuple[tuple[str, ...], ...]:
    """For each address in a ``From``/``Reply-To`` value, its domain and the parents that
    would cover it; ``()`` for an address without a valid domain (never verified)."""
    found = []
    for _, address in getaddresses([header]):
        _, at, domain = address.rpartition("@")
        try:
            name = email_domain(domain) if at and domain else ""
        except BadAddress:
            name = ""
        labels = name.split(".") if "." in name else []
        found.append(tuple(".".join(labels[i:]) for i in range(len(labels) - 1)))
    return tuple(found) or ((),)


@lru_cache(maxsize=4096)
def sms_sender(raw: str, region: str = "HK") -> str:
    """An SMS sender in the one form ``sms_senders`` holds: a number in E.164, anything
    else (a Messaging Service SID, an alphanumeric or ``#`` registered sender ID) stripped."""
    text = raw.strip()
    if _NUMBER.match(text):
        try:
            return e164(text, default_region=region)
        except BadAddress:
            return text
    return text


def sms_senders(value: str, region: str = "HK") -> str:
    """``sms_senders`` as stored: comma-separated canonical senders, no blanks."""
    senders = [sms_sender(s, region) for s in value.split(",") if s.strip()]
    if any("," in s for s in senders):  # unreachable; the script splits on commas
        raise ValueError("a sender holds a comma")
    return ",".join(dict.fromkeys(senders))


@lru_cache(maxsize=8192)  # a few senders per account: the worker parses each once
def check_arg(channel: str, category: str, sender: str | None, reply_to: str | None,
              region: str = "HK", own: frozenset[str] = frozenset()) -> str:
    """Argument ``senders`` of pre_send.lua: a small JSON map (``f``: each from address's
    candidate domains, the first one's DMARC deciding for marketing; ``r``: each reply_to
    address's; ``m``: 1 for marketing; ``s``: the SMS sender), or ``{}`` for an SMS sent from
    Outbox's own sender (no ``from``, or one of ``own``: ``OUTBOX_TWILIO_FROM`` and the Messaging
    Service, canonical)."""
    if channel != "email":
        canonical = sms_sender(sender, region) if sender else ""
        return json.dumps({"s": canonical}) if canonical and canonical not in own else "{}"
    spec: dict[str, object] = {"f": [list(d) for d in domains_of(sender or "")],
                               "m": int(category == "marketing")}
    if reply_to:
        spec["r"] = [list(d) for d in domains_of(reply_to)]
    return json.dumps(spec, separators=(",", ":"))
