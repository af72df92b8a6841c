"""Jobs held while their account is blocked or suspended: kept, counted, visible, then
released, discarded or expired (the Redis side; :mod:`sender.held` publishes).

A job the pre-send script answers ``held`` (its account is ``blocked`` or ``suspended``) is
kept by :meth:`HeldStore.hold` (``hold.lua``, one round trip, only for such jobs): its body
as it was published, in the account's index of its channel and category under the time it
was first held, its record's status ``held`` (not final: the same id published again is
evaluated again, and held again while the account stays blocked), a ``held`` timeline entry.
Marketing, transactional and notification jobs are indexed apart, so support can send the
receipts and drop the blast. An account holds at most ``OUTBOX_HOLD_MAX_JOBS`` jobs and
``OUTBOX_HOLD_MAX_BYTES`` bytes: one more is refused (``full``: the caller ends it
``blocked``, reason ``hold_full``, and says so at ERROR), so a blocked blast cannot fill Redis.

Keys (:mod:`suppression.keys`)::

    outbox:{acct:A}:held:<channel>:<category>   sorted set: job id -> first held (ms)
    outbox:{acct:A}:held-bodies                 hash: job id -> body
    outbox:{acct:A}:held-size                   hash: jobs, bytes
    outbox:{acct:A}:held-lock                   one release/discard/expiry at a time
    outbox:held-accounts                        accounts that may hold jobs (global)

A held job leaves by :meth:`HeldStore.take` (``held_take.lua``): only if it is still the one
the caller read (same time held), with a timeline entry, and for a discard or an expiry its
final status. The caller publishes first and takes after (a crash between repeats a publish,
which the job's idempotency record absorbs, and never loses a job).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from suppression import channels, keys
from suppression.entries import StoreError
from suppression.gate import Script, run_pipeline
from suppression.history import iso
from suppression.replies import text
from suppression.roundtrip import Client
from suppression.script_args import Arguments, Kind

#: the job categories (sender.models.Category; a test keeps the two equal), in the order a
#: release sends them: receipts and alerts before the blast
CATEGORIES = ("transactional", "notification", "marketing")
_TAIL: dict[str, Kind] = {"ttl": "num", "timeline_ttl": "num", "timeline_keep": "num",
                          "value_max": "num"}
#: hold.lua's and held_take.lua's ARGV (their headers say what each is)
HOLD_ARGS = Arguments.declare("hold", None, job_id="str", body="str", attempt="str",
                              hold_seconds="num", max_jobs="num", max_bytes="num", **_TAIL)
TAKE_ARGS = Arguments.declare("held_take", None, job_id="str", since="num", status="str",
                              entry="str", reason="str", detail="str", at="num", **_TAIL)
HOLD = Script("hold", HOLD_ARGS)
TAKE = Script("held_take", TAKE_ARGS)
BATCH = 100  # held jobs read, published and taken together


class HeldBusy(StoreError):
    """Another release, discard or expiry of the account's held jobs is under way."""


@dataclass(frozen=True, slots=True)
class Hold:
    """The answer of :meth:`HeldStore.hold`: ``outcome`` ``held``, ``again`` (the account is
    no longer blocked: evaluate the job anew) or ``full`` (over the account's cap)."""

    outcome: str
    reason: str = ""
    since_ms: int = 0
    until_ms: int = 0
    jobs: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Held:
    """One held job as its index has it."""

    account_id: str
    channel: str
    category: str
    job_id: str
    since_ms: int

    def row(self, hold_seconds: int) -> dict[str, Any]:
        """As listed (``outbox accounts held --json``)."""
        return {"id": self.job_id, "channel": self.channel, "category": self.category,
                "held_at": iso(self.since_ms),
                "expires_at": iso(self.since_ms + hold_seconds * 1000)}


class HeldStore:
    """The held jobs of every account (one per process; stateless)."""

    def __init__(self, redis: Client, *, hold_seconds: int, max_jobs: int, max_bytes: int,
                 idempotency_ttl: int, timeline_ttl: int | None = None) -> None:
        self._redis = redis
        self.hold_seconds = hold_seconds
        self._max_jobs = max_jobs
        self._max_bytes = max_bytes
        self._ttl = idempotency_ttl
        self._timeline_ttl = idempotency_ttl if timeline_ttl is None else timeline_ttl

    @classmethod
    def from_settings(cls, redis: Client, settings: Any) -> HeldStore:
        """From ``OUTBOX_HOLD_*`` and the record retention settings."""
        return cls(redis, hold_seconds=settings.hold_seconds,
                   max_jobs=settings.hold_max_jobs, max_bytes=settings.hold_max_bytes,
                   idempotency_ttl=settings.idempotency_ttl,
                   timeline_ttl=settings.timeline_ttl)

    def _tail(self) -> dict[str, Any]:
        return dict(ttl=self._ttl, timeline_ttl=self._timeline_ttl,
                    timeline_keep=keys.TIMELINE_KEEP, value_max=keys.HASH_VALUE_MAX)

    async def hold(self, account_id: str, job_id: str, *, channel: str, category: str,
                   body: bytes, attempt: int) -> Hold:
        """Hold one job (see the module's docstring); one round trip with the account's entry
        in :data:`suppression.keys.HELD_ACCOUNTS` (after the script: a sweep that saw the
        account empty and dropped it finds it again)."""
        job = keys.job(account_id, job_id)
        script_keys = [job, keys.state(account_id), keys.held(account_id, channel, category),
                       keys.held_bodies(account_id), keys.held_size(account_id), job, job,
                       keys.timeline(account_id, job_id)]
        args = HOLD_ARGS.argv(dict(job_id=job_id, body=body, attempt=attempt,
                                   hold_seconds=self.hold_seconds, max_jobs=self._max_jobs,
                                   max_bytes=self._max_bytes, **self._tail()))

        def build(pipe: Any) -> None:
            HOLD.queue(pipe, script_keys, args)
            pipe.sadd(keys.HELD_ACCOUNTS, account_id)

        reply = [text(x) for x in (await run_pipeline(self._redis, build, HOLD))[0]]
        if reply[0] == "held":
            return Hold("held", reply[1], int(reply[2]), int(reply[3]))
        if reply[0] == "full":
            return Hold("full", reply[1], jobs=int(reply[2]), bytes=int(reply[3]))
        return Hold("again", reply[1])

    async def listing(self, account_id: str, *, category: str | None = None,
                      before_ms: int | None = None, limit: int | None = None) -> list[Held]:
        """The account's held jobs (of one ``category``; held before ``before_ms``), oldest
        first, at most ``limit``."""
        pairs = _pairs(category)
        pipe = self._redis.pipeline(transaction=False)
        for channel, cat in pairs:
            key = keys.held(account_id, channel, cat)
            if before_ms is None:
                pipe.zrange(key, 0, -1 if limit is None else limit - 1, withscores=True)
            else:
                pipe.zrangebyscore(key, "-inf", f"({before_ms}", withscores=True,
                                   start=0 if limit else None, num=limit)
        found = [Held(account_id, channel, cat, text(member), int(score))
                 for (channel, cat), members in zip(pairs, await pipe.execute(), strict=True)
                 for member, score in members]
        found.sort(key=lambda h: (h.since_ms, h.job_id))
        return found if limit is None else found[:limit]

    async def counts(self, account_id: str) -> dict[tuple[str, str], tuple[int, int | None]]:
        """``(channel, category) -> (jobs, oldest ms)`` for every pair (one round trip)."""
        pairs = _pairs(None)
        pipe = self._redis.pipeline(transaction=False)
        for channel, cat in pairs:
            key = keys.held(account_id, channel, cat)
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
        replies = await pipe.execute()
        return {pair: (int(replies[2 * i]), int(replies[2 * i + 1][0][1])
                       if replies[2 * i + 1] else None) for i, pair in enumerate(pairs)}

    async def summary(self, account_id: str, *, limit: int = 100) -> dict[str, Any]:
        """What ``outbox accounts held ACCOUNT --json`` prints: counts by channel and category
        with their oldest, the total and its bytes, and the ids of the ``limit`` oldest."""
        counts = await self.counts(account_id)
        size = await self._redis.hget(keys.held_size(account_id), "bytes")
        groups = [{"channel": ch, "category": cat, "jobs": n, "oldest": iso(oldest)}
                  for (ch, cat), (n, oldest) in counts.items() if n]
        oldest = min((o for n, o in counts.values() if n and o is not None), default=None)
        return {"account_id": account_id, "held": sum(n for n, _ in counts.values()),
                "bytes": int(text(size) or 0), "oldest": iso(oldest),
                "expires_at": iso(oldest + self.hold_seconds * 1000) if oldest else None,
                "hold_seconds": self.hold_seconds, "by": groups,
                "jobs": [h.row(self.hold_seconds) for h in (
                    await self.listing(account_id, limit=limit) if limit > 0 else [])]}

    async def total(self, account_id: str) -> int:
        """How many jobs the account holds."""
        return sum(n for n, _ in (await self.counts(account_id)).values())

    async def mark_released(self, held: list[Held]) -> list[bytes | None]:
        """Before a release publishes them: mark each job (its record's ``rl``: a job held
        again before :meth:`take` is held anew, not taken) and read the bodies; one round
        trip."""
        if not held:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for h in held:
            pipe.hset(keys.job(h.account_id, h.job_id), "rl", "1")
        pipe.hmget(keys.held_bodies(held[0].account_id), [h.job_id for h in held])
        found = (await pipe.execute())[-1]
        return [None if b is None else b if isinstance(b, bytes) else str(b).encode()
                for b in found]

    async def bodies(self, account_id: str, ids: list[str]) -> list[bytes | None]:
        """The held jobs' bodies (None for one gone meanwhile)."""
        if not ids:
            return []
        found = await self._redis.hmget(keys.held_bodies(account_id), ids)
        return [None if b is None else b if isinstance(b, bytes) else str(b).encode()
                for b in found]

    async def take(self, held: Iterable[Held], *, status: str, entry: str, reason: str,
                   detail: str, at_ms: int | None = None) -> list[bool]:
        """Take held jobs out (see the module's docstring), one round trip; ``status`` the
        final status to write ('' for a release), ``entry`` the timeline entry's status."""
        held = list(held)
        if not held:
            return []
        at = at_ms if at_ms is not None else time.time_ns() // 1_000_000

        def build(pipe: Any) -> None:
            for h in held:
                job = keys.job(h.account_id, h.job_id)
                TAKE.queue(pipe, [job, keys.held(h.account_id, h.channel, h.category),
                                  keys.held_bodies(h.account_id),
                                  keys.held_size(h.account_id), job, job, job,
                                  keys.timeline(h.account_id, h.job_id)],
                           TAKE_ARGS.argv(dict(job_id=h.job_id, since=h.since_ms,
                                               status=status, entry=entry, reason=reason,
                                               detail=detail[:500], at=at, **self._tail())))

        return [int(r) == 1 for r in await run_pipeline(self._redis, build, TAKE)]

    @asynccontextmanager
    async def locked(self, account_id: str) -> AsyncIterator[None]:
        """Hold the account's held-jobs lock (:data:`suppression.keys.HELD_LOCK_MS`);
        :class:`HeldBusy` when another holds it."""
        key, token = keys.held_lock(account_id), uuid.uuid4().hex
        if not await self._redis.set(key, token, nx=True, px=keys.HELD_LOCK_MS):
            raise HeldBusy(f"a release, discard or expiry of account {account_id!r}'s held "
                           "jobs is under way: try again when it has finished")
        try:
            yield
        finally:
            if text(await self._redis.get(key)) == token:
                await self._redis.delete(key)

    async def renew(self, account_id: str) -> None:
        """Extend the lock between batches."""
        await self._redis.pexpire(keys.held_lock(account_id), keys.HELD_LOCK_MS)

    async def accounts(self) -> list[str]:
        """Accounts that may hold jobs."""
        return sorted(text(a) for a in await self._redis.smembers(keys.HELD_ACCOUNTS))

    async def forget_if_empty(self, account_id: str) -> None:
        """Drop an account that holds nothing from :data:`suppression.keys.HELD_ACCOUNTS`
        (and put it back if a job was held meanwhile)."""
        if await self.total(account_id):
            return
        await self._redis.srem(keys.HELD_ACCOUNTS, account_id)
        if await self.total(account_id):
            await self._redis.sadd(keys.HELD_ACCOUNTS, account_id)

    async def totals(self) -> dict[tuple[str, str], int]:
        """Held jobs over every account by ``(channel, category)`` (the gauge)."""
        sums = dict.fromkeys(_pairs(None), 0)
        for account in await self.accounts():
            for pair, (n, _) in (await self.counts(account)).items():
                sums[pair] += n
        return sums


def _pairs(category: str | None) -> list[tuple[str, str]]:
    """Every (channel, category) index to look at; one category's when given."""
    return [(ch, cat) for ch in channels.names() for cat in CATEGORIES
            if category is None or cat == category]
