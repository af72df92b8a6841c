"""The DKIM keys a message is signed with: the active keys of the account's verified sending
domain that covers the From domain (the domain itself or its nearest parent), read from the
domain store (:mod:`suppression.domains`) and kept in the worker for ``ttl`` seconds.

An instance is the email channel's ``keys_for`` (``async def keys_for(account_id,
from_domain) -> Sequence[DkimKey]``): built with ``make=sender.dkim.DkimKey.from_pem``, it
returns the signer's keys. A rotation, verification or removal reaches a worker within ``ttl``.
No key (the domain is not verified, or no key of ``OUTBOX_SECRET_KEY`` opens it, logged): the
message goes unsigned. While Redis is unreachable (or a read takes over ``timeout``) the last
keys read are used; with none, a temporary :class:`~sender.channels.base.SendFailure`: the job
is deferred and tried again, never sent unsigned for want of its keys.

The same read gives the domain's verified return path (:meth:`SigningKeys.return_path`, the
channel's ``return_path_for``): the VERP envelope sender's domain, ``bounces.<domain>``, when
its CNAME to ``OUTBOX_BOUNCE_DOMAIN`` was found, so SPF aligns with From too. Both come from
one cache entry: a job costs no Redis round trip for them past the first of its (account,
From domain) in ``ttl``. With ``keys=False`` (``OUTBOX_DKIM`` off) no key is opened and only
the return path is looked up.

Cost: the jobs that miss the cache at once share one read; a key is parsed once per worker
(a re-read finds the same sealed key). With ``make=DkimKey.from_sealed_pem`` (the worker's)
OpenSSL's ~30 ms check of an RSA key is skipped: the key was made by Outbox and its sealing
proves it unchanged."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class FromDomain(Generic[K]):
    """What the worker sends mail of an (account, From domain) with: the signer's keys and
    the return-path subdomain (None: the envelope stays at ``OUTBOX_BOUNCE_DOMAIN``)."""

    keys: list[K] = field(default_factory=list)
    return_path: str | None = None


class SigningKeys(Generic[K]):
    """``keys_for`` (and ``return_path_for``) of the email channel over the domain store,
    cached per (account, From domain). ``make(domain, selector, pem)`` turns a stored key
    into the signer's key."""

    def __init__(self, store: DomainStore, make: Callable[[str, str, bytes], K], *,
                 ttl: float = DEFAULT_TTL, timeout: float = 5.0, keys: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._make = make
        self._ttl = ttl
        self._timeout = timeout  # seconds for a read of the store (the worker's Redis has none)
        self._keys = keys
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, FromDomain[K]]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[FromDomain[K]]] = {}
        self._made: dict[tuple[str, str, bytes], K] = {}  # by (domain, selector, PEM digest)
        self.loads = 0  # reads of the store (tests, metrics)
        self.made = 0  # keys turned into the signer's (each once per worker while it lasts)

    async def __call__(self, account_id: str, from_domain: str) -> Sequence[K]:
        """The keys to sign a message of ``account_id`` from ``from_domain`` with."""
        return (await self.lookup(account_id, from_domain)).keys

    async def return_path(self, account_id: str, from_domain: str) -> str | None:
        """The verified return-path subdomain for mail of ``account_id`` from
        ``from_domain`` (its covering verified domain's), or None."""
        return (await self.lookup(account_id, from_domain)).return_path

    async def lookup(self, account_id: str, from_domain: str) -> FromDomain[K]:
        """Keys and return path of an (account, From domain), cached ``ttl`` seconds. The
        jobs that miss the cache while it is being read share that one read."""
        key = (account_id, from_domain)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._refresh(key, cached))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        return await asyncio.shield(loading)  # a cancelled job leaves the read to the others

    def _loaded(self, key: tuple[str, str], done: asyncio.Future[FromDomain[K]]) -> None:
        self._loading.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too: every job waiting for it may be gone

    async def _refresh(self, key: tuple[str, str],
                       cached: tuple[float, FromDomain[K]] | None) -> FromDomain[K]:
        try:
            found = await self._load(*key)
        except _REDIS_DOWN as exc:
            if cached is None:  # a temporary failure: the job is deferred, not sent unsigned
                raise SendFailure(KEYS_UNAVAILABLE, f"DKIM keys not readable: "
                                  f"{type(exc).__name__}: {exc}", "smtp") from None
            return cached[1]  # the last keys read, until Redis answers again
        if len(self._cache) >= MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = (self._clock() + self._ttl, found)
        return found

    def _key(self, domain: str, selector: str, pem: bytes) -> K:
        """The signer's key for a stored key, made once (a re-read after the TTL finds the
        same sealed key: it is not parsed again)."""
        digest = (domain, selector, hashlib.sha256(pem).digest())
        made = self._made.get(digest)
        if made is None:
            if len(self._made) >= MAX_ENTRIES:
                self._made.clear()
            made = self._made[digest] = self._make(domain, selector, pem)
            self.made += 1
        return made

    async def _load(self, account_id: str, from_domain: str) -> FromDomain[K]:
        self.loads += 1
        for domain in domain_candidates(from_domain):
            try:
                async with asyncio.timeout(self._timeout):
                    found = await self._store.sending_domain(account_id, domain,
                                                             keys=self._keys)
            except UnknownDomain:
                continue
            except Unsealable as exc:
                log.error("DKIM keys of %s not usable, sending unsigned: %s", domain, exc,
                          extra={"account_id": account_id, "domain": domain})
                return FromDomain()
            if found.verified:  # else a parent may be verified (an unverified subdomain added)
                return FromDomain([self._key(domain, selector, pem)
                                   for selector, _, pem in found.keys], found.return_path)
        return FromDomain()
