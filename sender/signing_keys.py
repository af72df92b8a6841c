"""The DKIM keys a message is signed with: the active keys of the account's verified sending
domain that covers the From domain (the domain itself or its nearest parent), read from the
domain store (:mod:`suppression.domains`) and kept in the worker for ``ttl`` seconds.

An instance is the email channel's ``keys_for`` (``async def keys_for(account_id,
from_domain) -> Sequence[DkimKey]``): built with ``make=sender.dkim.DkimKey.from_pem``, it
returns the signer's keys. A rotation, verification or removal reaches a worker within ``ttl``.
No key (the domain is not verified, or no key of ``OUTBOX_SECRET_KEY`` opens it, logged): the
message goes unsigned. While Redis is unreachable (or a read takes over ``timeout``) the last
keys read are used; with none, a temporary :class:`~sender.channels.base.SendFailure`: the job
is deferred and tried again, never sent unsigned for want of its keys."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sender.channels.base import SendFailure
from suppression.classify import Outcome
from suppression.domains import DomainStore, UnknownDomain, domain_candidates
from suppression.sealed import Unsealable

log = logging.getLogger("outbox.dkim")
K = TypeVar("K")
DEFAULT_TTL = 60.0  # seconds the keys of an (account, From domain) are kept
MAX_ENTRIES = 10_000  # (account, From domain) pairs kept before the cache starts over
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)  # TimeoutError included
KEYS_UNAVAILABLE = Outcome("transient", "networkerror")


class SigningKeys(Generic[K]):
    """``keys_for`` of the email channel over the domain store, cached per (account, From
    domain). ``make(domain, selector, pem)`` turns a stored key into the signer's key."""

    def __init__(self, store: DomainStore, make: Callable[[str, str, bytes], K], *,
                 ttl: float = DEFAULT_TTL, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._make = make
        self._ttl = ttl
        self._timeout = timeout  # seconds for a read of the store (the worker's Redis has none)
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, list[K]]] = {}
        self.loads = 0  # reads of the store (tests, metrics)

    async def __call__(self, account_id: str, from_domain: str) -> Sequence[K]:
        """The keys to sign a message of ``account_id`` from ``from_domain`` with."""
        key = (account_id, from_domain)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            keys = await self._load(account_id, from_domain)
        except _REDIS_DOWN as exc:
            if cached is None:  # a temporary failure: the job is deferred, not sent unsigned
                raise SendFailure(KEYS_UNAVAILABLE, f"DKIM keys not readable: "
                                  f"{type(exc).__name__}: {exc}", "smtp") from None
            return cached[1]  # the last keys read, until Redis answers again
        if len(self._cache) >= MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, keys)
        return keys

    async def _load(self, account_id: str, from_domain: str) -> list[K]:
        self.loads += 1
        for domain in domain_candidates(from_domain):
            try:
                async with asyncio.timeout(self._timeout):
                    found = await self._store.signing_keys(account_id, domain)
            except UnknownDomain:
                continue
            except Unsealable as exc:
                log.error("DKIM keys of %s not usable, sending unsigned: %s", domain, exc,
                          extra={"account_id": account_id, "domain": domain})
                return []
            if found:  # else a parent may be verified (an unverified subdomain added)
                return [self._make(domain, selector, pem) for selector, _, pem in found]
        return []
