"""Signed unsubscribe tokens: ``/u/<token>`` names the account, channel, recipient and job.

``payload.signature``, both base64url without padding; the signature is HMAC-SHA256 over the
payload, cut to 128 bits. Tokens do not expire: an unsubscribe link must keep working (UEMO asks
for at least 30 days after sending). So keys rotate: a token is made with one key (the first
of ``OUTBOX_SECRET_KEY``) and read with every key still listed; a link made with a key taken off
the list stops working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from suppression import ids

_SEP = "\x1f"


class BadToken(ValueError):
    """The token is malformed or its signature does not match."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    account_id: str
    channel: str
    recipient: str
    job_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:16]


def make_token(secret: str, u: Unsubscribe) -> str:
    """The token for one recipient of one job, signed with ``secret`` (the signing key)."""
    payload = _SEP.join((u.account_id, u.channel, u.recipient, u.job_id)).encode()
    return f"{_b64(payload)}.{_b64(_sign(secret.encode(), payload))}"


def read_token(secrets: Sequence[str], token: str) -> Unsubscribe:
    """Check the signature against each of ``secrets`` (any one verifies) and return what the
    token names; BadToken otherwise. A bare string is refused: it is not a list of keys."""
    if isinstance(secrets, str):
        raise TypeError("read_token takes a sequence of keys, not one string")
    try:
        body, signature = token.split(".", 1)
        payload, given = _unb64(body), _unb64(signature)
        fields = payload.decode().split(_SEP)
    except (ValueError, UnicodeDecodeError):
        raise BadToken("malformed unsubscribe token") from None
    matches = [hmac.compare_digest(given, _sign(s.encode(), payload)) for s in secrets]
    if not any(matches) or len(fields) != 4:
        raise BadToken("unsubscribe token signature does not match")
    if not (ids.is_id(fields[0]) and ids.is_id(fields[3])):  # the ids' rule, as everywhere
        raise BadToken("unsubscribe token names a malformed account or job id")
    return Unsubscribe(*fields)
