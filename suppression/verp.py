"""Signed VERP envelope senders: ``bounce+<account>+<job>+<sig>@<bounce domain>``.

``sig`` is HMAC-SHA256 over ``outbox-verp``, the account and the job (joined by ``\\x1f``, which
no id holds) with ``OUTBOX_SECRET_KEY``, in lowercase base32 cut to :data:`SIG_LENGTH`
characters (80 bits). Anyone who receives our mail sees the address (``Return-Path``), but
without the key nobody can make one for another account or job, so a report sent to a
correctly signed address really concerns a message we sent. Addresses are signed with the
first key and checked against every key of the list, so a rotated-out key keeps the bounces of
mail already sent attributable.

Ids are ``[A-Za-z0-9._-]`` (see ``sender.models.SAFE_ID``), all allowed unquoted in a local
part, and never contain ``+``, so the address splits back unambiguously.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable

SIG_LENGTH = 16  # base32 characters: 80 bits
_SEP = "\x1f"
_ID = r"[A-Za-z0-9._\-]+"
_VERP = re.compile(rf"^bounce\+({_ID})\+({_ID})(?:\+([A-Za-z2-7]*))?@([^@\s]+)$", re.IGNORECASE)


def verp_signature(account_id: str, job_id: str, key: str) -> str:
    """The ``sig`` part for one account and job."""
    mac = hmac.new(key.encode(), _SEP.join(("outbox-verp", account_id, job_id)).encode(),
                   hashlib.sha256).digest()
    return base64.b32encode(mac).decode().lower()[:SIG_LENGTH]


def verp_address(account_id: str, job_id: str, domain: str, key: str) -> str:
    """The envelope sender for one job, signed with ``key``."""
    return f"bounce+{account_id}+{job_id}+{verp_signature(account_id, job_id, key)}@{domain}"


def parse_verp(address: str) -> tuple[str, str] | None:
    """``(account_id, job_id)`` that a VERP-looking address (angle brackets allowed) CLAIMS,
    signed or not, or None. Not proof of anything: see :func:`verify_verp`."""
    match = _VERP.match(address.strip().strip("<>"))
    return (match.group(1), match.group(2)) if match else None


def verify_verp(address: str, keys: Iterable[str],
                domain: str | None = None) -> tuple[str, str] | None:
    """``(account_id, job_id)`` when ``address`` is a VERP address (at ``domain``, when given)
    signed with one of ``keys``; None for anything else (unsigned, wrongly signed, malformed)."""
    match = _VERP.match(address.strip().strip("<>"))
    if not match or not match.group(3):
        return None
    account_id, job_id, given, at = match.groups()
    if domain is not None and at.lower() != domain.lower():
        return None
    given = given.lower().encode()
    # every key is tried (no early exit), so the time taken says nothing about which matched
    matches = [hmac.compare_digest(given, verp_signature(account_id, job_id, k).encode())
               for k in keys]
    return (account_id, job_id) if any(matches) else None
