"""A job's story and a recipient's recent jobs: the read side (CLI and admin API).

The worker writes both in the Redis round trips it makes anyway (:mod:`suppression.gate`):

* the job's timeline (``outbox:{acct:A}:tl:<id>``): one entry per status — a refusal by the
  pre-send script, every status the post-send script writes (``R`` entered as ``deferred``,
  a provider's report, a late ``sent`` that no longer moves the status) — kept, like the job's
  idempotency record, for ``OUTBOX_IDEMPOTENCY_TTL`` after its last entry;
* the recipient's index of an account's jobs (``outbox:{acct:A}:hist:<channel>:<addr>``,
  written by the pre-send script) and across accounts (``outbox:hist:<channel>:<addr>``,
  written beside it in the same pipeline): the newest :data:`suppression.keys.HISTORY_KEEP`
  jobs by first seen, refreshed with every new job.

A job refused before the pre-send script could claim it (invalid, on the wrong queue, refused
by its sender's checks) gets its timeline entry from :func:`record_entry` (one write, only
for such jobs): the entry alone, never the job hash, so a corrected job published again with
the same id, or replayed from ``outbox.dead``, is processed as new, and a rejected duplicate of
a job already sent does not change that job's status. :func:`job_story` then reads the status
from the last entry.

Addresses are read in their canonical form (:func:`suppression.channels.normalise`), so any
spelling of an address finds its jobs. Times are ISO 8601 UTC with milliseconds.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from suppression import channels, keys
from suppression.address import BadAddress
from suppression.replies import decode, text
from suppression.roundtrip import Client

#: what the job hash's working states mean to a reader (every other value is a status)
STATE_NAMES = {"S": "sending", "R": "deferred"}
MAX_HISTORY = keys.HISTORY_KEEP
_ENTRY_FIELDS = ("status", "reason", "detail", "provider", "provider_message_id")


def iso(ms: float | int | str | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (``2026-11-25T14:15:51.123Z``)."""
    if ms in (None, ""):
        return None
    moment = datetime.fromtimestamp(float(ms) / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _entry(raw: Any) -> dict[str, Any]:
    """One timeline entry: ``at`` in ISO 8601, empty strings as None."""
    data = json.loads(text(raw))
    entry: dict[str, Any] = {"at": iso(data.get("at"))}
    entry.update({f: data.get(f) or None for f in _ENTRY_FIELDS})
    entry["attempt"] = int(data.get("attempt") or 0)
    return entry


def _status(state: str) -> str:
    return STATE_NAMES.get(state, state) if state else "unknown"


async def job_story(redis: Client, account_id: str, job_id: str) -> dict[str, Any] | None:
    """The job's current status and its timeline (oldest first), or None when Redis holds
    neither its record nor its timeline (unknown, or older than the idempotency TTL)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.job(account_id, job_id))
    pipe.lrange(keys.timeline(account_id, job_id), 0, -1)
    record, raw_timeline = await pipe.execute()
    if not record and not raw_timeline:
        return None
    job = decode(record)
    timeline = [_entry(e) for e in raw_timeline]
    last = timeline[-1] if timeline else {}
    return {"account_id": account_id, "id": job_id,
            "status": _status(job.get("st", "") or last.get("status") or ""),
            "reason": job.get("r") or last.get("reason"),
            "attempt": int(job.get("a") or last.get("attempt") or 0),
            "provider": job.get("p") or last.get("provider"),
            "provider_message_id": job.get("pm") or last.get("provider_message_id"),
            "updated": last.get("at"), "timeline": timeline}


async def record_entry(redis: Client, account_id: str, job_id: str, *, status: str,
                       reason: str, detail: str, ttl: int, attempt: int = 0,
                       keep: int = keys.TIMELINE_KEEP) -> None:
    """Add a timeline entry outside the gate's scripts (a rejection before the claim, a replay
    from ``outbox.dead``): the same fields as theirs, kept for ``ttl`` seconds; one round trip,
    the job hash untouched (see the module's docstring). A rejected job's ``account_id`` and
    ``job_id`` come from :func:`suppression.keys.rejection_record`."""
    key = keys.timeline(account_id, job_id)
    entry = json.dumps({"at": time.time_ns() // 1_000_000, "status": status, "reason": reason,
                        "detail": detail, "provider": "", "provider_message_id": "",
                        "attempt": attempt}, ensure_ascii=False, separators=(",", ":"))
    pipe = redis.pipeline(transaction=False)
    pipe.rpush(key, entry)
    pipe.ltrim(key, -keep, -1)
    pipe.expire(key, ttl)
    await pipe.execute()


def _channels_of(address: str, channel: str | None) -> list[tuple[str, str]]:
    """``(channel, canonical address)`` to look under; BadAddress when there is none."""
    problems = []
    found = []
    for name in [channel] if channel else channels.candidates(address):
        try:
            found.append((name, channels.normalise(name, address)))
        except BadAddress as exc:
            problems.append(str(exc))
    if not found:
        raise BadAddress("; ".join(problems) or f"not an address: {address!r}")
    return found


async def recipient_history(redis: Client, address: str, *, account_id: str | None = None,
                            channel: str | None = None, limit: int = 20
                            ) -> list[dict[str, Any]]:
    """The recipient's recent jobs, newest first (by when each was first seen), with their
    current status: one account's (``account_id``), or across accounts (the global index).
    Jobs whose record has expired are left out. BadAddress for an address with no canonical
    form on any channel it could be on (or on ``channel``)."""
    limit = max(1, min(limit, MAX_HISTORY))
    seen: list[tuple[float, str, str, str, str]] = []  # (first seen, account, job, channel, addr)
    for name, addr in _channels_of(address, channel):
        key = (keys.history(account_id, name, addr) if account_id else
               keys.global_history(name, addr))
        pairs: list[Any] = await redis.zrevrange(key, 0, limit - 1, withscores=True)
        for member, score in pairs:
            if account_id:
                account, job = account_id, text(member)
            else:
                account, _, job = text(member).partition(keys.HISTORY_SEPARATOR)
            if account and job:
                seen.append((float(score), account, job, name, addr))
    seen.sort(key=lambda s: s[0], reverse=True)
    seen = seen[:limit]
    pipe = redis.pipeline(transaction=False)
    for _, account, job, _, _ in seen:
        pipe.hmget(keys.job(account, job), ["st", "a", "r", "p"])
        pipe.lindex(keys.timeline(account, job), -1)
    replies = await pipe.execute() if seen else []
    rows = []
    for i, (score, account, job, name, addr) in enumerate(seen):
        (st, attempt, reason, provider), last_raw = replies[2 * i], replies[2 * i + 1]
        last = _entry(last_raw) if last_raw else {}
        if st is None and not last:
            continue  # its record has expired: nothing left to tell
        rows.append({"account_id": account, "id": job, "channel": name, "address": addr,
                     "first_seen": iso(score / 1000), "status": _status(text(st)),
                     "reason": text(reason) or last.get("reason"),
                     "attempt": int(text(attempt) or last.get("attempt") or 0),
                     "provider": text(provider) or last.get("provider"),
                     "updated": last.get("at")})
    return rows
