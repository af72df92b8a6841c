"""A job's story and a recipient's recent jobs: the read side (CLI and admin API).

The worker writes both in the Redis round trips it makes anyway (:mod:`suppression.gate`):

* the job's timeline: one entry per status — a refusal by the pre-send script, every status
  the post-send script writes (``R`` entered as ``deferred``, a provider's report, a late
  ``sent`` that no longer moves the status). The newest entry that moved the status is kept
  in the job's record itself (fields ``et`` time, ``ed`` detail and, for a provider's
  report, ``ea`` attempt, beside ``st``, ``a``, ``r``, ``p``, ``pm``), for
  ``OUTBOX_IDEMPOTENCY_TTL``. The others are packed: in the record too when
  ``OUTBOX_RETENTION_TIMELINES`` is the record's own and each part fits Redis's compact hash
  encoding (64 bytes; fields ``e<n>`` ``[at, status, reason, provider, attempt]``, ``d<n>``
  detail, ``m<n>`` provider message id, ``tn`` the last n), else in the list
  ``outbox:{acct:A}:tl:<id>`` (``[at, status, reason, detail, provider,
  provider_message_id, attempt]``), kept for ``OUTBOX_RETENTION_TIMELINES`` after its last
  entry. So most jobs have no timeline key. Records written before (every entry a JSON
  object in the list) read the same;
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
from typing import Any

from suppression import channels, keys
from suppression.address import BadAddress
from suppression.clock import iso_ms
from suppression.replies import decode, text
from suppression.roundtrip import Client

#: what the job hash's working states mean to a reader (every other value is a status, ``held``
#: included: a job held while its account is blocked, suppression/held.py)
STATE_NAMES = {"S": "sending", "R": "deferred", "W": "scheduled"}
MAX_HISTORY = keys.HISTORY_KEEP
_ENTRY_FIELDS = ("status", "reason", "detail", "provider", "provider_message_id")
#: the fields of a packed timeline entry, in order (post_send.lua, pre_send.lua)
_PACKED = ("at", "status", "reason", "detail", "provider", "provider_message_id", "attempt")
#: an entry kept in the job's record: these in field ``e<n>``, detail and message id beside
_HEAD = ("at", "status", "reason", "provider", "attempt")


def iso(ms: float | int | str | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (``2026-11-25T14:15:51.123Z``)."""
    if ms in (None, ""):
        return None
    return iso_ms(float(ms) / 1000)


def _entry(raw: Any) -> dict[str, Any]:
    """One timeline entry of the list: ``at`` in ISO 8601, empty strings as None. Packed
    (a JSON array, :data:`_PACKED`) or, as written before, a JSON object."""
    data = json.loads(text(raw))
    if isinstance(data, list):
        data = dict(zip(_PACKED, data, strict=False))
    return _shown(data)


def _shown(data: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"at": iso(data.get("at"))}
    entry.update({f: data.get(f) or None for f in _ENTRY_FIELDS})
    entry["attempt"] = int(data.get("attempt") or 0)
    return entry


def _held_entry(job: dict[str, str]) -> dict[str, Any] | None:
    """The timeline entry the job's record holds (``et`` set), or None."""
    if not job.get("et"):
        return None
    st = job.get("st", "")
    shown = STATE_NAMES[st] if st in ("R", "W") else st  # "S" never holds an entry
    return _shown({"at": int(job["et"]), "status": shown,
                   "reason": job.get("r"), "detail": job.get("ed"), "provider": job.get("p"),
                   "provider_message_id": job.get("pm"),
                   "attempt": job.get("ea") or job.get("a")})


def _in_record(job: dict[str, str]) -> list[dict[str, Any]]:
    """The earlier entries the job's record holds, in order: field ``e<n>`` ``[at, status,
    reason, provider, attempt]``, ``d<n>`` its detail, ``m<n>`` its provider message id."""
    numbers = sorted(int(f[1:]) for f in job if f[:1] == "e" and f[1:].isdigit())
    entries = []
    for n in numbers:
        data = dict(zip(_HEAD, json.loads(job[f"e{n}"]), strict=False))
        data.update(detail=job.get(f"d{n}"), provider_message_id=job.get(f"m{n}"))
        entries.append(_shown(data))
    return entries


def _timeline(job: dict[str, str], listed: list[Any]) -> list[dict[str, Any]]:
    """The entries of the record and of the list, oldest first (by time; among equal times
    the record's earlier ones, the list's, then the record's newest)."""
    timeline = _in_record(job) + [_entry(e) for e in listed]
    held = _held_entry(job)
    if held is not None:
        timeline.append(held)
    timeline.sort(key=lambda e: e["at"] or "")
    return timeline


def _status(state: str) -> str:
    return STATE_NAMES.get(state, state) if state else "unknown"


async def job_story(redis: Client, account_id: str, job_id: str) -> dict[str, Any] | None:
    """The job's current status and its timeline (oldest first), or None when Redis holds
    neither its record nor its timeline (unknown, or older than the idempotency TTL).
    ``due``: its ``send_at`` when it was scheduled (status ``scheduled`` while it waits)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.job(account_id, job_id))
    pipe.lrange(keys.timeline(account_id, job_id), 0, -1)
    record, raw_timeline = await pipe.execute()
    if not record and not raw_timeline:
        return None
    job = decode(record)
    timeline = _timeline(job, raw_timeline)
    last = timeline[-1] if timeline else {}
    return {"account_id": account_id, "id": job_id,
            "status": _status(job.get("st", "") or last.get("status") or ""),
            "reason": job.get("r") or last.get("reason"),
            "attempt": int(job.get("a") or last.get("attempt") or 0),
            "provider": job.get("p") or last.get("provider"),
            "provider_message_id": job.get("pm") or last.get("provider_message_id"),
            "updated": last.get("at"), "due": iso(job.get("sa")), "timeline": timeline}


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
        pipe.hgetall(keys.job(account, job))
        pipe.lindex(keys.timeline(account, job), -1)
    replies = await pipe.execute() if seen else []
    rows = []
    for i, (score, account, job, name, addr) in enumerate(seen):
        record = decode(replies[2 * i])
        st, attempt, reason, provider = (record.get(f) for f in ("st", "a", "r", "p"))
        last_raw = replies[2 * i + 1]
        listed = _timeline(record, [last_raw] if last_raw else [])
        last = listed[-1] if listed else {}
        if st is None and not last:
            continue  # its record has expired: nothing left to tell
        rows.append({"account_id": account, "id": job, "channel": name, "address": addr,
                     "first_seen": iso(score / 1000), "status": _status(text(st)),
                     "reason": text(reason) or last.get("reason"),
                     "attempt": int(text(attempt) or last.get("attempt") or 0),
                     "provider": text(provider) or last.get("provider"),
                     "updated": last.get("at")})
    return rows
