"""Release, discard and expiry of held jobs: the publishing side of :mod:`suppression.held`.

* **release** (``outbox accounts unblock|unsuspend ... --held release``, ``outbox accounts held
  ACCOUNT --release``, the admin API and page): each held job is marked, its body published
  again to its lane on ``outbox.jobs`` exactly as it came (confirmed), then it is taken out of
  the held jobs with a ``released`` timeline entry. Its record stays ``held`` (not final), so
  the copy goes through every check of the pre-send gate again (account state, its sender,
  suppression, consent, preferences, the DNC register, not_after, the rate) and is claimed
  and sent once, as any new job; a copy published twice (a crash between publish and take)
  is refused by that claim.
* **discard**: each job's final ``blocked`` event (reason ``held_discarded``, detail ``actor:
  reason``) is published, then the job is taken out with that final status.
* **expiry** (the worker's :class:`HeldSweeper`): a job held longer than
  ``OUTBOX_HOLD_SECONDS`` ends ``expired`` (reason ``held_too_long``), its event first.

Publish first, take after: a crash between repeats a publish, never loses a job. Each
release or discard is one audit record in the account's stream (``held.release`` /
``held.discard``: actor, reason, category, how many). One at a time per account (the
account's held lock: :class:`suppression.held.HeldBusy` otherwise). Only jobs held before the
action began are settled: one held again meanwhile (the account blocked again) stays held.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from sender import topology
from sender.bus import FIRST_SEEN_HEADER, Bus
from sender.channels.registry import routing_key
from sender.metrics import Metrics
from sender.models import status_event
from sender.periodic import Periodic
from suppression.held import BATCH, Held, HeldBusy, HeldStore
from suppression.store import Audit

log = logging.getLogger("outbox.held")
ACTIONS = ("release", "discard")
#: on a released job's copy: who released it (the logs and ``outbox dead show`` tell)
RELEASED_HEADER = "x-outbox-released-by"
#: the final status and reason of a discarded and of an expired held job
DISCARDED = ("blocked", "held_discarded")
EXPIRED = ("expired", "held_too_long")


@dataclass(frozen=True, slots=True)
class Settled:
    """What a release or discard did: ``settled`` jobs, ``remaining`` still held (other
    categories, or held again meanwhile), the audit record's id."""

    account_id: str
    action: str
    category: str | None
    settled: int
    remaining: int
    audit_id: str

    def as_dict(self) -> dict[str, Any]:
        """As printed and answered."""
        return asdict(self)


class HeldJobs:
    """Settles held jobs on ``bus`` (connected by the caller)."""

    def __init__(self, store: HeldStore, bus: Bus, audit: Audit,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self._bus = bus
        self._audit = audit
        self._metrics = metrics

    async def settle(self, account_id: str, action: str, *, actor: str, reason: str,
                     category: str | None = None) -> Settled:
        """Release or discard the account's held jobs (of ``category``), audited."""
        if action not in ACTIONS:
            raise ValueError(f"held jobs are released or discarded, not {action!r}")
        if action == "release":
            def one_batch(batch: list[Held]) -> Awaitable[int]:
                return self._release(batch, actor, reason)
        else:
            def one_batch(batch: list[Held]) -> Awaitable[int]:
                return self._end(batch, *DISCARDED, f"{actor}: {reason}")
        async with self.store.locked(account_id):
            done = await self._batches(account_id, category, time.time_ns() // 1_000_000,
                                       one_batch)
        remaining = await self.store.total(account_id)
        audit_id = await self._audit.record(account_id, actor=actor, action=f"held.{action}",
                                            reason=reason, category=category or "all",
                                            jobs=done, remaining=remaining)
        await self.store.forget_if_empty(account_id)
        log.warning("account %s: %d held jobs %s by %s", account_id, done,
                    "released" if action == "release" else "discarded", actor, extra={
                        "account_id": account_id, "action": f"held.{action}", "actor": actor,
                        "reason": reason, "category": category, "jobs": done,
                        "remaining": remaining})
        return Settled(account_id, action, category, done, remaining, audit_id)

    async def expire(self) -> int:
        """End every job held longer than the hold time (each account under its lock; one
        being settled is left for the next sweep)."""
        ended = 0
        cutoff = time.time_ns() // 1_000_000 - self.store.hold_seconds * 1000
        detail = (f"held longer than {self.store.hold_seconds} s (OUTBOX_HOLD_SECONDS) while "
                  "the account was blocked or suspended")
        for account_id in await self.store.accounts():
            try:
                async with self.store.locked(account_id):
                    ended += await self._batches(
                        account_id, None, cutoff,
                        lambda batch: self._end(batch, *EXPIRED, detail))
            except HeldBusy:
                continue
            await self.store.forget_if_empty(account_id)
        return ended

    async def _batches(self, account_id: str, category: str | None, before_ms: int,
                       one_batch: Callable[[list[Held]], Awaitable[int]]) -> int:
        """Run ``one_batch`` over the jobs held before ``before_ms``, oldest first."""
        done = 0
        while batch := await self.store.listing(account_id, category=category,
                                                before_ms=before_ms, limit=BATCH):
            taken = await one_batch(batch)
            done += taken
            await self.store.renew(account_id)
            if not taken:  # every one gone or held again meanwhile: nothing more to do
                break
        return done

    async def _release(self, batch: list[Held], actor: str, reason: str) -> int:
        at = time.time_ns() // 1_000_000
        bodies = await self.store.mark_released(batch)
        headers = {FIRST_SEEN_HEADER: int(time.time()), RELEASED_HEADER: actor[:200]}
        await asyncio.gather(*(
            self._bus.publish(topology.JOBS_EXCHANGE, routing_key(h.channel, h.category),
                              body, headers=headers, message_id=h.job_id)
            for h, body in zip(batch, bodies, strict=True) if body is not None))
        taken = await self.store.take(batch, status="", entry="released", reason="released",
                                      detail=f"{actor}: {reason}", at_ms=at)
        for h, took in zip(batch, taken, strict=True):
            if took:
                log.info("job %s released by %s", h.job_id, actor, extra=_fields(
                    h, "released", "released", detail=f"{actor}: {reason}"))
        return sum(taken)

    async def _end(self, batch: list[Held], status: str, reason: str, detail: str) -> int:
        """Publish each job's final event, then take it out with that status."""
        bodies = await self.store.bodies(batch[0].account_id, [h.job_id for h in batch])
        await asyncio.gather(*(self._bus.publish_event(status_event(
            job_id=h.job_id, account_id=h.account_id, channel=h.channel, status=status,
            reason=reason, detail=detail, metadata=_metadata(body)))
            for h, body in zip(batch, bodies, strict=True)))
        taken = await self.store.take(batch, status=status, entry=status, reason=reason,
                                      detail=detail)
        for h, took in zip(batch, taken, strict=True):
            if took:
                if self._metrics is not None:
                    self._metrics.jobs.labels(h.channel, status).inc()
                log.info("job %s %s", h.job_id, status,
                         extra=_fields(h, status, reason, detail=detail))
        return sum(taken)


class HeldSweeper(Periodic):
    """The worker's task that ends jobs held too long (:meth:`HeldJobs.expire`) and refreshes
    ``outbox_held_jobs{channel,category}`` every ``period`` seconds until stopped; an outage
    is logged and tried again at the next sweep."""

    name = "held jobs sweep"
    log = log

    def __init__(self, held: HeldJobs, metrics: Metrics, period: float) -> None:
        super().__init__(period)
        self._held = held
        self._metrics = metrics

    @staticmethod
    def period_for(hold_seconds: int) -> float:
        """A sweep every quarter of the hold time, at least every minute (and at most twice
        a second)."""
        return max(0.5, min(60.0, hold_seconds / 4))

    async def turn(self) -> None:
        ended = await self._held.expire()
        for (channel, category), n in (await self._held.store.totals()).items():
            self._metrics.held_jobs.labels(channel, category).set(n)
        if ended:
            log.warning("held jobs sweep: %d expired", ended, extra={"expired": ended})


def _metadata(body: bytes | None) -> dict[str, Any] | None:
    """The job's ``metadata`` for its event (None when the body cannot say)."""
    try:
        data = json.loads(body) if body is not None else None
    except ValueError:
        return None
    metadata = data.get("metadata") if isinstance(data, dict) else None
    return metadata if isinstance(metadata, dict) else None


def _fields(h: Held, status: str, reason: str, **more: Any) -> dict[str, Any]:
    """A settled held job's log fields (as the pipeline's outcome line)."""
    return {"job_id": h.job_id, "account_id": h.account_id, "channel": h.channel,
            "category": h.category, "status": status, "reason": reason, **more}
