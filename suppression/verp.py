"""Signed VERP envelope senders, in two forms, both within RFC 5321's 64-octet local part.

======================================  ==================================================
form                                    when
======================================  ==================================================
``bounce+<account>+<job>+<sig>@<dom>``  *readable*: its local part fits :data:`LOCAL_MAX`
                                        (``25 + len(account) + len(job)`` octets, so the
                                        two ids together at most 39 characters); nothing
                                        is stored
``bounce+r=<ref>@<dom>``                *referenced*: every other job (ids may be 128
                                        characters each); 35 octets. ``outbox:verp:<ref>``
                                        maps ``ref`` back to ``<account>/<job>``: written
                                        by the gate in the pre-send round trip (so before
                                        the message can leave), kept :func:`ref_ttl`
======================================  ==================================================

``sig`` is HMAC-SHA256 over ``outbox-verp``, the account and the job (joined by ``\\x1f``, which
no id holds) with ``OUTBOX_SECRET_KEY``, in lowercase base32 cut to :data:`SIG_LENGTH`
characters (80 bits). ``ref`` is the same HMAC over ``outbox-verp-ref`` cut to
:data:`REF_LENGTH` characters (130 bits): unguessable, so knowing one job's address tells
nothing about another's, and it is also its own signature: :func:`resolve_ref` believes a
stored mapping only when the ref is the HMAC of what it maps to. Anyone who receives our mail
sees its address (``Return-Path``), but without the key nobody can make one for another account
or job, so a report sent to a correctly signed address really concerns a message we sent.
Addresses are signed with the first key and checked against every key of the list, so a
rotated-out key keeps the bounces of mail already sent attributable.

Ids are ``[A-Za-z0-9._-]`` (see ``suppression.ids.SAFE_ID``), all allowed unquoted in a local
part, and never contain ``+`` or ``=``, so both forms split back unambiguously. Base32 is
case-insensitive: both the signature and the ref are compared in lower case.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable

from suppression import keys as rkeys
from suppression.replies import text
from suppression.roundtrip import Client

SIG_LENGTH = 16  # base32 characters: 80 bits
REF_LENGTH = 26  # base32 characters: 130 bits
LOCAL_MAX = 64  # RFC 5321 4.5.3.1.1: octets of a local part
#: the ref record outlives the job's own record (``idempotency_ttl``) by this much: the job hash
#: is refreshed when a report about it is applied, a moment after the listener read the ref
REF_TTL_MARGIN = 86400
_SEP = "\x1f"
_ID = r"[A-Za-z0-9._\-]+"
_VERP = re.compile(rf"^bounce\+({_ID})\+({_ID})(?:\+([A-Za-z2-7]*))?@([^@\s]+)$", re.IGNORECASE)
_REF = re.compile(r"^bounce\+r=([A-Za-z2-7]*)@([^@\s]+)$", re.IGNORECASE)


def _mac(purpose: str, account_id: str, job_id: str, key: str, length: int) -> str:
    mac = hmac.new(key.encode(), _SEP.join((purpose, account_id, job_id)).encode(),
                   hashlib.sha256).digest()
    return base64.b32encode(mac).decode().lower()[:length]


def verp_signature(account_id: str, job_id: str, key: str) -> str:
    """The ``sig`` part of the readable form for one account and job."""
    return _mac("outbox-verp", account_id, job_id, key, SIG_LENGTH)


def verp_ref(account_id: str, job_id: str, key: str) -> str:
    """The ``ref`` of the referenced form for one account and job."""
    return _mac("outbox-verp-ref", account_id, job_id, key, REF_LENGTH)


def readable_fits(account_id: str, job_id: str) -> bool:
    """Whether the readable form's local part fits :data:`LOCAL_MAX` octets."""
    return len("bounce+++") + len(account_id) + len(job_id) + SIG_LENGTH <= LOCAL_MAX


def verp_address(account_id: str, job_id: str, domain: str, key: str) -> str:
    """The envelope sender for one job, signed with ``key``: the readable form when it fits,
    else the referenced one (whose record :func:`ref_record` gives)."""
    if readable_fits(account_id, job_id):
        return f"bounce+{account_id}+{job_id}+{verp_signature(account_id, job_id, key)}@{domain}"
    return f"bounce+r={verp_ref(account_id, job_id, key)}@{domain}"


def ref_record(account_id: str, job_id: str, key: str) -> tuple[str, str] | None:
    """``(Redis key, value)`` that maps the job's ref back to it, or None when its address is
    the readable form (nothing to store)."""
    if readable_fits(account_id, job_id):
        return None
    value = f"{account_id}{rkeys.HISTORY_SEPARATOR}{job_id}"
    return rkeys.verp_ref(verp_ref(account_id, job_id, key)), value


def ref_ttl(idempotency_ttl: int) -> int:
    """How long a ref record is kept (and refreshed to when a report resolves it)."""
    return idempotency_ttl + REF_TTL_MARGIN


def is_verp(address: str) -> bool:
    """Whether ``address`` has either VERP form (signed or not; proves nothing)."""
    bare = address.strip().strip("<>")
    return bool(_VERP.match(bare) or _REF.match(bare))


def parse_verp(address: str) -> tuple[str, str] | None:
    """``(account_id, job_id)`` that a readable VERP address (angle brackets allowed) CLAIMS,
    signed or not, or None. Not proof of anything: see :func:`verify_verp`."""
    match = _VERP.match(address.strip().strip("<>"))
    return (match.group(1), match.group(2)) if match else None


def parse_ref(address: str, domain: str | None = None) -> str | None:
    """The ``ref`` (lower case) of a referenced VERP address (at ``domain``, when given), or
    None. Not proof of anything: see :func:`resolve_ref`."""
    match = _REF.match(address.strip().strip("<>"))
    if not match or len(match.group(1)) != REF_LENGTH:
        return None
    if domain is not None and match.group(2).lower() != domain.lower():
        return None
    return match.group(1).lower()


def verify_verp(address: str, keys: Iterable[str],
                domain: str | None = None) -> tuple[str, str] | None:
    """``(account_id, job_id)`` when ``address`` is a readable VERP address (at ``domain``,
    when given) signed with one of ``keys``; None for anything else (unsigned, wrongly signed,
    malformed, the referenced form: :func:`resolve_ref`)."""
    match = _VERP.match(address.strip().strip("<>"))
    if not match or not match.group(3):
        return None
    account_id, job_id, given, at = match.groups()
    if domain is not None and at.lower() != domain.lower():
        return None
    return (account_id, job_id) if _any_matches(
        given, lambda k: verp_signature(account_id, job_id, k), keys) else None


def verify_ref(ref: str, stored: str, keys: Iterable[str]) -> tuple[str, str] | None:
    """``(account_id, job_id)`` when ``stored`` (a ref record's ``<account>/<job>``) is what
    ``ref`` was made from with one of ``keys``; None otherwise."""
    account_id, sep, job_id = stored.partition(rkeys.HISTORY_SEPARATOR)
    if not (sep and account_id and job_id):
        return None
    return (account_id, job_id) if _any_matches(
        ref, lambda k: verp_ref(account_id, job_id, k), keys) else None


async def resolve_ref(redis: Client, ref: str, keys: Iterable[str],
                      ttl: int) -> tuple[str, str] | None:
    """``(account_id, job_id)`` of a ref we made (its record found and its HMAC right), the
    record's expiry refreshed to ``ttl`` (GETEX: one command); None for an unknown, expired or
    wrongly signed ref."""
    stored = text(await redis.getex(rkeys.verp_ref(ref), ex=ttl))
    return verify_ref(ref, stored, keys) if stored else None


def _any_matches(given: str, expected: Callable[[str], str], keys: Iterable[str]) -> bool:
    """Whether ``given`` equals ``expected(key)`` for a key; every key is tried (no early
    exit), so the time taken says nothing about which matched."""
    raw = given.lower().encode()
    return any([hmac.compare_digest(raw, expected(k).encode()) for k in keys])
