"""Every Redis key Outbox uses, with its expiry: the one place to look.

Keys of one account share the hash tag ``{acct:<id>}`` so the per-account Lua scripts touch a
single slot on Redis Cluster; global (per-address) keys live apart.

| key | type | expiry | what |
| --- | --- | --- | --- |
| ``outbox:{acct:A}:job:<id>`` | hash | ``idempotency_ttl`` (3 days) | job state: claim, final status, provider id |
"""

from __future__ import annotations

PREFIX = "outbox:"


def account_tag(account_id: str) -> str:
    """``outbox:{acct:<id>}``: the prefix of every key of one account."""
    return f"{PREFIX}{{acct:{account_id}}}"


def job(account_id: str, job_id: str) -> str:
    """Job state hash: ``st`` state (``S`` sending, ``R`` waiting for a retry, or a final
    status), ``o`` owner of the claim, ``a`` attempt, ``p`` provider, ``pm`` provider message id.
    Expires after ``idempotency_ttl``."""
    return f"{account_tag(account_id)}:job:{job_id}"
