"""Jobs that wait for their ``send_at``: the Redis side (README, "Send later").

A job read before its ``send_at`` is written to Redis and acknowledged: it then holds no worker
slot, no prefetch place and no open transaction. Where it waits::

    outbox:{acct:A}:job:<id>   st 'W' (scheduled), 'sa' due (epoch ms): the job's record, which
                               decides whether it may still be sent (cancel.lua, pre_send.lua)
    outbox:{sched:N}:due       sorted set, member '<account>/<id>', score due (epoch ms)
    outbox:{sched:N}:jobs      hash, the same member -> '<routing key>' newline the job's bytes

``N`` is the job's shard (:func:`suppression.keys.schedule_shard`): the two shard keys share a
hash tag, so one script (release.lua) reads and leases a shard's due jobs atomically on a Redis
Cluster too; the record lives in the account's slot, written in the same round trip.

A mover (:mod:`sender.schedule`, a task of every worker process) leases the due jobs of each
shard (their score moves to the end of the lease: no other mover takes them meanwhile),
publishes each to its lane with a publisher confirm, and removes it from the shard only after
the confirm. A mover that dies leaves its lease to run out: the jobs are due again and another
mover publishes them a second time; the record's claim (``pre_send.lua``) lets one copy be
sent, the other answers ``done`` or ``duplicate`` (exactly once by the existing idempotency).
A released job goes through the whole pipeline (expiry, account state, suppression, consent,
rate), as any job.

Cancelling (:meth:`Schedule.cancel`) ends the record ``cancelled`` when it is still ``W`` and
makes the shard entry due at once: the mover releases it, and the pipeline, finding the record
final, publishes its ``cancelled`` event (the event is the worker's, confirmed as every other)
and never sends it. A job already released but not yet claimed is cancelled all the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from suppression import keys
from suppression.coalesce import Send
from suppression.gate import Decision, Script, _decision, run_pipeline
from suppression.history import STATE_NAMES, iso
from suppression.replies import text
from suppression.roundtrip import Client, execute
from suppression.script_args import Arguments

SCHEDULE_ARGS = Arguments.declare("schedule", due="num", ttl="num", attempt="str",
                                  detail="str")
SCHEDULE = Script("schedule", SCHEDULE_ARGS)
CANCEL_ARGS = Arguments.declare("cancel", ttl="num", timeline_keep="num", timeline_ttl="num",
                                value_max="num", detail="str")
CANCEL = Script("cancel", CANCEL_ARGS)
RELEASE_ARGS = Arguments.declare("release", limit="num", lease="num")
RELEASE = Script("release", RELEASE_ARGS)
#: how long a mover holds the due jobs it took before another may take them (ms)
LEASE_MS = 60_000
#: what cancel answers (:class:`Cancelled`)
CANCELLED, ALREADY, UNKNOWN, TOO_LATE = "cancelled", "already", "unknown", "too_late"


@dataclass(frozen=True, slots=True)
class Due:
    """A job released by :meth:`Schedule.release`: publish ``body`` with ``routing_key``."""

    shard: int
    member: str
    due_ms: int
    routing_key: str
    body: bytes

    @property
    def job_id(self) -> str:
        return self.member.partition(keys.HISTORY_SEPARATOR)[2]


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What :meth:`Schedule.cancel` did: ``outcome`` one of ``cancelled``, ``already``,
    ``unknown``, ``too_late``; ``status`` the job's status before (``W`` = scheduled);
    ``due`` its ``send_at`` (ISO 8601 UTC) when it had one."""

    outcome: str
    status: str
    due: str | None

    @property
    def ok(self) -> bool:
        """The job will not be sent (cancelled now or before)."""
        return self.outcome in (CANCELLED, ALREADY)

    def message(self, account_id: str, job_id: str) -> str:
        """What ``outbox jobs cancel`` and the admin API say of it."""
        job = f"job {job_id} of account {account_id}"
        due = f" (due {self.due})" if self.due else ""
        if self.outcome == CANCELLED:
            return f"{job} cancelled{due}: it will not be sent"
        if self.outcome == ALREADY:
            return f"{job} was cancelled already{due}"
        if self.outcome == UNKNOWN:
            return (f"no record of {job}: unknown, not yet read by a worker, or older than "
                    f"OUTBOX_IDEMPOTENCY_TTL; not cancelled")
        status = STATE_NAMES.get(self.status, self.status)
        return f"{job} is {status} already: too late to cancel"


def encode(routing_key: str, body: bytes) -> bytes:
    """A waiting job's value in its shard's hash."""
    return routing_key.encode() + b"\n" + body


def decode_value(value: bytes) -> tuple[str, bytes]:
    """``(routing key, body)`` of :func:`encode`."""
    key, _, body = value.partition(b"\n")
    return key.decode(), body


class Schedule:
    """The scheduled jobs in Redis (one per process; stateless)."""

    def __init__(self, redis: Client, *, idempotency_ttl: int, timeline_ttl: int | None = None,
                 send: Send | None = None) -> None:
        self._redis = redis
        self._ttl = idempotency_ttl
        self._timeline_ttl = idempotency_ttl if timeline_ttl is None else timeline_ttl
        self._send = send

    async def add(self, account_id: str, job_id: str, *, due_ms: int, routing_key: str,
                  body: bytes, attempt: int = 1, why: str | None = None) -> Decision:
        """Make the job wait until ``due_ms`` (one round trip): verdict ``scheduled``, or
        ``done``/``duplicate`` when its record says it is known already (then it is not kept
        waiting: a second round trip takes the shard entry back). ``why``: a limit made it
        wait (the record says ``W`` already: pre_send.lua), said in its timeline entry."""
        shard = keys.schedule_shard(account_id, job_id)
        member = keys.schedule_member(account_id, job_id)
        detail = f"{why}, due {iso(due_ms)}" if why else f"due {iso(due_ms)}"

        def build(pipe: Any) -> None:
            # the shard first: a crash between leaves a job released when due (then claimed
            # as a new one), never a record waiting for an entry that is not there
            pipe.hset(keys.schedule_jobs(shard), member, encode(routing_key, body))
            pipe.zadd(keys.schedule_due(shard), due_ms, member)
            SCHEDULE.queue(pipe, [keys.job(account_id, job_id)], SCHEDULE_ARGS.argv(dict(
                due=due_ms, ttl=self._ttl, attempt=attempt, detail=detail)))

        decision = _decision((await run_pipeline(self._redis, build, SCHEDULE, self._send))[-1])
        if decision.verdict != "scheduled":
            await self._forget([(shard, member)])
        return decision

    async def release(self, limit: int, shards: Iterable[int] = range(keys.SCHEDULE_SHARDS)
                      ) -> tuple[list[Due], int | None]:
        """Lease up to ``limit`` due jobs of each shard (one round trip for all shards):
        the jobs, and when none was due the earliest due time of any (epoch ms; None when
        nothing waits)."""
        shards = list(shards)

        def build(pipe: Any) -> None:
            for shard in shards:
                RELEASE.queue(pipe, [keys.schedule_due(shard), keys.schedule_jobs(shard)],
                              RELEASE_ARGS.argv(dict(limit=limit, lease=LEASE_MS)))

        replies = await run_pipeline(self._redis, build, RELEASE)
        released: list[Due] = []
        empty: list[tuple[int, str]] = []
        upcoming = [int(float(text(r[1]))) for r in replies if text(r[1])]
        for shard, reply in zip(shards, replies, strict=True):
            for i in range(2, len(reply), 3):
                member, score, value = text(reply[i]), reply[i + 1], reply[i + 2]
                if not value:
                    empty.append((shard, member))  # its bytes are gone: nothing to send
                    continue
                key, body = decode_value(value if isinstance(value, bytes) else value.encode())
                released.append(Due(shard, member, int(float(text(score))), key, body))
        if empty:
            await self._forget(empty)
        return released, (min(upcoming) if upcoming and not released else None)

    async def done(self, dues: Iterable[Due]) -> None:
        """The broker has these: off their shards (one round trip)."""
        await self._forget([(d.shard, d.member) for d in dues])

    async def put_back(self, dues: Iterable[Due]) -> None:
        """Not published (the broker refused or was away): due again at once, not at the
        end of their lease."""
        commands = [("ZADD", keys.schedule_due(d.shard), "XX", d.due_ms, d.member)
                    for d in dues]
        if commands:
            await execute(self._redis, commands)

    async def _forget(self, entries: list[tuple[int, str]]) -> None:
        commands: list[tuple[Any, ...]] = []
        for shard, member in entries:
            commands.append(("ZREM", keys.schedule_due(shard), member))
            commands.append(("HDEL", keys.schedule_jobs(shard), member))
        if commands:
            await execute(self._redis, commands)

    async def cancel(self, account_id: str, job_id: str, *, detail: str) -> Cancelled:
        """Cancel a job still waiting (``cancelled``); ``already`` when it was; ``unknown``
        without a record (never read by a worker, or older than the idempotency TTL);
        ``too_late`` once it is claimed or ended otherwise. A cancelled job's entry becomes
        due at once, so a worker publishes its ``cancelled`` event now."""
        reply = await CANCEL(self._redis, [keys.job(account_id, job_id),
                                           keys.timeline(account_id, job_id)],
                             CANCEL_ARGS.argv(dict(
                                 ttl=self._ttl, timeline_keep=keys.TIMELINE_KEEP,
                                 timeline_ttl=self._timeline_ttl,
                                 value_max=keys.HASH_VALUE_MAX, detail=detail)))
        outcome, status, due = (text(x) for x in reply)
        if outcome in (CANCELLED, ALREADY):
            shard = keys.schedule_shard(account_id, job_id)
            await execute(self._redis, [("ZADD", keys.schedule_due(shard), "XX", 0,
                                         keys.schedule_member(account_id, job_id))])
        return Cancelled(outcome, status, iso(due) if due else None)

    async def waiting(self) -> int:
        """Jobs waiting in every shard (tests, the benchmark, a gauge)."""
        replies = await execute(self._redis, [("ZCARD", keys.schedule_due(s))
                                              for s in range(keys.SCHEDULE_SHARDS)])
        return sum(int(r) for r in replies)
