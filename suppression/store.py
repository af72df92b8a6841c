"""Support-side data operations: suppression entries, consent, preferences, accounts, audit.

Async, Redis injected; the CLI (``outbox/support.py``) and the admin API use these, the worker
never does (its reads are the gate's single round trip). Key layout: :mod:`suppression.keys`.

Suppression entries are written by :mod:`suppression.entries` (the one writer: shape, scope
rule, canonical address), which the gate uses too. Scope (README, "Support operations";
"Suppression"): facts about an address (``hard_bounce``, ``complaint``, ``invalid``) are global
whatever account is named; choices of a person (``unsubscribe``, ``sms_stop``) belong to one
account and need it; ``manual`` is either; ``dnc_register`` entries come only from the register
import (:meth:`SuppressionStore.add_dnc`) and apply to marketing SMS.

Exceptions (``StoreError`` and ``BadEntry`` are :mod:`suppression.entries`')::

    StoreError          a request that cannot be carried out (message says why)
    ├── UnknownAccount  no such account
    └── BadEntry        a bad address, channel, reason or scope
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from config.reputation import check_override
from suppression import channels, entries, keys
from suppression.address import BadAddress
from suppression.address import email as canonical_email
from suppression.entries import BadEntry, StoreError
from suppression.gate import Script
from suppression.replies import decode, text
from suppression.reputation import OVERRIDES, PARAMS, STATES, Policy, Rates, sum_buckets
from suppression.roundtrip import Client
from suppression.script_args import Arguments
from suppression.senders import ACCOUNT_SETTINGS as IDENTITY_FIELDS
from suppression.senders import sms_senders

SENDER_FIELDS = ("business_name", "address", "contact_email", "contact_phone")
#: support.lua's ARGV (its header says what each is)
SUPPORT_ARGS = Arguments.declare("support", rest="channels", action="str", actor="str",
                                 reason="str", probation="num")
_SUPPORT = Script("support", SUPPORT_ARGS)


class UnknownAccount(StoreError):
    """No account with that id."""



class Audit:
    """Audit streams: one per account (``outbox:{acct:A}:audit``) and one global."""

    def __init__(self, redis: Client) -> None:
        self._redis = redis

    async def record(self, account_id: str | None, *, actor: str, action: str, reason: str,
                     before: str = "", after: str = "", **extra: Any) -> str:
        """Append one record; returns its id. Trimmed only below 3 years."""
        key = keys.audit(account_id) if account_id else keys.GLOBAL_AUDIT
        now = int(time.time())
        fields: dict[Any, Any] = {"at": now, "actor": actor, "action": action, "reason": reason,
                  "from": before, "to": after, "detail": f"{actor}: {reason}",
                  **{k: "" if v is None else v for k, v in extra.items()}}
        minid = (now - keys.AUDIT_KEEP_SECONDS) * 1000
        return text(await self._redis.xadd(key, fields, minid=minid, approximate=True))

    async def read(self, account_id: str | None, *, limit: int = 100) -> list[dict[str, str]]:
        """Newest first."""
        key = keys.audit(account_id) if account_id else keys.GLOBAL_AUDIT
        rows: list[tuple[Any, Any]] = await self._redis.xrevrange(key, count=limit) or []
        return [{"id": text(i), **decode(f)} for i, f in rows]


@dataclass(frozen=True, slots=True)
class Change:
    """A support action's effect on an account's state."""

    account_id: str
    from_state: str
    to_state: str
    audit_id: str
    probation_until: int | None


class AccountStore:
    """Account state, settings, reputation snapshot and support actions."""

    def __init__(self, redis: Client, policy: Policy) -> None:
        self._redis = redis
        self.policy = policy
        self.audit = Audit(redis)

    async def exists(self, account_id: str) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        pipe.sismember(keys.ACCOUNTS, account_id)
        pipe.exists(keys.state(account_id), keys.config(account_id))
        member, count = await pipe.execute()
        return bool(member) or bool(count)

    async def require(self, account_id: str) -> None:
        if not await self.exists(account_id):
            raise UnknownAccount(f"unknown account {account_id!r}")

    async def ids(self) -> list[str]:
        return sorted(text(m) for m in await self._redis.smembers(keys.ACCOUNTS))

    async def states(self, ids: list[str]) -> dict[str, str]:
        pipe = self._redis.pipeline(transaction=False)
        for account_id in ids:
            pipe.hget(keys.state(account_id), "state")
        return {a: text(s) or "active" for a, s in zip(ids, await pipe.execute(), strict=True)}

    async def list(self, state: str | None = None) -> list[dict[str, str]]:
        found = await self.states(await self.ids())
        return [{"account_id": a, "state": s} for a, s in found.items()
                if state is None or s == state]

    async def count_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for s in (await self.states(await self.ids())).values():
            counts[s] = counts.get(s, 0) + 1
        return counts

    async def configure(self, account_id: str, *, actor: str = "support",
                        **fields: Any) -> dict[str, str]:
        """Set sender information, limits and overrides (``None`` values are left alone)."""
        values = {k: v for k, v in fields.items() if v is not None}
        unknown = set(values) - set(OVERRIDES) - set(SENDER_FIELDS) - set(IDENTITY_FIELDS) \
            - {"topic_caps"}
        if unknown:
            raise BadEntry(f"unknown account setting(s): {', '.join(sorted(unknown))}")
        try:  # the bounds and types declared in config/reputation.py
            values = {k: check_override(k, v) if k in OVERRIDES else
                      identity_setting(k, v) if k in IDENTITY_FIELDS else
                      topic_caps_setting(v) if k == "topic_caps" else v
                      for k, v in values.items()}
        except ValueError as exc:
            raise BadEntry(str(exc)) from None
        if values:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(keys.config(account_id), mapping={k: str(v) for k, v in values.items()})
            pipe.sadd(keys.ACCOUNTS, account_id)
            await pipe.execute()
            changed = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
            await self.audit.record(account_id, actor=actor, action="configure",
                                    reason=changed)
        return decode(await self._redis.hgetall(keys.config(account_id)))

    async def show(self, account_id: str, *, transitions: int = 10) -> dict[str, Any]:
        """Everything support needs on one account (``outbox accounts show``)."""
        await self.require(account_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.state(account_id))
        pipe.hgetall(keys.config(account_id))
        for channel in channels.names():
            pipe.hgetall(keys.reputation(account_id, channel))
        pipe.lrange(keys.recent(account_id), 0, 19)
        pipe.hgetall(keys.quota(account_id))
        pipe.hgetall(keys.senders(account_id))
        state, cfg, *reps, recent, quota, senders = await pipe.execute()
        now = await self._redis.time()  # keyless: no place in a Redis Cluster pipeline
        state, cfg = decode(state), decode(cfg)
        policy = self.policy.with_overrides(cfg)
        return {
            "account_id": account_id,
            "state": state.get("state") or "active",
            "since": state.get("since") or None,
            "state_reason": state.get("reason") or None,
            "probation_until": state.get("probation_until") or None,
            "rates": {ch: self._rates(decode(rep), policy, int(now[0]))
                      for ch, rep in zip(channels.names(), reps, strict=True)},
            "limits": {"rate": policy.rate, "burst": policy.burst,
                       "throttle_factor": policy.throttle_factor,
                       "consent_mode": policy.consent_mode,
                       "thresholds": _thresholds(policy),
                       "quiet_hours": _quiet(policy),
                       "frequency_caps": _caps(policy, cfg),
                       "daily_quota": policy.daily_quota, "quota_mode": policy.quota_mode,
                       "quota_used_today": _quota_used(decode(quota), policy, int(now[0]))},
            "overrides": {k: v for k, v in cfg.items() if k in OVERRIDES},
            "sender": {k: cfg.get(k) for k in SENDER_FIELDS},
            "identity": identity_view(cfg),
            # verified sending domains (outbox domains), with whether each has DMARC
            "sending_domains": [{"domain": d, "dmarc": flag == "1"}
                                for d, flag in sorted(decode(senders).items())],
            "recent_transitions": await self.audit.read(account_id, limit=transitions),
            "recent_bounce_reasons": [_json(r) for r in recent],
        }

    @staticmethod
    def _rates(fields: dict[str, str], policy: Policy, now: int) -> dict[str, Any]:
        sums = sum_buckets(fields, now=now, bucket=policy.reputation_bucket,
                           window=policy.reputation_window)
        return Rates(sums["s"], sums["h"], sums["c"], policy.reputation_window,
                     policy).as_dict()

    async def support(self, account_id: str, action: str, *, actor: str,
                      reason: str) -> Change:
        """``unblock``, ``suspend`` or ``unsuspend``, audited; unblock and unsuspend start a
        probation period with fresh counters."""
        if not actor.strip() or not reason.strip():
            raise BadEntry("an actor and a reason are required")
        await self.require(account_id)
        reply = [text(x) for x in await _SUPPORT(
            self._redis, *support_call(account_id, action, actor=actor, reason=reason,
                                       probation=self.policy.probation_seconds))]
        if reply[0] != "ok":
            raise StoreError(f"cannot {action} account {account_id!r}: it is {reply[1]}")
        return Change(account_id, reply[1], reply[2], reply[3],
                      int(reply[4]) if reply[4] else None)


def identity_setting(name: str, value: Any) -> str:
    """An identity setting as the cfg hash keeps it (the pre-send script reads it):
    ``sms_senders`` canonical and comma-separated, the ``allow_*`` switches ``1``/``0``;
    ValueError for a bad value."""
    if name == "sms_senders":
        if not isinstance(value, str):
            raise ValueError("sms_senders must be comma-separated senders (numbers, Messaging "
                             "Service SIDs, sender IDs), or '' for none")
        return sms_senders(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    flag = str(value).strip().lower()
    if flag in ("1", "true", "yes", "on"):
        return "1"
    if flag in ("0", "false", "no", "off"):
        return "0"
    raise ValueError(f"{name} must be true or false, not {value!r}")


_TOPIC_CAP = re.compile(r"^([^\s,=:]{1,64}):([a-z][a-z0-9_]*)=([0-9]{1,6})$")


def topic_caps_setting(value: Any) -> str:
    """Caps per topic and channel as the cfg hash keeps them (pre_send.lua reads it):
    ``topic:channel=N`` entries, comma-separated, sorted, one per topic and channel (''
    clears them); ValueError naming the bad entry."""
    if not isinstance(value, str):
        raise ValueError("topic_caps must be text: 'topic:channel=N,...' ('' for none)")
    caps: dict[str, int] = {}
    for raw in filter(None, (e.strip() for e in value.split(","))):
        match = _TOPIC_CAP.match(raw)
        if not match or match.group(2) not in channels.names():
            raise ValueError(f"topic_caps: {raw!r} is not 'topic:channel=N' (channel one of "
                             f"{', '.join(channels.names())}; a topic without spaces, ',', "
                             "'=' or ':', at most 64 characters)")
        n = int(match.group(3))
        if n < 1:
            raise ValueError(f"topic_caps: {raw!r}: N must be at least 1 (leave it out for "
                             "no cap)")
        caps[f"{match.group(1)}:{match.group(2)}"] = n
    return ",".join(f"{k}={n}" for k, n in sorted(caps.items()))


def identity_view(cfg: dict[str, str]) -> dict[str, Any]:
    """The identity settings of an account's cfg hash, as shown."""
    senders = cfg.get("sms_senders") or ""
    return {"sms_senders": [s for s in senders.split(",") if s],
            "allow_any_reply_to": cfg.get("allow_any_reply_to") == "1",
            "allow_missing_dmarc": cfg.get("allow_missing_dmarc") == "1"}


def support_call(account_id: str, action: str, *, actor: str, reason: str,
                 probation: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of support.lua."""
    if action not in ("unblock", "suspend", "unsuspend"):
        raise BadEntry(f"unknown support action {action!r}")
    return ([keys.state(account_id), keys.audit(account_id),
             *(keys.reputation(account_id, ch) for ch in channels.names())],
            SUPPORT_ARGS.argv(dict(action=action, actor=actor, reason=reason,
                                   probation=probation), rest=channels.names()))


def _thresholds(p: Policy) -> dict[str, Any]:
    return {"warning_bounce": p.warning_bounce, "warning_complaint": p.warning_complaint,
            "throttle_bounce": p.throttle_bounce, "block_bounce": p.block_bounce,
            "throttle_complaint": p.throttle_complaint, "block_complaint": p.block_complaint,
            "min_bounce_volume": p.min_bounce_volume,
            "min_complaint_volume": p.min_complaint_volume,
            "early_bounce_volume": p.early_bounce_volume,
            "early_complaint_volume": p.early_complaint_volume,
            "window": p.reputation_window, "bucket": p.reputation_bucket, "z": p.z}


def _caps(p: Policy, cfg: dict[str, str]) -> dict[str, Any]:
    """The frequency caps set (``<category>_<channel>`` → messages per ``period``; per
    ``<topic>:<channel>`` under ``topics``) and what a job over one does (``mode``)."""
    caps = {f.name[4:]: getattr(p, f.name) for f in PARAMS
            if f.name.startswith("cap_") and f.name not in ("cap_period", "cap_mode")
            and getattr(p, f.name)}
    topics = {k: int(n) for k, _, n in (e.rpartition("=") for e in
                                        (cfg.get("topic_caps") or "").split(",") if e)}
    return {"caps": caps, "topics": topics, "period": p.cap_period, "mode": p.cap_mode}


def _quiet(p: Policy) -> dict[str, Any]:
    """The quiet hours (``HH:MM`` in the recipient's time) and what is dropped in them, and
    what waits for their end."""
    return {"from": f"{p.quiet_start // 60:02d}:{p.quiet_start % 60:02d}",
            "to": f"{p.quiet_end // 60:02d}:{p.quiet_end % 60:02d}",
            **{mode: sorted(f.name[6:] for f in PARAMS
                            if f.name.startswith("quiet_") and getattr(p, f.name) == mode)
               for mode in ("drop", "wait")}}


def _quota_used(quota: dict[str, str], p: Policy, now: int) -> int:
    """Jobs claimed in the quota's current day (as pre_send.lua counts them)."""
    today = quota_day(now, p.quota_utc_offset)
    return int(quota.get("n") or 0) if quota.get("day") == str(today) else 0


def quota_day(now: int, utc_offset: int) -> int:
    """The quota's day number at epoch second ``now`` (pre_send.lua's arithmetic)."""
    return (now + utc_offset) // 86400


def _json(raw: Any) -> Any:
    import json

    try:
        return json.loads(text(raw))
    except ValueError:
        return text(raw)


class SuppressionStore:
    """Suppression entries: global, per account, and the DNC register."""

    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self.audit = Audit(redis)

    @staticmethod
    def scope(reason: str, account_id: str | None) -> str | None:
        """The account an entry belongs to, or None for a global entry
        (:func:`suppression.entries.scope`); DNC numbers come only from the register import."""
        if reason not in entries.REASONS or reason == "dnc_register":
            allowed = ", ".join(r for r in entries.REASONS if r != "dnc_register")
            raise BadEntry(f"reason must be one of {allowed} (DNC numbers come from "
                           f"`suppression import --dnc`), not {reason!r}")
        return entries.scope(reason, account_id)

    async def add(self, address: str, *, channel: str, reason: str,
                  account_id: str | None = None, expires: int | None = None,
                  source: str = "", detail: str | None = None, actor: str = "support",
                  audit: bool = True, pipe: Any = None) -> dict[str, Any]:
        """Add (or replace) one entry (:mod:`suppression.entries`); returns it.
        ``pipe``: queue the writes there instead."""
        self.scope(reason, account_id)
        e = entries.entry(channel, address, reason, account_id=account_id, source=source,
                          detail=detail, actor=actor, expires=expires)
        if pipe is not None:
            entries.queue(pipe, e)
        else:
            await entries.write(self._redis, e)
        if audit:
            await self.audit.record(e.account_id, actor=actor, action="suppression.add",
                                    reason=reason, address=e.address, channel=channel,
                                    source=source)
        return entries.describe(e.key, {k: str(v) for k, v in e.fields.items()})

    async def remove(self, address: str, *, channel: str, account_id: str | None = None,
                     actor: str, reason: str) -> list[dict[str, Any]]:
        """Remove the entries of ``address`` in the given scope (global, or one account's);
        audited. Returns the removed entries."""
        if not actor.strip() or not reason.strip():
            raise BadEntry("an actor and a reason are required")
        addr = entries.canonical(channel, address)
        key = entries.key(channel, addr, account_id)
        found = decode(await self._redis.hgetall(key))
        if not found:
            return []
        await self._redis.delete(key)
        await self.audit.record(account_id, actor=actor, action="suppression.remove",
                                reason=reason, address=addr, channel=channel,
                                removed=found.get("reason", ""))
        return [entries.describe(key, found)]

    async def check(self, address: str, *, account_id: str | None = None,
                    channel: str | None = None) -> list[dict[str, Any]]:
        """Every entry that applies to ``address`` (global, DNC, and the account's)."""
        wanted = []
        for ch in [channel] if channel else channels.candidates(address):
            addr = entries.canonical(ch, address)
            wanted.append(keys.global_suppression(ch, addr))
            if ch == channels.DNC:
                wanted.append(keys.dnc(addr))
            if account_id:
                wanted.append(keys.account_suppression(account_id, ch, addr))
        pipe = self._redis.pipeline(transaction=False)
        for key in wanted:
            pipe.hgetall(key)
        found = zip(wanted, await pipe.execute(), strict=True)
        return [entries.describe(k, decode(v)) for k, v in found if v]

    async def entries(self, *, account_id: str | None = None,
                      reason: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Entries of one account, or the global ones (DNC numbers only when
        ``reason='dnc_register'``), by SCAN."""
        if account_id:
            pattern = keys.account_suppressions_pattern(account_id)
        elif reason == "dnc_register":
            pattern = keys.DNC_PATTERN
        else:
            pattern = keys.GLOBAL_SUPPRESSIONS_PATTERN
        batch: list[str] = []
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            batch.append(text(key))
            if len(batch) >= 500:
                async for e in self._fetch(batch, reason):
                    yield e
                batch = []
        async for e in self._fetch(batch, reason):
            yield e

    async def _fetch(self, batch: list[str], reason: str | None) -> AsyncIterator[dict[str, Any]]:
        if not batch:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in batch:
            pipe.hgetall(key)
        for key, raw in zip(batch, await pipe.execute(), strict=True):
            entry = decode(raw)
            if entry and (reason is None or entry.get("reason") == reason):
                yield entries.describe(key, entry)

    async def add_many(self, rows: Iterable[tuple[str, str, str]], *,
                       account_id: str | None, source: str, actor: str) -> int:
        """Add validated ``(address, channel, reason)`` rows, pipelined; returns the count."""
        count = 0
        pipe = self._redis.pipeline(transaction=False)
        for address, channel, reason in rows:
            await self.add(address, channel=channel, reason=reason, account_id=account_id,
                           source=source, actor=actor, audit=False, pipe=pipe)
            count += 1
        await pipe.execute()
        return count

    async def add_dnc(self, numbers: Iterable[str], *, source: str) -> int:
        """Store E.164 numbers as DNC register entries (marketing SMS only), pipelined."""
        now = int(time.time())
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for number in numbers:
            entries.queue(pipe, entries.entry(channels.DNC, number, "dnc_register",
                                              source=source, actor="import", now=now))
            count += 1
        await pipe.execute()
        return count


class ConsentStore:
    """Consent records: account × recipient × channel, granted or revoked, with evidence.
    Never expire (kept at least 3 years); a revoke keeps the grant's evidence beside it."""

    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self.audit = Audit(redis)

    async def set(self, account_id: str, recipient: str, *, channel: str, granted: bool,
                  source: str = "", evidence: str = "", actor: str = "support"
                  ) -> dict[str, Any]:
        addr = entries.canonical(channel, recipient)
        key = keys.consent(account_id, channel, addr)
        now = int(time.time())
        verb = "grant" if granted else "revoke"
        status = "granted" if granted else "revoked"
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping={"status": status, "at": now, f"{status}_at": now,
                                f"{verb}_source": source, f"{verb}_evidence": evidence,
                                "actor": actor})
        pipe.sadd(keys.ACCOUNTS, account_id)
        await pipe.execute()
        await self.audit.record(account_id, actor=actor, action=f"consent.{verb}",
                                reason=source or verb, address=addr, channel=channel)
        return await self.get(account_id, recipient, channel=channel)

    async def grant(self, account_id: str, recipient: str, **kw: Any) -> dict[str, Any]:
        return await self.set(account_id, recipient, granted=True, **kw)

    async def revoke(self, account_id: str, recipient: str, **kw: Any) -> dict[str, Any]:
        return await self.set(account_id, recipient, granted=False, **kw)

    async def get(self, account_id: str, recipient: str, *, channel: str) -> dict[str, Any]:
        addr = entries.canonical(channel, recipient)
        raw = decode(await self._redis.hgetall(keys.consent(account_id, channel, addr)))
        if "revokeed_at" in raw:  # written so before the README's ``revoked_at`` was
            raw.setdefault("revoked_at", raw.pop("revokeed_at"))
        return {"account_id": account_id, "recipient": addr, "channel": channel,
                "status": raw.get("status") or "none", **{k: v for k, v in raw.items()
                                                          if k != "status"}}


class PrefsStore:
    """Notification preferences: account × recipient × topic × channel, on or off
    (no record = on)."""

    def __init__(self, redis: Client) -> None:
        self._redis = redis

    async def set(self, account_id: str, recipient: str, *, topic: str, channel: str,
                  on: bool) -> dict[str, Any]:
        if not topic or ":" in topic:
            raise BadEntry("a topic is a non-empty name without ':'")
        addr = entries.canonical(channel, recipient)
        await self._redis.hset(keys.prefs(account_id, addr), f"{topic}:{channel}",
                               "1" if on else "0")
        return await self.get(account_id, addr, channel=channel)

    async def get(self, account_id: str, recipient: str, *,
                  channel: str | None = None) -> dict[str, Any]:
        channel = channel or channels.guess(recipient)
        addr = entries.canonical(channel, recipient)
        raw = decode(await self._redis.hgetall(keys.prefs(account_id, addr)))
        prefs: dict[str, dict[str, bool]] = {}
        for field, value in raw.items():
            topic, _, ch = field.rpartition(":")
            prefs.setdefault(topic, {})[ch] = value == "1"
        return {"account_id": account_id, "recipient": addr, "topics": prefs}


#: key patterns that hold an e-mail address, and where the address starts in them
_ADDRESS_KEYS = keys.EMAIL_ADDRESS_PATTERNS
_ADDRESS_AT = ("supp:email:", "consent:email:", "prefs:")


async def canonicalise_keys(redis: Client, *, apply: bool = False) -> list[dict[str, str]]:
    """E-mail keys written under an older address form (before the canonical form: a lower-cased
    U-label domain, a local part not in NFC) that the gate no longer reads.

    Each is reported as ``{key, address, canonical, action}``; with ``apply`` it is moved to its
    canonical key (``moved``: hash copied with its expiry, old key deleted) unless that key
    exists already (``kept``: both are left for a person to decide; for preferences the old
    fields missing from the new hash are added first). An address with no canonical form (an
    invisible character...) is left (``no canonical form``). Scans; meant for a one-off run."""
    found: list[dict[str, str]] = []
    for pattern in _ADDRESS_KEYS:
        async for raw in redis.scan_iter(match=pattern, count=1000):
            key = text(raw)
            head, address = _split_address_key(key)
            if "@" not in address:
                continue  # a phone number's preferences
            try:
                canonical = canonical_email(address)
            except BadAddress:
                found.append({"key": key, "address": address, "canonical": "",
                              "action": "no canonical form"})
                continue
            if canonical == address:
                continue
            target = head + canonical
            action = await _move(redis, key, target) if apply else "would move"
            found.append({"key": key, "address": address, "canonical": canonical,
                          "action": action})
    return found


def _split_address_key(key: str) -> tuple[str, str]:
    """``(key prefix, address)``: the address is everything after the first marker."""
    for marker in _ADDRESS_AT:
        i = key.find(marker)
        if i >= 0:
            return key[: i + len(marker)], key[i + len(marker):]
    return key, ""


async def _move(redis: Client, old: str, new: str) -> str:
    fields = await redis.hgetall(old)
    if await redis.exists(new):
        if ":prefs:" in new:
            for field, value in fields.items():
                await redis.hsetnx(new, field, value)
        return "kept"
    ttl = await redis.pttl(old)
    pipe = redis.pipeline(transaction=False)  # old and new may live in different slots
    pipe.hset(new, mapping=dict[Any, Any](fields))
    if ttl > 0:
        pipe.pexpire(new, ttl)
    await pipe.execute()
    await redis.delete(old)
    return "moved"
