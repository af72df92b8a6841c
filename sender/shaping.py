"""Reply-driven shaping in the worker: slow-down replies slow their destination, for every
worker process (the state machine and its records: :mod:`suppression.destinations`).

* :class:`ShapedChannel` wraps the email channel: a send refused with a slow-down reply
  (:func:`suppression.classify.slow_down`: Gmail ``421 4.7.28``, Yahoo ``421 4.7.0 [TSS04]``,
  Microsoft ``451 4.7.650``...) cuts its destination's rate (the job itself is deferred as any
  temporary refusal is: the reply's outcome is unchanged).
* :meth:`Shaping.admit`, called by the pipeline before the pre-send gate: a job whose
  destination is slowed waits its turn (a GCRA pace in Redis at the destination's rate now),
  one whose destination is paused waits for the end of the pause; either way the pipeline
  *parks* it (as over the account's rate: no attempt counted, no status event, back after the
  smallest delay tier that covers the wait). Other destinations are untouched: a job to a
  normal destination costs a dictionary lookup, no Redis call.
* The records are read at most every ``refresh_every`` seconds per process (one SMEMBERS and
  an HGETALL per slowed destination); writes happen only on a cut and, while slowed, one
  small script per send admitted.
* A pause is announced: a WARNING (logger ``outbox.shaping``) and an ops event on
  ``outbox.status``, routing key ``destination.paused``; each cut a WARNING; the gauge
  ``outbox_destination_state{destination,relay,state}`` (1 on the current state) and the
  counter ``outbox_destination_cuts_total{destination,relay}``.

Redis unreachable (or any error) while admitting: the job goes on unshaped (the gate's own
round trip then holds it until Redis is back); while recording a cut: logged, the job's
deferral unchanged. Shaping never fails, parks or holds a job by an error of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sender.channels.base import Channel, SendFailure, SendResult
from sender.metrics import Metrics
from sender.outages import REDIS_UNREACHABLE
from suppression.classify import slow_down
from suppression.destinations import (
    NORMAL,
    PAUSED,
    SLOWED,
    STATES,
    Cut,
    DestinationStore,
    Record,
    View,
    destination_id,
    provider_of,
    view,
)
from suppression.history import iso

log = logging.getLogger("outbox.shaping")

#: ``publish(routing_key, event)``: an ops event on ``outbox.status``
Publish = Callable[[str, dict[str, Any]], Awaitable[None]]
#: seconds between two reads of the records by one process
REFRESH_EVERY = 1.0


def _show(metrics: Metrics, name: str, state: str) -> None:
    """Set ``outbox_destination_state`` of ``name`` to 1 on ``state``, 0 on the others."""
    destination, _, relay = name.partition("@")
    for each in STATES:
        metrics.destination_state.labels(destination, relay, each).set(1 if each == state else 0)


class Shaping:
    """Per worker process: the cached states of the slowed destinations, the admission of a
    job and the cut a slow-down reply makes."""

    def __init__(self, store: DestinationStore, *,
                 relay_for: Callable[[str | None, str | None], str],
                 mx_hosts: Callable[[str], tuple[str, ...]] = lambda _domain: (),
                 metrics: Metrics | None = None, publish: Publish | None = None,
                 clock: Callable[[], float] = time.time,
                 refresh_every: float = REFRESH_EVERY, tiers: Sequence[int] = ()) -> None:
        """``tiers``: the retry delay tiers (``OUTBOX_RETRY_TIERS``) a parked job waits in: a
        long wait is given as the longest tier within it, so the job is back (and parked
        again for the rest) no later than the destination is (see :meth:`admit`)."""
        self.store = store
        self._tiers = sorted(tiers)
        self._relay_for = relay_for
        self._mx_hosts = mx_hosts
        self._metrics = metrics
        self._publish = publish
        self._clock = clock
        self._refresh_every = refresh_every
        self._records: dict[str, Record] = {}
        self._shown: dict[str, str] = {}
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._stopped = False  # stop() was called: no background refresh starts again

    def destination(self, address: str, category: str | None,
                    account_id: str | None = None) -> str:
        """``<provider group>@<relay>`` of a recipient address, and of the job category and
        account whose route (``OUTBOX_SMTP_ROUTES``, ``OUTBOX_SMTP_ACCOUNT_ROUTES``) names
        the relay."""
        domain = address.rpartition("@")[2].lower()
        return destination_id(provider_of(domain, self._mx_hosts(domain)),
                              self._relay_for(category, account_id))

    def state(self, name: str) -> View:
        """The cached state of a destination now."""
        return view(self._records.get(name), self._clock(), self.store.params)

    def idle(self, channel: str) -> bool:
        """Nothing to admit: not e-mail, or no destination slowed or paused anywhere in a
        cache still fresh (the common case, answered without a coroutine a job; the
        background refresh keeps the cache fresh)."""
        return channel != "email" or (
            self._watch is not None and not self._records
            and self._clock() - self._fetched < self._refresh_every)

    async def admit(self, channel: str, address: str, category: str | None,
                    account_id: str | None = None) -> int:
        """Milliseconds the job must wait (0: send now). A wait longer than a retry tier is
        cut to the longest tier within it: parked for the smallest tier that covers it, a
        15-minute pause would otherwise keep the job 30 (the default tiers' 1800 s)."""
        return self._within_tiers(await self._wait_ms(channel, address, category,
                                                      account_id))

    def _within_tiers(self, wait_ms: int) -> int:
        fits = [t * 1000 for t in self._tiers if t * 1000 <= wait_ms]
        return fits[-1] if fits else wait_ms

    async def _wait_ms(self, channel: str, address: str, category: str | None,
                       account_id: str | None) -> int:
        if channel != "email":
            return 0
        self.start()
        try:
            await self.refresh()
            if not self._records:  # nothing slowed anywhere: the common case, no more work
                return 0
            name = self.destination(address, category, account_id)
            record = self._records.get(name)
            if record is None:
                return 0
            now = self._clock()
            current = view(record, now, self.store.params)
            if current.state == PAUSED:
                return max(1, int(((current.until or now) - now) * 1000))
            if current.state == NORMAL or current.rate is None:
                return 0
            return int(await self.store.admit(name, current.rate, now) * 1000)
        except REDIS_UNREACHABLE as exc:
            log.debug("shaping: Redis unreachable while admitting (%s); sending", exc)
            return 0
        except Exception as exc:  # never a job's problem: it goes on unshaped
            log.warning("shaping: admission failed, sending unshaped: %s: %s",
                        type(exc).__name__, exc)
            return 0

    def start(self) -> None:
        """Refresh the states every ``refresh_every`` seconds in the background too, so the
        gauge follows recoveries and pauses while no job asks."""
        if self._watch is None and not self._stopped:
            self._watch = asyncio.get_running_loop().create_task(self._run(),
                                                                 name="outbox shaping")

    async def stop(self) -> None:
        """End the background refresh (for good: a job admitted later, during shutdown,
        reads the records itself)."""
        self._stopped = True
        task, self._watch = self._watch, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every)
            try:
                await self.refresh()
            except Exception as exc:  # Redis away: the next turn tries again
                log.debug("shaping: refresh failed: %s: %s", type(exc).__name__, exc)

    async def refresh(self, *, force: bool = False) -> None:
        """Read the records again when the cache is older than ``refresh_every`` (one reader
        at a time; the others use the cache meanwhile)."""
        now = self._clock()
        if not force and (now - self._fetched < self._refresh_every or self._lock.locked()):
            return
        async with self._lock:
            self._records = await self.store.all()
            self._fetched = now
        self._show(now)

    async def refused(self, address: str, category: str | None, failure: SendFailure,
                      account_id: str | None = None) -> None:
        """A send was refused: a slow-down reply cuts its destination (never raises)."""
        rule = slow_down(failure.detail)
        if rule is None:
            return
        name = self.destination(address, category, account_id)
        now = self._clock()
        try:
            cut = await self.store.refused(name, now, reply=failure.detail, rule=rule)
        except Exception as exc:  # Redis away or refusing: the job's deferral is unchanged
            log.warning("shaping: %s answered %r; not recorded: %s: %s", name,
                        failure.detail[:120], type(exc).__name__, exc)
            return
        if cut.record is None:
            return
        self._records[name] = cut.record
        if self._metrics is not None:
            self._metrics.destination_cuts.labels(*name.split("@", 1)).inc()
        self._show(now)
        await self._announce(name, cut, now)

    async def _announce(self, name: str, cut: Cut, now: float) -> None:
        assert cut.record is not None
        current = view(cut.record, now, self.store.params)
        destination, _, relay = name.partition("@")
        fields = {"destination": destination, "relay": relay, "state": current.state,
                  "rate": current.rate, "until": iso((current.until or now) * 1000),
                  "reason": cut.record.rule, "detail": cut.record.reply}
        if not cut.paused:
            log.warning("destination %s through %s slowed to %.2f messages/s until %s: %s",
                        destination, relay, current.rate or 0, fields["until"],
                        cut.record.reply[:200], extra=fields)
            return
        log.warning("destination %s through %s paused until %s after %d slow-downs: %s",
                    destination, relay, fields["until"], self.store.params.pause_after,
                    cut.record.reply[:200], extra=fields)
        if self._publish is None:
            return
        # a status event's shape (sender.models.StatusEvent: a client reads it as one, the
        # destination's fields as extras), for no account and no channel
        event: dict[str, Any] = {
            "v": 1, "type": "destination", "id": f"{name}:{int(now * 1000)}",
            "account_id": None, "channel": None, "status": current.state, "attempt": 0,
            "at": iso(now * 1000), "metadata": {}, **fields}
        try:
            await self._publish("destination.paused", event)
        except Exception as exc:  # an ops event lost is logged, never a job's problem
            log.warning("destination %s: the paused event was not published: %s", name, exc)

    def _show(self, now: float) -> None:
        """Set the gauge for every destination known to this process; log a return."""
        for name in set(self._records) | set(self._shown):
            state = view(self._records.get(name), now, self.store.params).state
            before = self._shown.get(name)
            if before == state:
                continue
            if before in (SLOWED, PAUSED) and state != before:
                log.info("destination %s is %s again", name, state,
                         extra={"destination": name, "state": state})
            self._shown[name] = state
            if self._metrics is not None:
                _show(self._metrics, name, state)


class ShapedChannel:
    """The email channel with shaping: every slow-down reply is told to :class:`Shaping`.
    Everything else is the wrapped channel's."""

    def __init__(self, channel: Channel, shaping: Shaping) -> None:
        self._channel = channel
        self.shaping = shaping
        self.name = getattr(channel, "name", "email")
        self.provider = getattr(channel, "provider", "smtp")

    async def send(self, job: Any, sender: tuple[str, ...] | None = None) -> SendResult:
        """Send through the wrapped channel; a refusal is shown to the shaping first."""
        try:
            return await self._channel.send(job, sender)
        except SendFailure as failure:
            await self.shaping.refused(job.to, job.category, failure,
                                       getattr(job, "account_id", None))
            raise

    def stop(self) -> None:
        self._channel.stop()

    async def close(self) -> None:
        await self.shaping.stop()
        await self._channel.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def build(settings: Any, redis: Any, channel: Channel, *, metrics: Metrics,
          publish: Publish | None = None) -> ShapedChannel:
    """The email channel wrapped with shaping (``OUTBOX_SHAPING_*``)."""
    from suppression.destinations import Params

    relays = getattr(channel, "relays", None)
    mx = getattr(channel, "mx", None)
    shaping = Shaping(DestinationStore(redis, Params.from_settings(settings)),
                      relay_for=relays.route if relays is not None
                      else lambda _category, _account: "relay",
                      mx_hosts=mx.hosts if mx is not None else lambda _d: (),
                      metrics=metrics, publish=publish, tiers=settings.retry_tiers)
    return ShapedChannel(channel, shaping)


def event_body(event: dict[str, Any]) -> bytes:
    """An ops event as published."""
    return json.dumps(event, ensure_ascii=False).encode()
