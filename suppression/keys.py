"""Every Redis key Outbox uses, with its expiry: the one place to look.

Keys of one account share the hash tag ``{acct:<id>}`` so the per-account Lua scripts touch a
single slot on Redis Cluster; global (per-address) keys live apart and are read or written
by plain commands in the same pipeline as the script (one round trip, ``transaction=False``).
Addresses in keys are in their one canonical form (:func:`suppression.channels.normalise`):
e-mail with an NFC lower-case local part and an IDNA A-label domain, phone numbers in E.164.

| key | type | expiry | what |
| --- | --- | --- | --- |
| ``outbox:{acct:A}:job:<id>`` | hash | ``idempotency_ttl`` (3 days) | job state: claim, final status, provider id, recipient digest, metadata; the timeline's newest entry and, when the timeline is kept as long, its short earlier ones (:func:`job`) |
| ``outbox:{acct:A}:state`` | hash | none | ``state`` (active/warning/throttled/blocked/suspended), ``since``, ``reason``, ``probation_until``, ``lvl:<channel>`` (0 ok, 1 throttle, 2 block), ``warn:<channel>`` (1 over a warning line) |
| ``outbox:{acct:A}:cfg`` | hash | none | limits (``rate``, ``burst``), threshold overrides, ``consent_mode``, sender information |
| ``outbox:{acct:A}:tb:<channel>`` | hash | ``burst / rate`` + 1 s | token bucket: ``t`` tokens, ``ts`` last refill (ms, Redis TIME) |
| ``outbox:{acct:A}:rep:<channel>`` | hash | window + bucket | reputation counters: fields ``s:<t>``, ``h:<t>``, ``c:<t>`` (sends, hard bounces, complaints in the bucket starting at epoch second t) |
| ``outbox:{acct:A}:recent`` | list | none (50 newest kept) | recent hard bounces and complaints (JSON: at, channel, kind, reason, job) |
| ``outbox:{acct:A}:audit`` | stream | none; entries trimmed by MINID only after 3 years | support actions and automatic transitions |
| ``outbox:{acct:A}:supp:<channel>:<addr>`` | hash | the entry's own expiry, else none | per-account suppression (unsubscribe, sms_stop, manual...) |
| ``outbox:{acct:A}:consent:<channel>:<addr>`` | hash | none (≥ 3 years required) | consent: ``status`` granted/revoked, grant and revoke times, source, evidence |
| ``outbox:{acct:A}:prefs:<addr>`` | hash | none | notification preferences: field ``<topic>:<channel>`` → ``1`` on / ``0`` off |
| ``outbox:{acct:A}:tl:<id>`` | list | ``retention_timelines`` (default ``idempotency_ttl``; 0 none), refreshed on each entry | the job's timeline entries that its hash does not hold, packed ``[at ms, status, reason, detail, provider, provider_message_id, attempt]`` (written before: JSON objects with those names), oldest first, the last ``TIMELINE_KEEP`` (50) kept |
| ``outbox:{acct:A}:hist:<channel>:<addr>`` | sorted set | ``retention_history`` (default ``idempotency_ttl``; 0 none), refreshed on each new job | the recipient's recent jobs of the account: member job id, score first seen (µs); the newest ``HISTORY_KEEP`` (100) kept |
| ``outbox:{acct:A}:cap:<category>:<channel>:<addr>`` | sorted set | ``cap_period``, refreshed on each claim counted | frequency cap: the recipient's jobs of that category and channel claimed within ``cap_period`` (member job id, score claimed at, ms, Redis TIME) |
| ``outbox:{acct:A}:quota`` | hash | 2 days, refreshed on each claim | daily quota: ``day`` (days since the epoch at ``quota_utc_offset``), ``n`` jobs claimed that day |
| ``outbox:{acct:A}:evt:<event id>`` | string | ``EVENT_TTL`` (7 days) | a provider event already applied (deduplication) |
| ``outbox:{acct:unreadable}:tl:unreadable-<sha>`` | list | as any timeline | a rejected job whose account (or id) could not be read, kept under :data:`UNREADABLE_ACCOUNT` and :func:`unreadable_id` of its bytes (a readable account with an unreadable id: ``outbox:{acct:A}:tl:unreadable-<sha>``) |
| ``outbox:{acct:A}:rcpt:<channel>:<addr>`` | hash | none | the last change of whether the recipient may be contacted that was announced to the CRM (``change``, ``id``, ``at``, ``source``: ``sender.recipient_events``) |
| ``outbox:{acct:A}:rcpt-pending`` | hash | none (fields removed once published) | recipient events recorded but not yet confirmed by the broker: field ``e:<event id>`` the event's JSON, ``c:<event id>`` when a publisher claimed it (ms) |
| ``outbox:{acct:A}:domains`` | hash | none | sending domains: field ``<domain>`` → JSON record (selectors with their public keys and AES-GCM-sealed private keys, the last verification) |
| ``outbox:{acct:A}:senders`` | hash | none | what the pre-send script reads: field ``<domain>`` (verified for the account) → ``1`` with a DMARC record, ``0`` without |
| ``outbox:{acct:A}:held:<channel>:<category>`` | sorted set | none (emptied by release, discard and expiry) | jobs held while the account is blocked or suspended: member job id, score when first held (ms, Redis TIME); :mod:`suppression.held` |
| ``outbox:{acct:A}:held-bodies`` | hash | none (fields removed with their jobs) | the held jobs' bodies as published: field job id → bytes |
| ``outbox:{acct:A}:held-size`` | hash | none | ``jobs`` and ``bytes`` held (the cap: ``OUTBOX_HOLD_MAX_JOBS``, ``OUTBOX_HOLD_MAX_BYTES``) |
| ``outbox:{acct:A}:held-lock`` | string | ``HELD_LOCK_MS`` | a release, discard or expiry of the account's held jobs under way (one at a time) |
| ``outbox:supp:<channel>:<addr>`` | hash | the entry's own expiry, else none | global suppression (hard_bounce, complaint, invalid, manual) |
| ``outbox:hist:<channel>:<addr>`` | sorted set | ``retention_history``, refreshed on each new job | the recipient's recent jobs across accounts: member ``<account>/<job id>``, score first seen (µs, the worker's clock); the newest ``HISTORY_KEEP`` kept |
| ``outbox:dnc:<e164>`` | hash | none (replaced on each register import) | Do-not-call register number (marketing SMS only) |
| ``outbox:{rcpt}:<channel>:<addr>`` | hash | none | as ``rcpt:`` above, for changes that name no account (global entries added or removed by support, a complaint without an account) |
| ``outbox:{rcpt}:pending`` | hash | none (fields removed once published) | as ``rcpt-pending`` above, for those changes (one slot with their records, for the script) |
| ``outbox:{rcpt}:scopes`` | set | none | the accounts (and ``(global)``) that have had a recipient event pending: where the worker's sweeper looks for events whose publisher died |
| ``outbox:{sched:N}:due`` | sorted set | none (members removed once released) | jobs waiting for their ``send_at``, ``N`` their shard (:func:`schedule_shard`, 0..``SCHEDULE_SHARDS``-1): member ``<account>/<job id>``, score when due (epoch ms; while a mover releases it, the end of its lease) |
| ``outbox:{sched:N}:jobs`` | hash | none (fields removed once released) | the waiting jobs themselves, same slot as ``due``: field ``<account>/<job id>`` → ``<routing key>`` newline the job's bytes |
| ``outbox:accounts`` | set | none | ids of accounts that have sent or been configured |
| ``outbox:held-accounts`` | set | none (an account leaves it when it holds nothing) | accounts that may hold jobs: where the expiry sweep and the ``outbox_held_jobs`` gauge look |
| ``outbox:audit`` | stream | as the account audit streams | support changes to global suppression entries |
| ``outbox:verp:<ref>`` | string | ``idempotency_ttl`` + 1 day (``verp.ref_ttl``), refreshed when a report resolves it | ``<account>/<job id>`` of a referenced VERP address ``bounce+r=<ref>@<bounce domain>`` (ids too long for the readable form; ``suppression.verp``); written in the pre-send round trip beside the script |
| ``outbox:domain:<domain>`` | hash | none | who may send as a domain: ``owner`` (the account that verified it first), ``shared:<account>`` → epoch s (support shared it, audited in ``outbox:audit``) |
| ``outbox:dst:<destination>@<relay>`` | hash | until the destination is back to its nominal rate + 60 s (set on each cut) | a destination slowed or paused by slow-down replies (:mod:`suppression.destinations`): ``rate``, ``cut_at``, ``resume_at``, ``paused_until`` (epoch s), ``cuts`` (JSON list of the cuts within the window), ``reply``, ``rule``, ``since``, ``v`` (version, compare-and-set), ``tat`` (GCRA pace, ms); one key per script: Cluster safe |
| ``outbox:destinations`` | set | none (members whose hash expired are removed when read) | the ``<destination>@<relay>`` names that have a ``dst`` record |
| ``outbox:mg-token:<token>`` | string | ``MAILGUN_TOKEN_TTL`` (10 min) | a Mailgun webhook token already used (replays refused) |

Account ids are checked by :func:`suppression.ids.parse_account_id` in :func:`account_tag`, so
no key is ever made for a malformed id (``acct}:x`` would otherwise name another account's key).
``SCAN MATCH`` patterns are made only here (the ``*_pattern`` functions and constants): their
variable parts are validated ids passed through :func:`glob_escape` as well (defence in
depth: an id has no glob metacharacter by construction).

Suppression hashes (``supp`` and ``dnc``) are written only by :mod:`suppression.entries`
and hold its ``FIELDS``: ``reason``, ``source``, ``at`` (epoch s), ``account``, ``detail``,
``actor``, ``expires_at`` (epoch s, or empty). Consent hashes hold ``status``, ``at``, the grant
and revoke times, sources and evidence, ``actor``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib

from suppression import ids

PREFIX = "outbox:"
ACCOUNTS = f"{PREFIX}accounts"
GLOBAL_AUDIT = f"{PREFIX}audit"
#: audit records are kept at least this long (UEMO s.8-s.10: 3 years; a margin added)
AUDIT_KEEP_SECONDS = 1100 * 86400
EVENT_TTL = 7 * 86400  # providers retry webhooks for up to 3 days (SendGrid 72 h, SES 23 h)
#: longer than the webhook freshness window (5 min back, 1 min ahead): a token is refused
#: for as long as its timestamp would be accepted
MAILGUN_TOKEN_TTL = 600
#: entries kept in a job's timeline (a job has a handful: deferrals, sent, a provider report)
TIMELINE_KEEP = 50
#: jobs kept in a recipient's history, per account and across accounts
HISTORY_KEEP = 100
#: the longest value a small hash keeps in Redis's compact encoding (``hash-max-listpack-value``,
#: default 64 bytes): one longer value turns the whole hash into a hash table, several times
#: its size. A job hash takes its newest timeline entry only when the entry's detail fits.
HASH_VALUE_MAX = 64
#: joins account and job id in the global history (ids are [A-Za-z0-9._-], never a ``/``)
HISTORY_SEPARATOR = "/"
#: how long a release, discard or expiry of one account's held jobs may hold its lock (ms; renewed
#: between batches)
HELD_LOCK_MS = 120_000
#: accounts that may hold jobs (suppression/held.py)
HELD_ACCOUNTS = f"{PREFIX}held-accounts"
#: shards of the scheduled jobs (``outbox:{sched:N}:...``): hash tags spread over a Redis
#: Cluster's nodes. Fixed: a job is found again by its shard (a change would strand jobs)
SCHEDULE_SHARDS = 16
#: the pseudo-account under which a rejected job whose account cannot be read is kept
UNREADABLE_ACCOUNT = "unreadable"
UNREADABLE_PREFIX = "unreadable-"
UNREADABLE_DIGITS = 20  # hex digits of the body's SHA-256 in the id (80 bits)


@functools.lru_cache(maxsize=4096)  # the hot path builds ~20 keys a job: 0.1 µs, not 0.5
def account_tag(account_id: str) -> str:
    """``outbox:{acct:<id>}``: the prefix of every key of one account; :class:`ids.InvalidId`
    for a malformed id (every entrance has refused one already: this is the last wall)."""
    return f"{PREFIX}{{acct:{ids.parse_account_id(account_id)}}}"


# --- SCAN MATCH patterns ------------------------------------------------------------------

#: the characters Redis glob patterns give a meaning to (stringmatchlen: * ? [ ] \; { } are
#: not special to Redis but are to the hash tag, so they are escaped too)
_GLOB = re.compile(r"([*?\[\]{}\\^])")


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (each metacharacter after a ``\\``)."""
    return _GLOB.sub(r"\\\1", text)


def account_suppressions_pattern(account_id: str) -> str:
    """``SCAN MATCH`` of one account's suppression entries (and nobody else's)."""
    return f"{glob_escape(account_tag(account_id))}:supp:*"


GLOBAL_SUPPRESSIONS_PATTERN = f"{PREFIX}supp:*"
DNC_PATTERN = f"{PREFIX}dnc:*"
#: every key that holds an e-mail address: global and every account's suppression, consent
#: and preference keys (``suppression canonicalise``)
EMAIL_ADDRESS_PATTERNS = (f"{PREFIX}supp:email:*", f"{PREFIX}{{acct:*}}:supp:email:*",
                          f"{PREFIX}{{acct:*}}:consent:email:*", f"{PREFIX}{{acct:*}}:prefs:*")


def job(account_id: str, job_id: str) -> str:
    """Job state hash: ``st`` state (``S`` sending, ``R`` waiting for a retry, or a final
    status), ``o`` owner of the claim, ``a`` attempt, ``p`` provider, ``pm`` provider message id,
    ``r`` reason of a refusal, ``rc`` digest of the recipient (written on the claim:
    ``gate.recipient_digest``), ``md`` (``md1``, ``md2``...) the job's metadata in pieces of
    at most ``HASH_VALUE_MAX`` bytes; the timeline's newest entry that moved the status
    (``et`` ms, ``ed`` detail, ``ea`` attempt of a provider's report) and earlier ones
    (``e<n>`` ``[at, status, reason, provider, attempt]``, ``d<n>`` detail, ``m<n>``
    provider message id, ``tn`` the last n; see :mod:`suppression.history`); ``rl`` while a
    release of the held job is publishing it (:mod:`suppression.held`). Empty ``p``,
    ``pm``, ``r`` are not stored. Every value fits ``HASH_VALUE_MAX`` (Redis keeps the hash
    compact) except a provider message id or reason longer than that. Expires after
    ``idempotency_ttl``."""
    return f"{account_tag(account_id)}:job:{job_id}"


def state(account_id: str) -> str:
    """Account state hash (no expiry)."""
    return f"{account_tag(account_id)}:state"


def config(account_id: str) -> str:
    """Account settings hash: limits, threshold overrides, consent mode, sender information."""
    return f"{account_tag(account_id)}:cfg"


def bucket(account_id: str, channel: str) -> str:
    """Token bucket of one account and channel (expires when full again)."""
    return f"{account_tag(account_id)}:tb:{channel}"


def reputation(account_id: str, channel: str) -> str:
    """Reputation counters in time buckets (expire with the window)."""
    return f"{account_tag(account_id)}:rep:{channel}"


def recent(account_id: str) -> str:
    """The 50 newest hard bounces and complaints of an account."""
    return f"{account_tag(account_id)}:recent"


def audit(account_id: str) -> str:
    """Audit stream of one account."""
    return f"{account_tag(account_id)}:audit"


def account_suppression(account_id: str, channel: str, address: str) -> str:
    """A per-account suppression entry."""
    return f"{account_tag(account_id)}:supp:{channel}:{address}"


def consent(account_id: str, channel: str, address: str) -> str:
    """A consent record (kept at least 3 years: no expiry)."""
    return f"{account_tag(account_id)}:consent:{channel}:{address}"


def prefs(account_id: str, address: str) -> str:
    """Notification preferences of one recipient for one account."""
    return f"{account_tag(account_id)}:prefs:{address}"


def frequency(account_id: str, category: str, channel: str, address: str) -> str:
    """A recipient's frequency-cap counter for one category and channel: a sorted set of the
    job ids sent (score: claimed at, ms), kept ``cap_period``; under the account's tag."""
    return f"{account_tag(account_id)}:cap:{category}:{channel}:{address}"


def topic_frequency(account_id: str, topic: str, channel: str, address: str) -> str:
    """A recipient's frequency-cap counter for one topic and channel (the account's
    ``topic_caps``): as :func:`frequency`; under the account's tag."""
    return f"{account_tag(account_id)}:tcap:{channel}:{address}:{topic}"


def quota(account_id: str) -> str:
    """The account's daily quota counter: ``day`` (the day number) and ``n`` (claims that
    day)."""
    return f"{account_tag(account_id)}:quota"


def event(account_id: str, event_id: str) -> str:
    """Marker of a provider event already applied (``EVENT_TTL``, 7 days)."""
    return f"{account_tag(account_id)}:evt:{event_id}"


def unreadable_id(body: bytes) -> str:
    """The stable id of a job whose own id cannot be read: ``unreadable-<sha256 prefix>`` of its
    bytes (the same body is always the same id; a valid job id by construction)."""
    return UNREADABLE_PREFIX + hashlib.sha256(body).hexdigest()[:UNREADABLE_DIGITS]


def rejection_record(body: bytes, account_id: str | None, job_id: str | None
                     ) -> tuple[str, str]:
    """``(account, job id)`` a rejected job's timeline is kept under: its own when both were
    read, else :func:`unreadable_id` of its bytes (under :data:`UNREADABLE_ACCOUNT` when the
    account could not be read: a job id alone does not say whose it is)."""
    if account_id and ids.is_id(account_id):
        return account_id, job_id if job_id and ids.is_id(job_id) else unreadable_id(body)
    return UNREADABLE_ACCOUNT, unreadable_id(body)


def timeline(account_id: str, job_id: str) -> str:
    """The job's timeline (every status with its time and evidence; written by the gate's
    scripts in the round trips they make anyway). Expires with the job hash."""
    return f"{account_tag(account_id)}:tl:{job_id}"


def history(account_id: str, channel: str, address: str) -> str:
    """The recipient's recent jobs of one account (``HISTORY_KEEP`` newest, by first seen)."""
    return f"{account_tag(account_id)}:hist:{channel}:{address}"


def global_history(channel: str, address: str) -> str:
    """The recipient's recent jobs across accounts (members ``<account>/<job id>``)."""
    return f"{PREFIX}hist:{channel}:{address}"


def verp_ref(ref: str) -> str:
    """A referenced VERP address's record: ``<account>/<job id>`` (``suppression.verp``). A
    global key: the listener knows only the ref, so it cannot carry the account's hash tag."""
    return f"{PREFIX}verp:{ref}"


def domains(account_id: str) -> str:
    """The account's sending domains (field per domain, a JSON record; no expiry)."""
    return f"{account_tag(account_id)}:domains"


def senders(account_id: str) -> str:
    """The account's verified sending domains as the pre-send script reads them (field per
    domain: ``1`` it has a DMARC record, ``0`` not)."""
    return f"{account_tag(account_id)}:senders"


def domain_owner(domain: str) -> str:
    """Global: which account owns a verified domain and which it is shared with."""
    return f"{PREFIX}domain:{domain}"


def held(account_id: str, channel: str, category: str) -> str:
    """The account's jobs held on one channel and category (member job id, score the time it
    was first held in ms): marketing and transactional apart, so each can be released or
    discarded alone."""
    return f"{account_tag(account_id)}:held:{channel}:{category}"


def held_bodies(account_id: str) -> str:
    """The held jobs' bodies (field job id → the bytes as published)."""
    return f"{account_tag(account_id)}:held-bodies"


def held_size(account_id: str) -> str:
    """How many jobs and bytes the account holds (fields ``jobs``, ``bytes``)."""
    return f"{account_tag(account_id)}:held-size"


def held_lock(account_id: str) -> str:
    """Taken while a release, discard or expiry of the account's held jobs runs."""
    return f"{account_tag(account_id)}:held-lock"


def schedule_member(account_id: str, job_id: str) -> str:
    """A scheduled job's member in its shard (``<account>/<job id>``)."""
    return f"{ids.parse_account_id(account_id)}{HISTORY_SEPARATOR}{job_id}"


def schedule_shard(account_id: str, job_id: str) -> int:
    """The shard a job waits in (CRC32 of its member, so every process finds it)."""
    return zlib.crc32(schedule_member(account_id, job_id).encode()) % SCHEDULE_SHARDS


def schedule_due(shard: int) -> str:
    """The shard's sorted set of waiting jobs by due time (epoch ms)."""
    return f"{PREFIX}{{sched:{shard}}}:due"


def schedule_jobs(shard: int) -> str:
    """The shard's waiting jobs (routing key and bytes), in the slot of :func:`schedule_due`."""
    return f"{PREFIX}{{sched:{shard}}}:jobs"


#: the destinations that have a shaping record (:func:`destination`)
DESTINATIONS = f"{PREFIX}destinations"


def destination(name: str) -> str:
    """A slowed or paused destination's record (``name``: ``<destination>@<relay>``)."""
    return f"{PREFIX}dst:{name}"


def mailgun_token(token: str) -> str:
    """Marker of a Mailgun webhook token already seen (``MAILGUN_TOKEN_TTL``)."""
    return f"{PREFIX}mg-token:{token}"


#: the hash tag of the recipient records and pending events that name no account: one slot,
#: so ``recipient.lua`` touches a record and its pending hash atomically on a Redis Cluster
GLOBAL_RECIPIENT_TAG = f"{PREFIX}{{rcpt}}"


def recipient(account_id: str | None, channel: str, address: str) -> str:
    """The record of the last recipient change announced for ``address`` (an account's, or
    the one of changes that name no account)."""
    if account_id:
        return f"{account_tag(account_id)}:rcpt:{channel}:{address}"
    return f"{GLOBAL_RECIPIENT_TAG}:{channel}:{address}"


#: the scopes (account ids, and :data:`GLOBAL_RECIPIENT_SCOPE` for changes that name none) that
#: have had a recipient event pending: the worker's sweeper looks there for stale ones
RECIPIENT_SCOPES = f"{GLOBAL_RECIPIENT_TAG}:scopes"
#: the member of :data:`RECIPIENT_SCOPES` for changes that name no account (not an id)
GLOBAL_RECIPIENT_SCOPE = "(global)"


def recipient_pending(account_id: str | None) -> str:
    """Recipient events recorded but not yet published (field event id → JSON), in the slot of
    the records of :func:`recipient` with the same ``account_id``."""
    if account_id:
        return f"{account_tag(account_id)}:rcpt-pending"
    return f"{GLOBAL_RECIPIENT_TAG}:pending"


def global_suppression(channel: str, address: str) -> str:
    """A global (per-address) suppression entry."""
    return f"{PREFIX}supp:{channel}:{address}"


def dnc(number: str) -> str:
    """A Do-not-call register number (E.164)."""
    return f"{PREFIX}dnc:{number}"


def account_from_key(key: str) -> str:
    """The account id in an account key (``outbox:{acct:A}:...`` → ``A``)."""
    start = key.index("{acct:") + 6
    return key[start:key.index("}", start)]


#: the kind of record of an account key, by the segment after ``outbox:{acct:A}:``
_ACCOUNT_KINDS = {"job": "job", "tl": "timeline", "hist": "history", "state": "state",
                  "cfg": "config", "tb": "bucket", "rep": "reputation", "recent": "recent",
                  "audit": "audit", "supp": "account_suppression", "consent": "consent",
                  "prefs": "prefs", "evt": "event", "held": "held",
                  "held-bodies": "held_bodies", "held-size": "held_size",
                  "held-lock": "held_lock", "cap": "frequency", "quota": "quota"}
#: the kind of record of a global key, by the segment after ``outbox:``
_GLOBAL_KINDS = {"hist": "global_history", "supp": "global_suppression", "dnc": "dnc",
                 "accounts": "accounts", "audit": "global_audit",
                 "mg-token": "mailgun_token", "held-accounts": "held_accounts",
                 "{sched": "schedule", "dst": "destination", "destinations": "destinations"}


def kind_of(key: str) -> str:
    """The kind of record a key holds, named after its builder in this module (``job``,
    ``timeline``, ``history``, ``global_history``, ``reputation``...; ``other`` for a key of
    no known format). The memory benchmark groups Redis memory by it."""
    if not key.startswith(PREFIX):
        return "other"
    rest = key[len(PREFIX):]
    if rest.startswith("{acct:"):
        close = rest.find("}:")
        if close < 0:
            return "other"
        segment = rest[close + 2:].split(":", 1)[0]
        return _ACCOUNT_KINDS.get(segment, "other")
    return _GLOBAL_KINDS.get(rest.split(":", 1)[0], "other")
