"""Destination shaping: slow-down replies slow the destination that sent them, for every worker.

A *destination* is a recipient domain's mailbox provider (:func:`provider_of`: ``gmail.com``,
``googlemail.com`` and domains whose MX is Google's share ``google``; Microsoft's consumer
domains ``microsoft``; Yahoo's and AOL's ``yahoo``; any other domain is its own) seen through
one relay (``host:port``): ``google@smtp.example.net:587``.

The state machine (pure, a clock passed in: :func:`refused`, :func:`view`):

* ``normal``: no record; sends go at the relay's own pace (the per-domain concurrency caps).
* a slow-down reply (:func:`suppression.classify.slow_down`) *cuts* the destination's allowed
  rate: from ``Params.rate`` (the nominal rate) when normal, else from its rate now, times
  ``Params.decrease`` (multiplicative decrease), never below ``Params.min_rate``. The cut rate
  holds ``Params.hold`` seconds, then grows by ``Params.step`` messages a second every
  ``Params.step_period`` seconds (additive increase) until it reaches the nominal rate: the
  destination is ``normal`` again. Replies that arrive within ``CUT_SPACING`` of the last cut
  are the same congestion signal (the sends that were already in flight): no second cut.
* ``Params.pause_after`` cuts within ``Params.window`` seconds (counted across recoveries: a
  destination that recovers and refuses again keeps refusing): the destination is ``paused``
  for ``Params.pause`` seconds (no send at all), and then resumes by itself at
  ``Params.min_rate``, recovering step by step as after a cut.

Recovery needs no write: the rate at any time follows from the record (:func:`view`). Writes
happen only on a cut (a compare-and-set of the one hash, so concurrent workers cut once per
signal) and, while a destination is slowed, one small script per send admitted
(:meth:`DestinationStore.admit`: a GCRA pace, the theoretical arrival time ``tat`` kept in the
same hash). A record expires by itself once its destination is back to normal and its cuts
have left the window.

Redis (:mod:`suppression.keys`): the hash ``outbox:dst:<destination>@<relay>`` (a single-key
design: every command and script touches one key, so it is Redis Cluster safe) and the set
``outbox:destinations`` of the destinations that have a record (for ``outbox destinations``;
members whose hash expired are dropped when read).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import NoScriptError

from suppression import keys
from suppression.roundtrip import Client

NORMAL, SLOWED, PAUSED = "normal", "slowed", "paused"
STATES = (NORMAL, SLOWED, PAUSED)
#: seconds after a cut during which further slow-down replies are the same signal (the sends
#: already in flight when the first reply came): no second cut, no count toward a pause
CUT_SPACING = 1.0
#: the longest reply text kept in a record
REPLY_MAX = 300

# --------------------------------------------------------------------------
# Provider groups (data): recipient domains, and MX host suffixes, of the large mailbox
# providers that rate-limit as one whatever the domain.
# --------------------------------------------------------------------------
PROVIDER_DOMAINS: dict[str, str] = {
    "gmail.com": "google", "googlemail.com": "google",
    "outlook.com": "microsoft", "hotmail.com": "microsoft", "live.com": "microsoft",
    "msn.com": "microsoft", "outlook.fr": "microsoft", "hotmail.co.uk": "microsoft",
    "hotmail.fr": "microsoft", "live.co.uk": "microsoft", "windowslive.com": "microsoft",
    "yahoo.com": "yahoo", "ymail.com": "yahoo", "rocketmail.com": "yahoo", "aol.com": "yahoo",
    "aim.com": "yahoo", "yahoo.co.uk": "yahoo", "yahoo.com.hk": "yahoo", "yahoo.co.jp": "yahoo",
    "yahoo.fr": "yahoo", "yahoo.de": "yahoo",
}
#: a domain whose first label is one of these and whose rest is a country suffix
#: (``yahoo.es``, ``hotmail.it``) belongs to the group too
PROVIDER_LABELS: dict[str, str] = {"yahoo": "yahoo", "hotmail": "microsoft",
                                   "outlook": "microsoft", "live": "microsoft"}
#: MX hosts ending so: the domain is hosted by the provider (Google Workspace, Microsoft 365
#: consumer MX, Yahoo's)
MX_SUFFIXES: dict[str, str] = {
    "google.com": "google", "googlemail.com": "google",
    "hotmail.com": "microsoft", "olc.protection.outlook.com": "microsoft",
    "yahoodns.net": "yahoo",
}
_COUNTRY_SUFFIX_MAX = 6  # "co.uk", "com.hk": short suffixes only


def provider_of(domain: str, mx_hosts: Sequence[str] = ()) -> str:
    """The destination of a recipient domain: its provider group (by the domain, else by its
    MX hosts when known) or the domain itself, lower-case."""
    domain = domain.lower().rstrip(".")
    group = PROVIDER_DOMAINS.get(domain)
    if group:
        return group
    label, _, rest = domain.partition(".")
    if label in PROVIDER_LABELS and rest and len(rest) <= _COUNTRY_SUFFIX_MAX:
        return PROVIDER_LABELS[label]
    for host in mx_hosts:
        host = host.lower().rstrip(".")
        for suffix, name in MX_SUFFIXES.items():
            if host == suffix or host.endswith("." + suffix):
                return name
    return domain


def destination_id(destination: str, relay: str) -> str:
    """``<destination>@<relay>``: the name of a record (and of its metric series)."""
    return f"{destination}@{relay}"


@dataclass(frozen=True, slots=True)
class Params:
    """The shaping settings (``OUTBOX_SHAPING_*``); rates in messages a second, times in
    seconds."""

    rate: float = 50.0
    decrease: float = 0.5
    min_rate: float = 0.5
    hold: float = 60.0
    step: float = 5.0
    step_period: float = 30.0
    pause_after: int = 5
    window: float = 600.0
    pause: float = 900.0

    @classmethod
    def from_settings(cls, settings: Any) -> Params:
        """The parameters of ``OUTBOX_SHAPING_*``."""
        return cls(**{name: getattr(settings, f"shaping_{name}")
                      for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Record:
    """What Redis keeps of a slowed or paused destination (times in epoch seconds)."""

    rate: float            # the allowed rate set by the last cut
    cut_at: float          # when the last cut was made
    resume_at: float       # end of the hold (or of the pause): recovery starts there
    paused_until: float = 0.0
    cuts: tuple[float, ...] = ()   # times of the cuts within the window
    reply: str = ""        # the slow-down reply that made the last cut
    rule: str = ""         # its SLOW_DOWN_RULES name
    since: float = 0.0     # first cut of this episode
    version: int = 0

    def fields(self) -> dict[str, str]:
        """The hash's fields."""
        return {"rate": repr(self.rate), "cut_at": repr(self.cut_at),
                "resume_at": repr(self.resume_at), "paused_until": repr(self.paused_until),
                "cuts": json.dumps(list(self.cuts)), "reply": self.reply, "rule": self.rule,
                "since": repr(self.since), "v": str(self.version)}

    @classmethod
    def parse(cls, raw: Mapping[Any, Any]) -> Record | None:
        """A record from its hash (None for none, or one without its fields)."""
        get = {(k.decode() if isinstance(k, bytes) else k):
               (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        if "rate" not in get:
            return None
        return cls(rate=float(get["rate"]), cut_at=float(get["cut_at"]),
                   resume_at=float(get["resume_at"]),
                   paused_until=float(get.get("paused_until") or 0),
                   cuts=tuple(json.loads(get.get("cuts") or "[]")), reply=get.get("reply", ""),
                   rule=get.get("rule", ""), since=float(get.get("since") or 0),
                   version=int(get.get("v") or 0))


@dataclass(frozen=True, slots=True)
class View:
    """A destination at one moment: its state, allowed rate (None: unlimited) and when it
    changes next (paused: the end of the pause; slowed: when it is back to normal)."""

    state: str
    rate: float | None
    until: float | None
    reply: str = ""
    rule: str = ""
    since: float | None = None


NORMAL_VIEW = View(NORMAL, None, None)


def normal_at(record: Record, params: Params) -> float:
    """When a record's destination is back to its nominal rate."""
    steps = math.ceil(max(0.0, params.rate - record.rate) / params.step) if params.step else 0
    return record.resume_at + steps * params.step_period


def view(record: Record | None, now: float, params: Params) -> View:
    """The destination's state at ``now`` (pure: recovery follows from the record)."""
    if record is None:
        return NORMAL_VIEW
    if record.paused_until > now:
        return View(PAUSED, 0.0, record.paused_until, record.reply, record.rule, record.since)
    back = normal_at(record, params)
    if now >= back:
        return NORMAL_VIEW
    rate = record.rate
    if now >= record.resume_at:
        rate += params.step * (1 + int((now - record.resume_at) // params.step_period))
    return View(SLOWED, min(rate, params.rate), back, record.reply, record.rule, record.since)


@dataclass(frozen=True, slots=True)
class Cut:
    """What a slow-down reply did: the new record (None: nothing, the same signal as the last
    cut) and the state it moved to."""

    record: Record | None
    state: str
    paused: bool = False   # this cut started a pause (the ops event)


def refused(record: Record | None, now: float, params: Params, *, reply: str,
            rule: str) -> Cut:
    """Apply one slow-down reply at ``now`` (pure)."""
    current = view(record, now, params)
    if record is not None and current.state == PAUSED:
        return Cut(None, PAUSED)
    if record is not None and current.state != NORMAL and now - record.cut_at < CUT_SPACING:
        return Cut(None, current.state)
    episode = record is not None and current.state != NORMAL
    # the cuts of the window count whether or not the destination recovered in between
    cuts = tuple(t for t in (record.cuts if record else ()) if now - t < params.window)
    cuts += (now,)
    base = current.rate if current.rate is not None else params.rate
    rate = max(params.min_rate, base * params.decrease)
    since = record.since if episode and record else now
    version = (record.version + 1) if record else 1
    text = " ".join(reply.split())[:REPLY_MAX]
    if len(cuts) >= params.pause_after:
        until = now + params.pause
        paused = Record(rate=params.min_rate, cut_at=now, resume_at=until, paused_until=until,
                        cuts=(), reply=text, rule=rule, since=since, version=version)
        return Cut(paused, PAUSED, paused=True)
    slowed = Record(rate=rate, cut_at=now, resume_at=now + params.hold, cuts=cuts, reply=text,
                    rule=rule, since=since, version=version)
    return Cut(slowed, SLOWED)


# Compare-and-set of a record: written only if its version is still the one read.
_CAS = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# GCRA admission of one send at ARGV[1] ms with ARGV[2] ms between sends: 0 and the next
# theoretical arrival time stored, or the ms to wait; nothing when the record is gone.
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < now then tat = now end
if tat > now then return tat - now end
redis.call('HSET', KEYS[1], 'tat', tostring(tat + interval))
return 0
"""


@dataclass
class _Script:
    source: str
    sha: str | None = field(default=None)

    async def __call__(self, redis: Client, key: str, *args: Any) -> Any:
        if self.sha is not None:
            try:
                return await redis.evalsha(self.sha, 1, key, *args)
            except NoScriptError:
                pass
        result = await redis.eval(self.source, 1, key, *args)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        return result


#: seconds a record outlives its return to normal (so ``outbox destinations`` can still say
#: why it was slowed just before)
KEEP_AFTER = 60.0


class DestinationStore:
    """The destinations' records in Redis (one hash each, and their index set)."""

    def __init__(self, redis: Client, params: Params) -> None:
        self._redis = redis
        self.params = params
        self._cas = _Script(_CAS)
        self._admit = _Script(_ADMIT)

    async def get(self, name: str) -> Record | None:
        """The record of ``name`` (``<destination>@<relay>``), None when normal."""
        return Record.parse(await self._redis.hgetall(keys.destination(name)))

    async def all(self) -> dict[str, Record]:
        """Every destination with a record (expired members leave the index)."""
        members = sorted(m.decode() if isinstance(m, bytes) else m for m in
                         await self._redis.smembers(keys.DESTINATIONS))
        found: dict[str, Record] = {}
        for name in members:
            record = await self.get(name)
            if record is None:
                await self._redis.srem(keys.DESTINATIONS, name)
            else:
                found[name] = record
        return found

    async def refused(self, name: str, now: float, *, reply: str, rule: str) -> Cut:
        """Apply a slow-down reply to ``name`` (compare-and-set, retried on a race: each
        concurrent worker's reply is seen against the record the others left)."""
        for _ in range(8):
            record = await self.get(name)
            cut = refused(record, now, self.params, reply=reply, rule=rule)
            if cut.record is None:
                return cut
            # kept while it counts: until back to normal, and while its cuts are in the window
            ttl_ms = int((max(normal_at(cut.record, self.params) + KEEP_AFTER,
                              now + self.params.window) - now) * 1000)
            flat = [x for pair in cut.record.fields().items() for x in pair]
            written = await self._cas(self._redis, keys.destination(name),
                                      str(record.version if record else 0), ttl_ms, *flat)
            if int(written):
                await self._redis.sadd(keys.DESTINATIONS, name)
                return cut
        return Cut(None, SLOWED)

    async def admit(self, name: str, rate: float, now: float) -> float:
        """Pace one send to a slowed ``name`` at ``rate``: 0 (go now) or seconds to wait."""
        interval_ms = max(1, int(1000 / rate))
        wait_ms = await self._admit(self._redis, keys.destination(name), int(now * 1000),
                                    interval_ms)
        return int(wait_ms) / 1000

    async def clear(self, name: str) -> bool:
        """Forget ``name``'s record (support: back to normal now); True when it had one."""
        removed = await self._redis.delete(keys.destination(name))
        await self._redis.srem(keys.DESTINATIONS, name)
        return bool(removed)


def _iso(seconds: float | None) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def listing(records: Mapping[str, Record], now: float, params: Params, *,
            everything: bool = False) -> list[dict[str, Any]]:
    """The rows of ``outbox destinations`` and ``GET /admin/destinations``: the slowed and
    paused destinations (``everything``: those back to normal whose record is kept too),
    times ISO 8601 UTC."""
    rows = []
    for name, record in sorted(records.items()):
        row = describe(name, view(record, now, params))
        if row["state"] == NORMAL and not everything:
            continue
        if row["state"] == NORMAL:
            row.update(rule=record.rule, reply=record.reply)
        row["rate"] = None if row["rate"] is None else round(row["rate"], 3)
        row["until"], row["since"] = _iso(row["until"]), _iso(row["since"] or record.since)
        rows.append(row)
    return rows


def describe(name: str, current: View) -> dict[str, Any]:
    """A destination for ``outbox destinations --json`` and the admin page."""
    destination, _, relay = name.partition("@")
    return {"destination": destination, "relay": relay, "state": current.state,
            "rate": current.rate, "until": current.until, "since": current.since,
            "rule": current.rule, "reply": current.reply}

