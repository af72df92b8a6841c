"""The pipeline of one job: what it does to the job, and which settling path its delivery
takes (the paths themselves, shared with the provider-event applier: :mod:`sender.settle`).

decode and validate (:mod:`sender.validation`, the client's own) → pre-send gate (claim,
expiry, account state, suppression, consent and preferences, DNC, rate token; one Redis round
trip) → send → classify → post-send record and reputation (one round trip) → status event
(confirmed) → ack.

Every delivery leaves on exactly one path:

* ``ack``                       done: sent, refused for good, duplicate, expired;
* dead-letter + ``ack``         the job is invalid, on the wrong queue (a job of another
                                channel; either lane of its own is right) or refused
                                by the renderer: ``outbox.dead`` with the reason
                                (``x-outbox-reason``) and its lane (``x-outbox-routing-key``),
                                a timeline entry (its own ids, or an id made from its bytes,
                                named by ``x-outbox-record`` and its log line) and a
                                ``rejected`` event when an id could be read;
* retry-publish + ``ack``       a temporary failure: parked in a delay tier;
* park + ``ack``                the account is over its rate: parked in the smallest delay
                                tier that covers the wait; not an attempt, and no status
                                event (the job's status has not changed: it is still waiting
                                to be sent), only ``outbox_jobs_total{status="rate_limited"}``
                                and ``outbox_retries_total``;
* no settlement                 shutdown or a broker outage: RabbitMQ redelivers it (marked
                                redelivered, so the gate lets it take over its own claim);
* hold + ``ack``                the account is blocked or suspended: the job is kept in
                                Redis (:mod:`suppression.held`, a ``held`` event) until
                                support releases or discards it, or the hold time ends;
                                when the account was unblocked between the two round trips,
                                ``nack`` (requeue) and it is evaluated again;
* ``nack`` (requeue)            the send's outcome is unknown (the relay got the whole message
                                and never answered: ``OutcomeUnknown``): returned with its
                                claim kept, as a crash leaves it, so the redelivery takes the
                                claim over and sends once more; at the
                                :data:`UNKNOWN_DELIVERIES`-th delivery it ends ``failed``
                                (reason ``networkerror``, "outcome unknown") instead;
* ``nack`` (requeue)            an unexpected exception (a bug, a poison body): returned until
                                its :data:`~sender.settle.ERROR_DELIVERIES`-th delivery
                                (RabbitMQ's ``x-delivery-count``), then dead-lettered with the
                                exception as the reason and a ``failed`` event (reason
                                ``error``), logged with its traceback once
                                (:meth:`Pipeline.unexpected`). One raised after the provider
                                took the message is not retried (that would send it again).

The body is parsed once per delivery: what it parsed to (the job, or why it is invalid) is
kept for the delivery's task (:data:`_PARSED`), so a job that fails later is announced from it.

A sender the account may not use (``OUTBOX_REQUIRE_VERIFIED_SENDERS``: ``from``/``reply_to`` not on
a domain verified for it, an SMS sender not configured for it, marketing from a domain without
DMARC: :mod:`suppression.senders`) ends the job ``rejected`` (reason ``sender_not_verified`` or
``dmarc_missing``) in the same pre-send script, before any claim.

Refusals (``suppressed``, ``no_consent``, ``expired``) are recorded by the pre-send
script itself; the pipeline only publishes their event. An automatic account transition found
by the post-send script is counted (``outbox_account_transitions_total``), logged at WARNING
and published as a status event (``<channel>.<state>``, id ``<account>:<audit id>``:
:func:`sender.account_events.publish_transition`).

Each settled job logs one line (``outbox.pipeline``): INFO with ``job_id``, ``account_id``,
``channel``, ``status``, ``reason``, ``attempt``, ``provider`` and ``ms`` (from receipt of the
delivery to its ack); a deferral at WARNING with its cause (``detail``: the relay's reply or
why it could not be reached); an invalid job at WARNING. Never a body or subject.

Redis unreachable means no send: the job is held (not acked) and the Redis call retried with
backoff until Redis answers or the worker stops; the outage is logged once when it starts and
once when it ends (:mod:`sender.outages`), not per job.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sender.account_events import publish_transition
from sender.bus import (
    ATTEMPT_HEADER,
    BROKER_ERRORS,
    FIRST_SEEN_HEADER,
    RECORD_HEADER,
    Bus,
)
from sender.channels.base import Channel, NotSent, OutcomeUnknown, SendFailure, SendResult
from sender.channels.registry import routing_key
from sender.delivery import Delivery as AbstractIncomingMessage  # aio-pika's or RawDelivery
from sender.metrics import Metrics
from sender.mime import MimeError
from sender.models import AttachmentLimits, InvalidJob, JobBase, status_event
from sender.outages import Dependencies, OutageTracker
from sender.schedule import RELEASED_HEADER
from sender.settle import Settle, delivery_count
from sender.shaping import Shaping
from sender.validation import Rules, validate
from suppression.address import BadAddress
from suppression.gate import REFUSALS, Counts, Decision, Gate, Transition
from suppression.held import HeldStore
from suppression.history import iso
from suppression.keys import rejection_record
from suppression.schedule import Schedule

log = logging.getLogger("outbox.pipeline")
T = TypeVar("T")
Job = JobBase
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)  # TimeoutError is an OSError
REDIS_CALL_TIMEOUT = 5.0  # seconds for one round trip before it counts as an outage
_FINAL_FOR_KIND = {"hard": "bounced", "complaint": "complained"}
# a message handed over counts as a send; a refusal at once also as a hard bounce/complaint
_COUNTS = {"sent": Counts(sends=1), "bounced": Counts(sends=1, hard=1),
           "complained": Counts(sends=1, complaints=1)}
#: Deliveries whose send ended with an unknown outcome before the job ends ``failed``: each
#: may have reached the relay (a relay that stores, then never answers, gets it this often)
UNKNOWN_DELIVERIES = 3
#: when the delivery being handled (this task's) was received, for the outcome's ``ms``
_RECEIVED: ContextVar[float | None] = ContextVar("received", default=None)
#: what the body of the delivery being handled (this task's) parsed to: the job, why it is
#: invalid, or None before it was parsed
_PARSED: ContextVar[JobBase | InvalidJob | None] = ContextVar("parsed", default=None)


class Stopping(Exception):
    """The worker is stopping: leave the message unsettled so RabbitMQ redelivers it."""


#: what passes through the after-send guard untouched: a stop, a cancellation, the broker
_NOT_OURS: tuple[type[BaseException], ...] = (Stopping, asyncio.CancelledError, *BROKER_ERRORS)


class SentThenFailed(Exception):
    """An unexpected exception after the provider took the message (``__cause__``): retrying
    would send it again."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay tiers, bounded by attempts and by the job's age."""

    tiers: tuple[int, ...]
    max_attempts: int
    max_age: int

    def park_tier(self, wait_ms: int) -> int:
        """The smallest tier that covers ``wait_ms`` (the largest when none does)."""
        return next((t for t in self.tiers if t * 1000 >= wait_ms), self.tiers[-1])

    def delay(self, attempt: int, first_seen: float, now: float) -> int | None:
        """The tier for the next try after ``attempt`` failed, or None to give up."""
        if attempt >= self.max_attempts:
            return None
        tier = self.tiers[min(attempt - 1, len(self.tiers) - 1)]
        if now + tier - first_seen > self.max_age:
            return None
        return tier


class RedisCalls:
    """Runs Redis calls for the deliveries: while Redis is unreachable the delivery is held
    (not settled) and the call retried with backoff, until Redis answers or the worker stops
    (:class:`Stopping`). Shared by the pipeline and the provider-event applier; an outage is
    told to ``outage`` (one WARNING when it starts, one INFO when it ends: not a line per
    job and attempt), each held delivery once."""

    def __init__(self, metrics: Metrics, stopping: Callable[[], bool],
                 outage: OutageTracker | None = None) -> None:
        self._metrics = metrics
        self._stopping = stopping
        self.outage = outage or Dependencies(CollectorRegistry()).redis

    async def __call__(self, call: Callable[[], Awaitable[T]], *, bounded: bool = False) -> T:
        """``call``'s result, retried while Redis is unreachable. ``bounded``: the call
        bounds its own round trips (the gate's, through the coalescer: :attr:`Gate.bounded`),
        so no timeout of its own is armed here (a timer set and cancelled twice a job)."""
        delay = 0.1
        held = False
        while True:
            started = time.perf_counter()
            try:
                if bounded:
                    result = await call()
                else:
                    async with asyncio.timeout(REDIS_CALL_TIMEOUT):
                        result = await call()
            except _REDIS_ERRORS as exc:
                if self._stopping():
                    raise Stopping from exc
                self.outage.failed(exc)
                if not held:
                    held = True
                    self.outage.waiting()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._metrics.redis_seconds.observe(time.perf_counter() - started)
            self.outage.reachable()
            return result


class Pipeline:
    """Processes deliveries from the job queues; stateless across jobs."""

    def __init__(self, *, bus: Bus, gate: Gate, channels: Mapping[str, Channel],
                 metrics: Metrics, retry: RetryPolicy, max_job_bytes: int,
                 owner: str, stopping: Callable[[], bool], redis_call: RedisCalls,
                 held: HeldStore, settle: Settle | None = None,
                 attachment_limits: AttachmentLimits | None = None,
                 schedule: Schedule | None = None,
                 rules: Rules | None = None, shaping: Shaping | None = None) -> None:
        """``settle``: how deliveries are settled (the worker's, shared with the
        provider-event applier; default one ack per delivery); ``held``: where jobs of
        blocked and suspended accounts are kept; ``schedule``: where jobs wait for their
        ``send_at`` (required for such jobs); ``rules``: job validation's settings
        (:mod:`sender.validation`, the client's too; by default ``max_job_bytes`` and
        ``attachment_limits``), ``send_at``'s furthest ahead among them."""
        self.held = held
        self._bus = bus
        self.settle = settle or Settle(bus)
        self.gate = gate
        self._channels = channels
        self._metrics = metrics
        self._retry = retry
        self._max_job_bytes = max_job_bytes
        self._attachment_limits = attachment_limits
        self._rules = rules or Rules(max_job_bytes=max_job_bytes,
                                     attachment_limits=attachment_limits)
        self._owner = owner
        self._deliveries = itertools.count(1)
        self._stopping = stopping
        self.redis_call = redis_call
        self.schedule = schedule
        self.shaping = shaping  # slowed and paused destinations (sender.shaping)

    async def handle(self, message: AbstractIncomingMessage, queue_channel: str) -> None:
        """Process one delivery from the queue of ``queue_channel`` and settle it (or leave it
        for redelivery on shutdown)."""
        _RECEIVED.set(time.monotonic())
        _PARSED.set(None)
        try:
            job = validate(message.body, self._rules)
        except InvalidJob as exc:
            _PARSED.set(exc)
            await self._reject_invalid(message, exc, queue_channel)
            return
        _PARSED.set(job)
        if job.channel != queue_channel or job.channel not in self._channels:
            await self._reject_invalid(message, InvalidJob(
                f"an {job.channel} job on the {queue_channel} queue (routing key "
                f"{message.routing_key!r}): publish it with routing key "
                f"{routing_key(job.channel, job.category)!r}",
                job.id, job.account_id, job.channel), queue_channel)
            return
        attempt = _int(message.headers.get(ATTEMPT_HEADER), 1)
        if job.send_at is not None and RELEASED_HEADER not in message.headers \
                and job.send_at.timestamp() > time.time():  # too far ahead: validate refused it
            await self._schedule(message, job, attempt, int(job.send_at.timestamp() * 1000))
            return
        if self.shaping is not None and not self.shaping.idle(job.channel):
            # its destination slowed or paused: parked, no attempt
            wait_ms = await self.shaping.admit(job.channel, job.to, job.category,
                                               job.account_id)
            if wait_ms:
                await protected(self._park(message, job, attempt, wait_ms))
                return
        # the claim's owner is this delivery: a retried call (the reply of the first was
        # lost) finds its own claim and goes on; a duplicate publish finds another's
        owner = f"{self._owner}#{next(self._deliveries)}"
        try:
            decision = await self.redis_call(lambda: self.gate.pre_send(
                job.account_id, job.id, owner=owner,
                redelivered=bool(message.redelivered), expired=job.expired(),
                attempt=attempt, channel=job.channel, category=job.category,
                topic=job.topic, address=job.to, metadata=job.metadata,
                sender=getattr(job, "from_", None), reply_to=getattr(job, "reply_to", None),
                timezone=job.timezone), bounded=self.gate.bounded)
        except BadAddress as exc:  # no canonical form, so no suppression key: never sent
            await self._reject_invalid(message, InvalidJob(
                f"to: {exc}", job.id, job.account_id, job.channel), job.channel)
            return
        if decision.verdict == "send":
            await self._send(message, job, attempt, decision.sender)
        elif decision.verdict == "held":
            await protected(self._hold(message, job, attempt))
        elif decision.verdict == "wait":  # quiet hours, a cap or the quota, in 'wait' mode
            await self._schedule(message, job, attempt, decision.due_ms,
                                 why=decision.detail)
        else:
            await protected(self._not_sent(message, job, decision))

    async def _schedule(self, message: AbstractIncomingMessage, job: Job, attempt: int,
                        due_ms: int, why: str | None = None) -> None:
        """A job read before its ``send_at`` (or told to wait by a limit: ``why``): written
        to wait in Redis (:mod:`suppression.schedule`), then acked; the mover publishes it
        again when due. A job whose record is final or in flight already is not kept
        waiting (:meth:`_already`)."""
        schedule = self.schedule
        if schedule is None:
            raise RuntimeError("a job to keep waiting, and no schedule to keep it in")
        decision = await self.redis_call(lambda: schedule.add(
            job.account_id, job.id, due_ms=due_ms, attempt=attempt, body=message.body,
            routing_key=routing_key(job.channel, job.category), why=why))
        if decision.verdict != "scheduled":
            await protected(self._already(message, job, decision))
            return
        self._metrics.jobs.labels(job.channel, "scheduled").inc()
        await self.settle.ack(message)
        _log_outcome(job, "scheduled", attempt, None,
                     detail=f"{why}, due {iso(due_ms)}" if why else f"due {iso(due_ms)}")

    async def _not_sent(self, message: AbstractIncomingMessage, job: Job,
                        decision: Decision) -> None:
        verdict, attempt = decision.verdict, decision.attempt
        if verdict == "rate_limited":
            await self._park(message, job, attempt, decision.wait_ms)
        elif verdict == "expired":
            await self._event_and_ack(message, job, "expired", attempt, reason="expired",
                                      detail="past not_after")
        elif verdict == "rejected":  # a sender the account may not use (suppression/senders)
            await self._event_and_ack(message, job, "rejected", attempt,
                                      reason=decision.reason, detail=decision.detail)
        elif verdict in REFUSALS and decision.settle:
            # a global suppression found beside the script's optimistic claim
            await self._finish(message, job, verdict, attempt, reason=decision.reason,
                               refund=decision.claimed)
        elif verdict in REFUSALS:
            await self._event_and_ack(message, job, verdict, attempt, reason=decision.reason,
                                      detail=decision.detail)
        else:
            await self._already(message, job, decision)

    async def _hold(self, message: AbstractIncomingMessage, job: Job, attempt: int) -> None:
        """The account is blocked or suspended: keep the job (:mod:`suppression.held`) and
        announce ``held``; evaluate it anew when the account was unblocked meanwhile (back
        to its queue); over the account's cap, end it ``blocked`` (``hold_full``), loudly."""
        held = await self.redis_call(lambda: self.held.hold(
            job.account_id, job.id, channel=job.channel, category=job.category,
            body=message.body, attempt=attempt))
        if held.outcome == "again":
            await self.settle.nack(message)
        elif held.outcome == "full":
            detail = (f"the account holds {held.jobs} jobs, {held.bytes} bytes already "
                      "(OUTBOX_HOLD_MAX_JOBS, OUTBOX_HOLD_MAX_BYTES): not held")
            log.error("job %s of %s account %s not held: %s", job.id, held.reason[8:],
                      job.account_id, detail, extra={
                          "job_id": job.id, "account_id": job.account_id,
                          "channel": job.channel, "category": job.category,
                          "reason": "hold_full"})
            await self._finish(message, job, "blocked", attempt, reason="hold_full",
                               detail=detail)
        else:
            await self._event_and_ack(message, job, "held", attempt, reason=held.reason,
                                      detail=f"held until {iso(held.until_ms)} unless "
                                             "support releases or discards it first",
                                      held_until=iso(held.until_ms))

    async def _already(self, message: AbstractIncomingMessage, job: Job,
                       decision: Decision) -> None:
        self._metrics.duplicates.labels(job.channel, decision.verdict).inc()
        if decision.verdict == "done":
            # Its event may not have gone out before the crash that caused this redelivery.
            await self._bus.publish_event(status_event(
                job_id=job.id, account_id=job.account_id, channel=job.channel,
                status=decision.status or decision.verdict, provider=decision.provider,
                provider_message_id=decision.provider_message_id, reason=decision.reason,
                attempt=decision.attempt, metadata=job.metadata,
                detail="cancelled before it was due" if decision.status == "cancelled"
                else "redelivered"))
        await self.settle.ack(message)
        _log_outcome(job, decision.status or decision.verdict, decision.attempt,
                     decision.reason, duplicate=decision.verdict)

    async def _park(self, message: AbstractIncomingMessage, job: Job, attempt: int,
                    wait_ms: int) -> None:
        """Over the account's rate: park without counting an attempt, or give up past the
        retry age (``failed``, reason ``speeding``)."""
        first_seen = _int(message.headers.get(FIRST_SEEN_HEADER), 0) or time.time()
        if time.time() - first_seen > self._retry.max_age:
            await self._finish(message, job, "failed", attempt, reason="speeding",
                               detail="rate limited past the retry age")
            return
        tier = self._retry.park_tier(wait_ms)
        headers = dict(message.headers)
        headers.setdefault(FIRST_SEEN_HEADER, int(time.time()))
        # spread the returns over the tier, never sooner than the wait
        expiration = max(wait_ms / 1000, tier * random.uniform(0.8, 1.0))
        await self._bus.publish_retry(message.body, routing_key(job.channel, job.category),
                                      tier, headers, expiration=expiration)
        self._metrics.retries.labels(job.channel, str(tier)).inc()
        self._metrics.jobs.labels(job.channel, "rate_limited").inc()
        await self.settle.ack(message)
        log.debug("job %s rate limited, parked for %d s", job.id, tier, extra={
            "job_id": job.id, "account_id": job.account_id, "channel": job.channel})

    async def _send(self, message: AbstractIncomingMessage, job: Job, attempt: int,
                    sender: tuple[str, ...] | None) -> None:
        channel = self._channels[job.channel]
        if self._stopping():
            raise Stopping  # claimed, not sent: the redelivery takes the claim over
        inflight = self._metrics.inflight.labels(job.channel)
        inflight.inc()
        started = time.perf_counter()
        try:
            result = await channel.send(job, sender)
        except NotSent as exc:
            raise Stopping from exc
        except OutcomeUnknown as unknown:
            await protected(self._unknown(message, job, attempt, unknown))
            return
        except SendFailure as failure:
            self._metrics.provider_replies.labels(failure.provider,
                                                  failure.outcome.kind or "none").inc()
            await protected(self._failed(message, job, attempt, failure))
            return
        except (MimeError, InvalidJob) as exc:
            await protected(self._unrenderable(message, job, attempt, str(exc)))
            return
        finally:
            inflight.dec()
        self._metrics.send_seconds.labels(job.channel, result.provider).observe(
            time.perf_counter() - started)
        try:
            await protected(self._sent(message, job, attempt, result))
        except _NOT_OURS:
            raise
        except Exception as exc:
            raise SentThenFailed(f"{type(exc).__name__}: {exc}") from exc

    async def _unknown(self, message: AbstractIncomingMessage, job: Job, attempt: int,
                       unknown: OutcomeUnknown) -> None:
        """The relay got the message and no answer came: retried only as a crash is. The
        claim is left as the send left it (``S``, this delivery's) and the delivery returned
        to its queue, so RabbitMQ redelivers it marked redelivered and the gate lets that
        delivery take the claim over; no ``deferred`` (a retry tier's copy would be a new
        delivery, refused as a duplicate while the claim is held). Each time counts toward
        :data:`UNKNOWN_DELIVERIES`; the last ends the job ``failed``."""
        deliveries = delivery_count(message)
        self._metrics.provider_replies.labels(unknown.provider, "unknown").inc()
        if deliveries < UNKNOWN_DELIVERIES:
            log.warning("job %s: %s; returned to its queue, its claim kept as after a crash "
                        "(delivery %d of at most %d)", job.id, unknown, deliveries,
                        UNKNOWN_DELIVERIES, extra={
                            "job_id": job.id, "account_id": job.account_id,
                            "channel": job.channel, "attempt": attempt, "ms": _ms()})
            await self.settle.nack(message)
            return
        await self._finish(message, job, "failed", attempt, reason="networkerror",
                           provider=unknown.provider,
                           detail=f"outcome unknown on {deliveries} deliveries (the relay may "
                                  f"have the message): {unknown.detail}"[:500])

    async def _unrenderable(self, message: AbstractIncomingMessage, job: Job, attempt: int,
                            problem: str) -> None:
        """Content the renderer refuses: a dead-letter copy with the reason, then the final
        ``rejected`` (dead-letter first: a crash between repeats the copy, never loses it)."""
        await self.settle.copy_dead(message, f"refused by the renderer: {problem}",
                                    job.channel, **{RECORD_HEADER: f"{job.account_id}/{job.id}"})
        await self._finish(message, job, "rejected", attempt, reason="invalid", detail=problem)

    async def _sent(self, message: AbstractIncomingMessage, job: Job, attempt: int,
                    result: SendResult) -> None:
        if result.extra and "segments" in result.extra:
            self._metrics.sms_segments.labels(result.extra.get("encoding", "")).inc(
                result.extra["segments"])
        await self._finish(message, job, "sent", attempt, provider=result.provider,
                           provider_message_id=result.provider_message_id,
                           detail=result.detail, extra=result.extra)

    async def _failed(self, message: AbstractIncomingMessage, job: Job, attempt: int,
                      failure: SendFailure) -> None:
        outcome = failure.outcome
        final = failure.status or _FINAL_FOR_KIND.get(outcome.kind or "")
        if final is None:
            first_seen = _int(message.headers.get(FIRST_SEEN_HEADER), 0) or time.time()
            tier = self._retry.delay(attempt, first_seen, time.time())
            if tier is not None:
                await self._defer(message, job, attempt, failure, tier)
                return
            final = "failed"
        await self._finish(message, job, final, attempt, reason=outcome.reason,
                           detail=failure.detail, provider=failure.provider,
                           suppress=failure.suppress)

    async def _defer(self, message: AbstractIncomingMessage, job: Job, attempt: int,
                     failure: SendFailure, tier: int) -> None:
        await self.redis_call(lambda: self.gate.post_send(
            job.account_id, job.id, status="R", attempt=attempt, provider=failure.provider,
            channel=job.channel, reason=failure.outcome.reason, note=failure.detail),
            bounded=self.gate.bounded)
        headers = dict(message.headers)
        headers[ATTEMPT_HEADER] = attempt + 1
        headers.setdefault(FIRST_SEEN_HEADER, int(time.time()))
        # Jitter inside the tier: per-message TTL between 80 % and 100 % of the queue's TTL.
        expiration = tier * random.uniform(0.8, 1.0)
        await self._bus.publish_retry(message.body, routing_key(job.channel, job.category),
                                      tier, headers, expiration=expiration)
        self._metrics.retries.labels(job.channel, str(tier)).inc()
        await self._event_and_ack(message, job, "deferred", attempt,
                                  reason=failure.outcome.reason, detail=failure.detail,
                                  provider=failure.provider)

    async def _finish(self, message: AbstractIncomingMessage, job: Job, status: str,
                      attempt: int, *, provider: str | None = None,
                      provider_message_id: str | None = None, reason: str | None = None,
                      refund: bool = False, suppress: str | None = None,
                      **event: Any) -> None:
        """Record a final status and its reputation counts, publish its event, ack."""
        recorded = await self.redis_call(lambda: self.gate.post_send(
            job.account_id, job.id, status=status, attempt=attempt, provider=provider,
            provider_message_id=provider_message_id, channel=job.channel, reason=reason,
            counts=_COUNTS.get(status, Counts()), address=job.to, refund=refund,
            suppress=suppress, note=event.get("detail")), bounded=self.gate.bounded)
        if recorded.transition is not None:
            await self._account_moved(job, recorded.transition)
        if not recorded.applied:
            # a provider event got there first (delivered before our own "sent"):
            # announcing "sent" now would move the status backwards
            self._metrics.jobs.labels(job.channel, status).inc()
            await self.settle.ack(message)
            _log_outcome(job, status, attempt, reason, provider=provider,
                         detail=event.get("detail"), superseded=True)
            return
        await self._event_and_ack(message, job, status, attempt, provider=provider,
                                  provider_message_id=provider_message_id, reason=reason,
                                  **event)

    async def _account_moved(self, job: Job, t: Transition) -> None:
        """Count an automatic transition; log and publish it as a status event."""
        self._metrics.account_transitions.labels(t.from_state, t.to_state).inc()
        await publish_transition(self._bus, t, job.channel)

    async def _event_and_ack(self, message: AbstractIncomingMessage, job: Job, status: str,
                             attempt: int, extra: dict[str, Any] | None = None,
                             **fields: Any) -> None:
        await self._bus.publish_event(status_event(
            job_id=job.id, account_id=job.account_id, channel=job.channel,
            status=status, attempt=attempt, metadata=job.metadata,
            **fields, **(extra or {})))
        self._metrics.jobs.labels(job.channel, status).inc()
        await self.settle.ack(message)
        _log_outcome(job, status, attempt, fields.get("reason"), provider=fields.get("provider"),
                     detail=fields.get("detail"))

    async def _reject_invalid(self, message: AbstractIncomingMessage, exc: InvalidJob,
                              queue_channel: str) -> None:
        """Dead-letter an invalid job with its reason, then record its timeline entry (under
        its ids, or an id made from its bytes: :func:`suppression.keys.rejection_record`) and
        publish a ``rejected`` event if it had an id, then ack. The dead letter first (in the
        order the jobs came): a crash before the ack repeats the copy and the entry, never
        loses either; only rejected jobs pay this write."""
        channel = exc.channel or queue_channel
        account, record_id = rejection_record(message.body, exc.account_id, exc.job_id)

        async def recorded(_: str) -> None:
            await self.redis_call(lambda: self.gate.record_rejection(
                account, record_id, reason="invalid", detail=exc.reason))
            if exc.job_id:
                await self._bus.publish_event(status_event(
                    job_id=exc.job_id, account_id=exc.account_id, channel=channel,
                    status="rejected", reason="invalid", detail=exc.reason))
            self._metrics.jobs.labels(channel, "rejected").inc()

        await self.settle.dead_letter(message, exc.reason, channel, before_ack=recorded,
                                      **{RECORD_HEADER: f"{account}/{record_id}"})
        log.warning("job %s rejected: %s (outbox jobs show %s %s)", exc.job_id or record_id,
                    exc.reason, account, record_id, extra={
                        "job_id": exc.job_id or record_id, "account_id": exc.account_id,
                        "record": f"{account}/{record_id}", "channel": channel,
                        "status": "rejected", "reason": "invalid", "detail": exc.reason,
                        "ms": _ms()})

    async def unexpected(self, message: AbstractIncomingMessage, exc: Exception,
                         channel: str) -> None:
        """An exception nobody expected while handling a job of ``channel``'s queue: settled
        as :meth:`sender.settle.Settle.unexpected` says (back to the queue a bounded number
        of times, then ``outbox.dead``), and with the dead letter a ``failed`` event, reason
        ``error``. One raised after the provider took the message (:class:`SentThenFailed`)
        is dead-lettered at once, without an event (its ``sent`` stands). Never loops, never
        drops."""
        after_send = isinstance(exc, SentThenFailed)
        cause = exc.__cause__ if after_send and exc.__cause__ is not None else exc

        async def announce(reason: str) -> None:
            if not after_send:
                await self._announce_error(message, channel, reason)
            self._metrics.jobs.labels(channel, "failed").inc()

        await self.settle.unexpected(message, cause, channel, before_ack=announce,
                                     final="sent, then an unexpected error" if after_send
                                     else "")

    async def _announce_error(self, message: AbstractIncomingMessage, channel: str,
                              reason: str) -> None:
        """The ``failed`` event of a dead-lettered job, recorded first when it can be (so a
        republish answers ``done`` and no status moves backwards); best effort. The job is
        what this delivery's body parsed to (:data:`_PARSED`: not parsed again); none when
        the error came before it was parsed."""
        parsed = _PARSED.get()
        if parsed is None:
            return
        job = parsed if isinstance(parsed, JobBase) else None
        if isinstance(parsed, InvalidJob):
            job_id, account_id, job_channel = parsed.job_id, parsed.account_id, parsed.channel
        else:
            job_id, account_id, job_channel = parsed.id, parsed.account_id, parsed.channel
        if not job_id:
            return
        if job is not None and account_id:
            try:
                async with asyncio.timeout(REDIS_CALL_TIMEOUT):
                    recorded = await self.gate.post_send(
                        account_id, job_id, status="failed", channel=job.channel,
                        attempt=_int(message.headers.get(ATTEMPT_HEADER), 1), reason="error")
                if not recorded.applied:
                    return  # it already has a later status
            except Exception as exc:  # the gate may be what fails: announce all the same
                log.debug("failed status not recorded: %s", exc)
        await self._bus.publish_event(status_event(
            job_id=job_id, account_id=account_id, channel=job_channel or channel,
            status="failed", reason="error", detail=reason[:1000],
            metadata=job.metadata if job is not None else None))


def _ms() -> int | None:
    """Milliseconds since this task's delivery was received."""
    received = _RECEIVED.get()
    return None if received is None else round((time.monotonic() - received) * 1000)


def _log_outcome(job: Job, status: str, attempt: int, reason: str | None, *,
                 provider: str | None = None, detail: str | None = None, **more: Any) -> None:
    """The one line of a settled job: INFO; a deferral at WARNING with its cause."""
    fields = {"job_id": job.id, "account_id": job.account_id, "channel": job.channel,
              "status": status, "reason": reason, "attempt": attempt, "provider": provider,
              "ms": _ms(), **more}
    if status == "deferred":
        log.warning("job %s deferred: %s", job.id, detail or reason,
                    extra={**fields, "detail": detail})
    else:
        log.info("job %s %s", job.id, status, extra={**fields, "detail": detail})


async def protected(step: Awaitable[None]) -> None:
    """Run a settling step to its end even if the delivery's task is cancelled (aiormq cancels
    its consumers' tasks when a channel closes: a broker restart). What the orphaned step
    raises later is logged once here; a bare ``asyncio.shield`` left it to asyncio's "Task
    exception was never retrieved" with a traceback for every job in flight."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_orphan_done)
        raise


def _orphan_done(task: asyncio.Future[None]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    exc = task.exception()
    if isinstance(exc, (Stopping, *BROKER_ERRORS)):
        log.warning("after the delivery was cancelled: %s; RabbitMQ redelivers the job", exc)
    else:
        log.error("after the delivery was cancelled", exc_info=exc)



def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
