"""The per-job Redis gate: one round trip before the send, one after.

``pre_send`` claims the job id (idempotency) and answers whether it may go out; ``post_send``
records what happened and moves the account's reputation. Each is ONE pipeline
(``transaction=False``) holding one EVALSHA over the account's hash-tagged keys plus the plain
commands on global (per-address) keys, which live in other Cluster slots and so cannot be
touched by the script.

Pre-send, in one round trip::

    HGET   outbox:supp:<channel>:<addr> reason      global suppression (bounce, complaint...)
    EXISTS outbox:dnc:<e164>                         only for marketing SMS
    ZADD NX, ZREMRANGEBYRANK, EXPIRE  outbox:hist:<channel>:<addr>   the recipient's jobs
                                                  across accounts (the newest kept)
    SET    outbox:verp:<ref> <account>/<job> EX   an e-mail job whose VERP address is the
                                                  referenced form (suppression/verp.py)
    EVALSHA pre_send.lua  (claim, expiry, account state, per-account suppression,
                           consent / preferences, frequency cap, daily quota, token
                           bucket — in that order; the claim
                           keeps the recipient's digest and the job's metadata; the
                           recipient's job index of the account, a refusal's timeline entry)

The script cannot see the global read (same pipeline, no dependency possible), so it claims
*optimistically*: when it answers ``send`` (or ``rate_limited``) but the global read says the
address is suppressed, :meth:`Gate.pre_send` turns the answer into ``suppressed`` with
``settle=True``; the caller then does not send and settles the job as ``suppressed`` in its
post-send write (one round trip, which it makes anyway), which also gives back the rate token.

Claim rules (the job hash's ``st`` field):

* absent, ``R`` (waiting for a retry) or    → evaluate, claim it (``S``) and send;
  ``held`` (held while its account was
  blocked: not final, :mod:`suppression.held`)
* ``S`` and the delivery is a redelivery    → the previous holder died mid-send: take over;
* ``S`` held by this same ``owner``         → this delivery's own earlier call ran but its
                                              reply was lost (a hung Redis, a timed-out
                                              batch): go on (the owner is one per delivery);
* ``S`` and not a redelivery                → a concurrent duplicate publish: do not send;
* a final status                            → already done: do not send again.

Refusals (``suppressed``, ``no_consent``, ``expired``) are written as the job's final status
by the script itself, so a redelivery answers ``done``; ``rate_limited`` leaves the job waiting
(``R``) and is not an attempt. A job of a blocked or suspended account is answered ``held``
with nothing written: the caller holds it (:meth:`suppression.held.HeldStore.hold`, which
reads the state again in the account's slot) and it ends ``blocked`` only when support
discards it or the hold is full.

Post-send, in one round trip: EVALSHA post_send.lua (job status and its timeline entry,
reputation counters, state transition with its audit record) plus, for a hard bounce or
complaint, the global suppression entry of the address (queued by
:func:`suppression.entries.queue`, the one writer), plus ``SADD outbox:accounts``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as phone_timezones
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from suppression import channels, entries, history, keys, statuses, verp
from suppression.address import BadAddress
from suppression.channels import normalise
from suppression.coalesce import Send
from suppression.entries import BadEntry, Entry
from suppression.json_limits import compact
from suppression.replies import decode, text
from suppression.reputation import Policy
from suppression.roundtrip import Client, execute  # Client: a single Redis or a Cluster
from suppression.script_args import Arguments
from suppression.senders import check_arg, sms_sender

log = logging.getLogger("outbox.gate")

_LUA_DIR = Path(__file__).parent / "lua"
REFUSALS = statuses.REFUSALS
#: job statuses that are not final: the same id is evaluated again (``held`` while the
#: account is blocked; suppression/held.py)
NOT_FINAL = statuses.NOT_FINAL
#: the most of a job's ``metadata`` (its JSON, in bytes) the job hash keeps (field ``md``) for
#: the status events of provider events; a larger one is not kept, and those events carry ``{}``
METADATA_MAX_BYTES = 4096
#: the recipients' time zone for the quiet hours when neither the job nor the number says
DEFAULT_TIMEZONE = "Asia/Hong_Kong"
NOTE_CHARS = 500  # of a timeline entry's detail (a relay's reply, a provider's words)
#: seconds a script's reload (SCRIPT LOAD after NOSCRIPT) may take
LOAD_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of ``pre_send``.

    ``verdict``: ``send``, ``done``, ``duplicate``, ``expired``, ``rejected``, ``held`` (the
    account is blocked or suspended: hold the job), ``suppressed``, ``no_consent``,
    ``quiet_hours``, ``capped``, ``over_quota``, ``rate_limited`` or ``wait``. For ``done``,
    ``status`` is the final status recorded earlier (its event may need resending).
    ``reason`` explains a refusal; ``wait_ms`` is the wait before a token is free;
    ``settle`` says the refusal still has to be written (a global suppression found beside an
    optimistic claim).
    """

    verdict: str
    status: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    attempt: int = 0
    reason: str | None = None
    wait_ms: int = 0
    settle: bool = False
    claimed: bool = False
    #: for a marketing job that may be sent: business_name, address, contact_email,
    #: contact_phone of the account ('' when unset)
    sender: tuple[str, ...] | None = None
    consent: str = ""  # a marketing job's consent status: "granted" or ""
    #: for ``rejected`` (a sender the account may not use: suppression/senders.py),
    #: ``capped``, ``over_quota`` and ``wait`` (which limit): why
    detail: str | None = None
    #: for ``wait`` (a limit whose mode is wait): until when, epoch ms on Redis's clock; the
    #: record says ``W`` already, and the caller puts the job in the schedule
    due_ms: int = 0


@dataclass(frozen=True, slots=True)
class Recorded:
    """The answer of ``post_send``: ``applied`` is 1 when the job took the status, 0 when it
    already had a later one (nothing to announce), -1 for a provider event seen before."""

    transition: Transition | None
    applied: int
    #: for a provider event (``event_id``): the job's ``metadata`` as kept at the claim (JSON
    #: text; "" when none was kept)
    metadata: str = ""


@dataclass(frozen=True, slots=True)
class Transition:
    """An automatic change of an account's state, recorded in its audit stream."""

    account_id: str
    from_state: str
    to_state: str
    audit_id: str
    reason: str
    detail: str
    sends: int
    hard_bounces: int
    complaints: int


@dataclass(frozen=True, slots=True)
class Counts:
    """What one outcome adds to the reputation counters."""

    sends: int = 0
    hard: int = 0
    complaints: int = 0


class Script:
    """A Lua script run by EVALSHA (sha computed locally: no extra round trip on start);
    loaded after NOSCRIPT (first use, or a Redis restart). ``arguments``: its ARGV by name
    (the prelude put in place of its ``-- GENERATED arguments`` line)."""

    def __init__(self, name: str, arguments: Arguments | None = None) -> None:
        self.arguments = arguments
        self.source = _with_includes((_LUA_DIR / f"{name}.lua").read_text(), arguments)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def queue(self, pipe: Any, keys_: list[str], args: list[Any]) -> None:
        """Add the EVALSHA to a pipeline."""
        pipe.evalsha(self.sha, len(keys_), *keys_, *args)

    async def load(self, redis: Client) -> None:
        """SCRIPT LOAD; on a Redis Cluster on every primary (a script runs where its keys
        live; one failed over later answers NOSCRIPT and is loaded then)."""
        if isinstance(redis, RedisCluster):
            await redis.execute_command("SCRIPT LOAD", self.source,
                                        target_nodes=RedisCluster.PRIMARIES)
        else:
            await redis.script_load(self.source)

    async def __call__(self, redis: Client, keys_: list[str], args: list[Any]) -> Any:
        """Run alone (support actions)."""
        try:
            return await redis.evalsha(self.sha, len(keys_), *keys_, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys_), *keys_, *args)


_INCLUDE = re.compile(r"^[ \t]*-- INCLUDE (\w+)[ \t]*$", re.M)
_GENERATED = re.compile(r"^[ \t]*-- GENERATED (\w+)[ \t]*$", re.M)


def _with_includes(source: str, arguments: Arguments | None = None) -> str:
    """``-- INCLUDE name`` lines replaced by the fragment ``lua/name.lua`` (Redis scripts
    cannot load one another: a piece two scripts share is written once and put in here), and
    ``-- GENERATED arguments`` / ``rank`` by the Lua made from their Python declarations
    (:meth:`Arguments.prelude`, :func:`suppression.statuses.lua_rank`)."""
    made = {"rank": statuses.lua_rank}
    if arguments is not None:
        made["arguments"] = arguments.prelude
    source = _INCLUDE.sub(lambda m: (_LUA_DIR / f"{m.group(1)}.lua").read_text(), source)
    return _GENERATED.sub(lambda m: made[m.group(1)](), source)


@functools.cache
def pre_send_args(policy_type: type) -> Arguments:
    """pre_send.lua's ARGV (its header says what each is)."""
    return Arguments.declare(
        "pre_send", policy_type, rest="metadata_more", owner="str", redelivered="flag",
        expired="flag", ttl="num", attempt="str", category="str", pref_field="str",
        recipient="str", job_id="str", history_keep="num", timeline_keep="num",
        metadata="str", timeline_ttl="num", history_ttl="num", value_max="num", senders="str",
        channel="str", local_offset="num")


@functools.cache
def post_send_args(policy_type: type) -> Arguments:
    """post_send.lua's ARGV (its header says what each is)."""
    return Arguments.declare(
        "post_send", policy_type, rest="channels", status="str", attempt="str",
        provider="str", provider_message_id="str", ttl="num", reason="str", channel="str",
        job_id="str", sends="num", hard="num", complaints="num", refund="flag",
        event_ttl="str", detail="str", timeline_keep="num", timeline_ttl="num",
        value_max="num")


@functools.cache
def scripts_for(policy_type: type) -> tuple[Script, Script]:
    """pre_send.lua and post_send.lua for the parameters ``policy_type`` declares (one pair
    per declaration: :class:`Policy`'s in production)."""
    return (Script("pre_send", pre_send_args(policy_type)),
            Script("post_send", post_send_args(policy_type)))


PRE_SEND, POST_SEND = scripts_for(Policy)
#: reopen.lua's ARGV (its header says what each is)
REOPEN_ARGS = Arguments.declare("reopen", timeline_ttl="num", timeline_keep="num")
REOPEN = Script("reopen", REOPEN_ARGS)


def _command(name: str) -> Callable[..., None]:
    """A :class:`Batch` method that adds command ``name`` with its arguments."""
    def add(self: Batch, *args: Any) -> None:
        self.commands.append((name, *args))
    return add


class Batch:
    """Commands for one round trip, written like a redis-py pipeline (``hget``, ``evalsha``…)
    but sent straight on a pooled connection: redis-py's Pipeline machinery (command stack,
    response callbacks, retry wrapper) cost about as much client CPU as the Redis work."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    # the commands of the hot path, as methods: found at once, where __getattr__ made a
    # closure per command (six a job)
    hget = _command("HGET")
    exists = _command("EXISTS")
    zadd = _command("ZADD")
    zremrangebyrank = _command("ZREMRANGEBYRANK")
    expire = _command("EXPIRE")
    set = _command("SET")
    sadd = _command("SADD")
    evalsha = _command("EVALSHA")

    def __getattr__(self, name: str) -> Any:
        def add(*args: Any, mapping: dict[str, Any] | None = None) -> None:
            flat = [x for kv in (mapping or {}).items() for x in kv]
            self.commands.append((name.upper(), *args, *flat))
        return add


async def run_pipeline(redis: Client, build: Any, script: Script,
                       send: Send | None = None) -> list[Any]:
    """Build and send one batch (``send``: a :class:`~suppression.coalesce.Coalescer`, which
    shares the write with other jobs' batches; default one round trip of its own); reload the
    script after NOSCRIPT and send it again.

    Command errors other than NOSCRIPT are raised."""
    for _ in range(2):
        batch = Batch()
        build(batch)
        results = await (send(batch.commands) if send is not None
                         else execute(redis, batch.commands))
        if any(isinstance(r, NoScriptError) for r in results):
            async with asyncio.timeout(LOAD_TIMEOUT):
                await script.load(redis)
            continue
        for r in results:
            if isinstance(r, ResponseError):
                raise r
        return results
    raise NoScriptError("script vanished twice")


class Gate:
    """Pre- and post-send Redis checks for one worker process (stateless otherwise)."""

    def __init__(self, redis: Client, *, idempotency_ttl: int,
                 policy: Policy | None = None, sms_region: str = "HK",
                 send: Send | None = None, timeline_ttl: int | None = None,
                 history_ttl: int | None = None, verp_key: str | None = None,
                 require_senders: bool = False,
                 own_sms_senders: Iterable[str | None] = ()) -> None:
        """``send``: how the pre- and post-send batches travel (the worker passes a
        :class:`~suppression.coalesce.Coalescer`); default a round trip each.
        ``idempotency_ttl``: how long the job hash is kept (with its newest timeline entry);
        ``timeline_ttl``: the rest of its timeline, ``history_ttl``: the recipients' job
        indexes (default both ``idempotency_ttl``; 0: not written). ``verp_key``: the key
        VERP addresses are signed with, when ``OUTBOX_BOUNCE_DOMAIN`` is set: an e-mail job
        whose address is the referenced form gets its ref record in the pre-send round trip
        (:func:`suppression.verp.ref_record`). ``require_senders``: refuse a job whose sender
        the account may not use (``OUTBOX_REQUIRE_VERIFIED_SENDERS``; :mod:`suppression.senders`);
        ``own_sms_senders``: Outbox's own SMS senders, which every account may name."""
        self.require_senders = require_senders
        self._own_sms = frozenset(sms_sender(s, sms_region) for s in own_sms_senders if s)
        self._redis = redis
        self._verp_key = verp_key
        self.send = send  # public: the benchmarks read its batch sizes
        #: every round trip of pre_send and post_send has a time limit: the coalescer's
        #: (``send``), and a script reload's (:data:`LOAD_TIMEOUT`)
        self.bounded = getattr(send, "timeout", None) is not None
        self._ttl = idempotency_ttl
        self._timeline_ttl = idempotency_ttl if timeline_ttl is None else timeline_ttl
        self._history_ttl = idempotency_ttl if history_ttl is None else history_ttl
        self.policy = policy or Policy()
        declared: type = type(self.policy)  # its parameters: the scripts' arguments
        self._pre, self._post = scripts_for(declared)
        self._pre_args, self._post_args = pre_send_args(declared), post_send_args(declared)
        self._region = sms_region  # numbers without a + (as the SMS channel reads them)
        self._known_accounts: set[str] = set()  # already in outbox:accounts

    async def pre_send(self, account_id: str, job_id: str, *, owner: str, redelivered: bool,
                       expired: bool, attempt: int, channel: str = "email",
                       category: str = "transactional", topic: str | None = None,
                       address: str = "", metadata: Mapping[str, Any] | None = None,
                       sender: str | None = None, reply_to: str | None = None,
                       timezone: str | None = None) -> Decision:
        """Claim the job for ``owner`` unless done, duplicate, expired or refused
        (one round trip).

        ``address`` is read in its canonical form (:func:`suppression.channels.normalise`);
        one that has none raises :class:`~suppression.address.BadAddress` before anything is
        read or claimed (job validation refuses such an e-mail address first). The job's
        ``metadata`` is kept with the claim (:func:`metadata_arg`), so the status events of
        provider events about the job can carry it. With ``require_senders``, the job's
        ``sender`` (its ``from``) and ``reply_to`` are checked in the same script
        (:mod:`suppression.senders`): a sender the account may not use ends the job
        ``rejected`` before any claim. ``timezone``: the recipient's (an IANA name, the
        job's field), for the quiet hours (:func:`local_offset`)."""
        addr = normalise(channel, address, default_region=self._region)
        dnc = channel == channels.DNC and category == "marketing"
        script_keys = [
            keys.job(account_id, job_id), keys.state(account_id), keys.config(account_id),
            keys.account_suppression(account_id, channel, addr),
            keys.consent(account_id, channel, addr), keys.prefs(account_id, addr),
            keys.bucket(account_id, channel), keys.timeline(account_id, job_id),
            keys.history(account_id, channel, addr), keys.senders(account_id),
            keys.frequency(account_id, category, channel, addr), keys.quota(account_id),
            keys.topic_frequency(account_id, topic or "", channel, addr)]
        senders = (check_arg(channel, category, sender, reply_to, self._region, self._own_sms)
                   if self.require_senders else "")
        md = metadata_chunks(metadata_arg(metadata))
        args = self._pre_args.argv(dict(
            owner=owner, redelivered=redelivered, expired=expired, ttl=self._ttl,
            attempt=attempt, category=category, pref_field=f"{topic}:{channel}" if topic else "",
            recipient=recipient_digest(channel, addr), job_id=job_id,
            history_keep=keys.HISTORY_KEEP, timeline_keep=keys.TIMELINE_KEEP, metadata=md[0],
            timeline_ttl=self._timeline_ttl, history_ttl=self._history_ttl,
            value_max=keys.HASH_VALUE_MAX, senders=senders, channel=channel,
            local_offset=local_offset(timezone, channel, addr)
            if category != "transactional" else 0), self.policy, md[1:])
        seen = f"{account_id}{keys.HISTORY_SEPARATOR}{job_id}"
        everyone = keys.global_history(channel, addr)
        ref = (verp.ref_record(account_id, job_id, self._verp_key)
               if self._verp_key and channel == channels.EMAIL.name else None)

        def build(pipe: Any) -> None:
            pipe.hget(keys.global_suppression(channel, addr), "reason")
            if dnc:
                pipe.exists(keys.dnc(addr))
            if self._history_ttl:
                # the recipient's jobs across accounts: a global key, so beside the script
                pipe.zadd(everyone, "NX", time.time_ns() // 1000, seen)
                pipe.zremrangebyrank(everyone, 0, -keys.HISTORY_KEEP - 1)
                pipe.expire(everyone, self._history_ttl)
            if ref is not None:  # a global key too; written before the message can leave
                pipe.set(*ref, "EX", verp.ref_ttl(self._ttl))
            self._pre.queue(pipe, script_keys, args)

        results = await run_pipeline(self._redis, build, self._pre, self.send)
        decision = _decision(results[-1])
        # UEMO s.11(2): a number on the DNC register may still get marketing its registered
        # user consented to; without a consent record (opt-out accounts), the register wins.
        listed = dnc and results[1] and decision.consent != "granted"
        global_reason = text(results[0]) or ("dnc_register" if listed else "")
        if global_reason and decision.verdict in ("send", "rate_limited"):
            return Decision("suppressed", "suppressed", attempt=decision.attempt,
                            reason=global_reason, settle=True,
                            claimed=decision.verdict == "send")
        return decision

    async def post_send(self, account_id: str, job_id: str, *, status: str, attempt: int,
                        provider: str | None = None, provider_message_id: str | None = None,
                        channel: str = "email", reason: str | None = None,
                        counts: Counts = Counts(), address: str = "",
                        refund: bool = False, suppress: str | None = None,
                        source: str | None = None, detail: str | None = None,
                        event_id: str | None = None, event_ttl: int = 0,
                        note: str | None = None) -> Recorded:
        """Record the job's new state (a final status, or ``R`` when a retry is scheduled),
        count the outcome, move the account's state; one round trip.

        A status never moves backwards: a late ``sent`` does not overwrite ``delivered``.
        A hard bounce or a complaint also suppresses ``address`` globally; ``suppress`` names
        another reason (``invalid`` globally, ``unsubscribe``/``sms_stop`` for the account),
        or ``""`` for none (carrier filtering counts like a complaint, but is no fact about
        the recipient). The entry's evidence: ``source`` (default ``job:<job_id>``) and
        ``detail`` (default ``reason``).
        With ``event_id`` (a provider event) the call takes effect once: a repeat changes
        nothing; and the job's kept ``metadata`` is read in the same round trip
        (:attr:`Recorded.metadata`). ``note``: the detail of the job's timeline entry (the
        relay's reply, the provider's words)."""
        script_keys, args = self.post_send_call(
            account_id, job_id, status=status, attempt=attempt, provider=provider,
            provider_message_id=provider_message_id, channel=channel, reason=reason,
            counts=counts, refund=refund, event_id=event_id, event_ttl=event_ttl, note=note)
        fact = suppress if suppress is not None else (
            "hard_bounce" if counts.hard else "complaint" if counts.complaints else None)
        entry = None
        if fact and address:
            entry = self._entry(channel, address, fact, account_id=account_id,
                                source=source or f"job:{job_id}",
                                detail=reason if detail is None else detail)

        def build(pipe: Any) -> None:
            self._post.queue(pipe, script_keys, args)
            if event_id:
                pipe.hget(script_keys[0], "md")  # results[1]: the job's metadata (its
                # first piece: the script's answer carries the rest, metadata_chunks)
            if entry is not None:
                entries.queue(pipe, entry)
            if counts.sends and account_id not in self._known_accounts:
                pipe.sadd(keys.ACCOUNTS, account_id)  # once per account and process

        results = await run_pipeline(self._redis, build, self._post, self.send)
        if counts.sends:
            self._known_accounts.add(account_id)
        return Recorded(_transition(account_id, results[0]), int(results[0][9]),
                        text(results[1]) + text(results[0][10]) if event_id else "")

    def post_send_call(self, account_id: str, job_id: str, *, status: str, attempt: int,
                       provider: str | None = None, provider_message_id: str | None = None,
                       channel: str = "email", reason: str | None = None,
                       counts: Counts = Counts(), refund: bool = False,
                       event_id: str | None = None, event_ttl: int = 0,
                       note: str | None = None) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of post_send.lua (tests run the script with them too): the account's
        state is the worst over every declared channel (:func:`suppression.channels.names`)."""
        script_keys = [
            keys.job(account_id, job_id), keys.state(account_id), keys.config(account_id),
            keys.reputation(account_id, channel), keys.audit(account_id),
            keys.recent(account_id), keys.bucket(account_id, channel),
            keys.timeline(account_id, job_id)]
        if event_id:
            script_keys.append(keys.event(account_id, event_id))
        args = self._post_args.argv(dict(
            status=status, attempt=attempt, provider=provider or "",
            provider_message_id=provider_message_id or "", ttl=self._ttl, reason=reason or "",
            channel=channel, job_id=job_id, sends=counts.sends, hard=counts.hard,
            complaints=counts.complaints, refund=refund,
            event_ttl=(event_ttl or keys.EVENT_TTL) if event_id else "",
            detail=(note or "")[:NOTE_CHARS], timeline_keep=keys.TIMELINE_KEEP,
            timeline_ttl=self._timeline_ttl, value_max=keys.HASH_VALUE_MAX),
            self.policy, channels.names())
        return script_keys, args

    async def suppress_address(self, channel: str, address: str, *, reason: str,
                               source: str, detail: str | None = None,
                               account_id: str = "") -> None:
        """A suppression entry without a job to record (an event naming no account)."""
        entry = self._entry(channel, address, reason, account_id=account_id, source=source,
                            detail=detail)
        if entry is not None:
            await entries.write(self._redis, entry)

    def _entry(self, channel: str, address: str, reason: str, *, account_id: str,
               source: str, detail: str | None) -> Entry | None:
        """The entry to write, or None (logged) when it cannot be: an address without a
        canonical form (a provider event naming something that is no address), which no
        check would ever find under any other key."""
        try:
            return entries.entry(channel, address, reason, account_id=account_id,
                                 source=source, detail=detail, region=self._region)
        except BadEntry as exc:
            log.warning("suppression not recorded: %s", exc, extra={
                "account_id": account_id, "reason": reason, "source": source})
            return None

    async def record_rejection(self, account_id: str, job_id: str, *, reason: str,
                               detail: str, attempt: int = 0) -> None:
        """A job rejected before its claim: its timeline entry (status ``rejected``), kept
        for the idempotency TTL (:func:`suppression.history.record_entry`)."""
        await history.record_entry(self._redis, account_id, job_id, status="rejected",
                                   reason=reason, detail=detail[:NOTE_CHARS], ttl=self._ttl,
                                   attempt=attempt)

    async def reopen(self, account_id: str, job_id: str, *, actor: str, reason: str) -> str:
        """Before a replay from ``outbox.dead``: a job that ended ``failed`` or ``rejected``
        (never handed over) loses that final status, so the replayed copy is claimed and sent
        once; any other state stays (a job sent or being sent is never sent again). A
        ``replayed`` timeline entry says who and why. Returns the state found ('' for none)."""
        found = text(await REOPEN(
            self._redis, [keys.job(account_id, job_id), keys.timeline(account_id, job_id)],
            REOPEN_ARGS.argv(dict(timeline_ttl=self._ttl, timeline_keep=keys.TIMELINE_KEEP))))
        note = f"{actor}: {reason} (was {found or 'not recorded'})"
        await history.record_entry(self._redis, account_id, job_id, status="replayed",
                                   reason="replay", detail=note[:NOTE_CHARS], ttl=self._ttl)
        return found

    async def job_state(self, account_id: str, job_id: str) -> dict[str, str]:
        """The job hash, decoded (support tools and tests); ``md`` whole again
        (:func:`metadata_chunks`)."""
        state = decode(await self._redis.hgetall(keys.job(account_id, job_id)))
        if "md" in state:
            state["md"] = joined_metadata(state)
            for name in [f for f in state if f[:2] == "md" and f[2:].isdigit()]:
                del state[name]
        return state


#: Job states in which the message may have been handed to the relay: ``S`` (being sent; its
#: bounce can overtake the post-send write) and the statuses that follow an accepted send.
HANDED_OVER = statuses.HANDED_OVER


def metadata_arg(metadata: Mapping[str, Any] | None) -> str:
    """A job's ``metadata`` as the job hash keeps it: compact JSON, or "" when it is empty or
    over :data:`METADATA_MAX_BYTES` (not kept: a job hash lives for the idempotency TTL, and
    Redis memory is not the place for large blobs)."""
    if not metadata:
        return ""
    try:
        encoded = compact(metadata)
    except (TypeError, ValueError):  # job validation makes this unreachable; keep nothing
        return ""
    if len(encoded) > METADATA_MAX_BYTES:
        log.debug("job metadata of %d bytes not kept for provider events", len(encoded))
        return ""
    return encoded.decode()


def metadata_chunks(encoded: str) -> list[str]:
    """The kept metadata as the job hash holds it: pieces of at most
    :data:`suppression.keys.HASH_VALUE_MAX` bytes of UTF-8 (fields ``md``, ``md1``, ``md2``…),
    cut between characters, so the hash keeps Redis's compact encoding (one longer value
    turns it into a hash table, some 600 bytes more per job). Always at least one ("" for
    none)."""
    limit = keys.HASH_VALUE_MAX
    if len(encoded) * 4 <= limit or len(encoded.encode()) <= limit:
        return [encoded]
    pieces: list[str] = []
    start = size = 0
    for i, char in enumerate(encoded):
        width = len(char.encode())
        if size + width > limit:
            pieces.append(encoded[start:i])
            start, size = i, 0
        size += width
    pieces.append(encoded[start:])
    return pieces


def joined_metadata(job: Mapping[str, str]) -> str:
    """The job's kept metadata from its hash (decoded): ``md`` and its continuations
    ``md1``, ``md2``… (a record written before holds it whole in ``md``); "" when none."""
    parts = [job.get("md", "")]
    n = 1
    while f"md{n}" in job:
        parts.append(job[f"md{n}"])
        n += 1
    return "".join(parts)


def local_offset(timezone: str | None, channel: str, address: str,
                 now: datetime | None = None) -> int:
    """Seconds east of UTC of the recipient's time now: ``timezone`` (the job's), else for a
    phone number its country's zone when the country has one, else
    :data:`DEFAULT_TIMEZONE`."""
    name = timezone or (_number_zone(address) if channel == channels.DNC else None) \
        or DEFAULT_TIMEZONE
    offset = (now or datetime.now(UTC)).astimezone(_zone(name)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.lru_cache(maxsize=4096)
def _number_zone(number: str) -> str | None:
    """The time zone of an E.164 number's country or region, when it has exactly one."""
    try:
        zones = phone_timezones.time_zones_for_number(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return None
    return zones[0] if len(zones) == 1 and zones[0] != phone_timezones.UNKNOWN_TIMEZONE \
        else None


def recipient_digest(channel: str, address: str) -> str:
    """What the job hash keeps of its recipient (``rc``): enough to compare, not the address.
    ``address`` is canonical (:func:`suppression.channels.normalise`)."""
    return hashlib.sha256(f"{channel}:{address}".encode()).hexdigest()[:32]


async def sent_to(redis: Client, account_id: str, job_id: str, address: str | None,
                  channel: str = "email") -> str | None:
    """None when job ``job_id`` of ``account_id`` was handed over for exactly ``address``;
    else why it cannot be said (no such job, not sent, another recipient)."""
    if not address:
        return "the report names no recipient"
    status, digest = (text(v) for v in await redis.hmget(keys.job(account_id, job_id),
                                                          ["st", "rc"]))
    if not status:
        return f"no record of job {job_id} of account {account_id} (unknown or expired)"
    if status not in HANDED_OVER or not digest:
        return f"job {job_id} of account {account_id} was not sent (status {status})"
    try:
        canonical = normalise(channel, address)
    except BadAddress:
        return f"the report names no valid recipient ({address!r})"
    if not hmac.compare_digest(digest, recipient_digest(channel, canonical)):
        return f"job {job_id} of account {account_id} was not sent to {address}"
    return None


def _decision(reply: list[Any]) -> Decision:
    verdict, status, provider, pm, att, reason, wait = (text(x) for x in reply[:7])
    if verdict in ("rejected", "quiet_hours", "capped", "over_quota"):
        return Decision(verdict, status, attempt=int(att or 0), reason=reason or None,
                        detail=text(reply[7]) if len(reply) > 7 else None)
    if verdict == "wait":
        return Decision(verdict, status, attempt=int(att or 0), reason=reason, wait_ms=int(wait),
                        detail=text(reply[7]), due_ms=int(reply[8]))
    sender = tuple(text(x) for x in reply[7:11]) if len(reply) > 7 else None
    consent = text(reply[11]) if len(reply) > 11 else ""
    return Decision(verdict, status or None, provider or None, pm or None, int(att or 0),
                    reason or None, int(wait or 0), claimed=verdict == "send", sender=sender,
                    consent=consent)


def _transition(account_id: str, reply: list[Any]) -> Transition | None:
    if not reply or int(reply[0]) == 0:
        return None
    _, frm, to, audit_id, why, detail, s, h, c = (text(x) for x in reply[:9])
    return Transition(account_id, frm, to, audit_id, why, detail, int(s), int(h), int(c))

