"""Reading and settling ``outbox.dead``: ``outbox dead list|show|replay|purge``.

A dead letter is read as :class:`DeadLetter`: its id (the message id Outbox gave it,
``dead-<uuid>``; for one RabbitMQ dead-lettered itself, the original message id, else a digest
of its bytes, headers and time), the reason (``x-outbox-reason``, or RabbitMQ's
``x-first-death-reason`` such as ``delivery_limit``), the job's account, id and channel (read
from the body as far as they can be), when it was dead-lettered, and its lane.

Nothing is lost by reading. :class:`DeadQueue` takes every message of the queue with
``basic.get`` and no ack, holding them unsettled on its own channel (so a second reader sees
only the rest: run one at a time), then settles them:

* ``list`` / ``show``: every message is returned at once with one ``basic.nack(multiple,
  requeue)``; RabbitMQ puts returned messages back in their place, so the order stays. One
  returned :data:`RECOPY_AT` times already is given back as a confirmed copy (same id, body,
  headers and time of death) and then acked: RabbitMQ 4.0-4.2 would drop it at 20 returns.
  Such a copy goes to the back of the queue, so ``list`` sorts by the time of death;
* ``replay``: each selected message is republished to its lane (publisher confirm, mandatory)
  and only then acked; a republish that fails leaves its message in ``outbox.dead``. A job's
  record is reopened first when it ended ``failed`` or ``rejected`` (never handed over:
  :meth:`suppression.gate.Gate.reopen`), so the worker sends the copy instead of answering
  ``done``; a job sent, or being sent, is still never sent again;
* ``purge``: each selected message is acked; the others are returned as above.

A message is selected by its id (every copy with that id) and the filters; the channel's close
returns whatever is still held if the command dies half-way.

The lane (:func:`lane_of`): ``x-outbox-routing-key`` (the routing key the job came with, on the
dead letters Outbox publishes), else RabbitMQ's ``x-death`` (exchange and routing key, or the
queue ``outbox.events``), else the dead letter's own routing key when it names a lane. Evidence
kept by the bounce listener has no lane and is not replayed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from sender import topology
from sender.bus import (
    ATTEMPT_HEADER,
    FIRST_SEEN_HEADER,
    REASON_HEADER,
    RECORD_HEADER,
    ROUTE_HEADER,
    Bus,
)
from sender.channels import registry
from sender.models import salvage_ids
from suppression.gate import Gate
from suppression.roundtrip import Client
from suppression.store import Audit

T = TypeVar("T")

#: the routing key of a provider event's dead letter (sender.provider_event_applier)
EVENTS_KEY = "events"
#: headers that describe the dead-lettering, not the job: dropped from a replayed copy
_DEATH_HEADERS = frozenset({REASON_HEADER, ROUTE_HEADER, RECORD_HEADER, ATTEMPT_HEADER,
                            "x-death", "x-delivery-count", "x-outbox-dead-at",
                            "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange",
                            "x-last-death-reason", "x-last-death-queue",
                            "x-last-death-exchange"})
DELIVERY_COUNT = "x-delivery-count"  # quorum queues count every return of a message
#: a message returned this often is given back as a copy instead (its count starts again):
#: RabbitMQ 4.0-4.2 count returns against a quorum queue's default delivery limit of 20 and
#: would drop it from ``outbox.dead``, which has no dead-letter exchange of its own
RECOPY_AT = 10
#: on such a copy: when the original was dead-lettered (epoch seconds)
DEAD_AT_HEADER = "x-outbox-dead-at"
BODY_SHOWN = 65536  # bytes of a body ``show`` prints (``--json``: the same, as text)
ACTIONS = ("replay", "purge")
_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class NotInQueue(LookupError):
    """Dead letters named by id that are not in ``outbox.dead``: nothing was settled."""

    def __init__(self, missing: set[str]) -> None:
        super().__init__(f"not in outbox.dead: {', '.join(sorted(missing))} (nothing settled)")
        self.missing = missing


def parse_since(value: str) -> datetime:
    """``--since`` / ``?since=``: an ISO 8601 time (UTC when it names no zone) or an age
    (``90s``, ``30m``, ``2h``, ``7d``); ValueError otherwise."""
    ago = _AGO.match(value.strip())
    if ago:
        return datetime.now(UTC) - timedelta(seconds=int(ago[1]) * _UNITS[ago[2]])
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {value!r} (ISO 8601, or an age such as 30m, 2h, "
                         f"7d)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DeadLetter:
    """One message of ``outbox.dead``, as the commands show it."""

    id: str
    reason: str
    account_id: str | None
    job_id: str | None
    channel: str | None
    dead_at: datetime | None
    lane: tuple[str, str] | None  # (exchange, routing key); None: nowhere to replay it
    record: str | None
    routing_key: str
    size: int
    headers: dict[str, Any] = field(repr=False)

    def row(self) -> dict[str, Any]:
        """The record ``list --json`` prints."""
        exchange, key = self.lane or ("", "")
        return {"id": self.id, "dead_at": _iso(self.dead_at), "account_id": self.account_id,
                "job_id": self.job_id, "channel": self.channel, "reason": self.reason,
                "lane": (key if exchange == topology.JOBS_EXCHANGE else
                         f"queue {key}" if self.lane else None),
                "record": self.record, "bytes": self.size}


def read(message: AbstractIncomingMessage) -> DeadLetter:
    """A delivery from ``outbox.dead`` as a :class:`DeadLetter`."""
    headers = dict(message.headers or {})
    death = _first_death(headers)
    job_id, account_id, channel = salvage_ids(message.body)
    return DeadLetter(
        id=message.message_id or _digest(message, headers),
        reason=_reason(headers, death), account_id=account_id, job_id=job_id,
        channel=channel, dead_at=_dead_at(message, death), lane=lane_of(message, headers),
        record=_text(headers.get(RECORD_HEADER)) or None,
        routing_key=message.routing_key or "", size=len(message.body), headers=headers)


def lane_of(message: AbstractIncomingMessage, headers: dict[str, Any]
            ) -> tuple[str, str] | None:
    """Where a replay sends the message back: ``(exchange, routing key)``, or None."""
    lanes = job_routing_keys()
    route = _text(headers.get(ROUTE_HEADER))
    if route in lanes:
        return (topology.JOBS_EXCHANGE, route)
    if route == topology.EVENTS_QUEUE:  # an event consumed from its queue (default exchange)
        return ("", topology.EVENTS_QUEUE)
    death = _first_death(headers)
    if death:
        if _text(death.get("queue")) == topology.EVENTS_QUEUE:
            return ("", topology.EVENTS_QUEUE)
        keys = death.get("routing-keys") or []
        if _text(death.get("exchange")) == topology.JOBS_EXCHANGE and keys:
            return (topology.JOBS_EXCHANGE, _text(keys[0]))
    key = message.routing_key or ""
    if key in lanes:
        return (topology.JOBS_EXCHANGE, key)
    if key == EVENTS_KEY:
        return ("", topology.EVENTS_QUEUE)
    return None


def job_routing_keys() -> set[str]:
    """Every lane's routing key (``email``, ``email.bulk``, ``sms``, ``sms.bulk``...)."""
    return {key for d in registry.deliveries() for _, key, _ in d.lanes()}


def replay_headers(headers: dict[str, Any], now: float) -> dict[str, Any]:
    """A replayed copy's headers: the job's own, without the dead-lettering's, first seen
    now (its retry age starts again) and attempt 1."""
    kept = {k: v for k, v in headers.items() if k not in _DEATH_HEADERS}
    kept[FIRST_SEEN_HEADER] = int(now)
    return kept


@dataclass(frozen=True)
class Filters:
    """What ``--account``, ``--reason`` (a substring, any case) and ``--since`` select; ``ids``:
    these dead letters only (empty: every one the filters pass)."""

    ids: frozenset[str] = frozenset()
    account_id: str | None = None
    reason: str | None = None
    since: datetime | None = None

    def match(self, dead: DeadLetter) -> bool:
        """Whether ``dead`` is selected."""
        if self.ids and dead.id not in self.ids:
            return False
        if self.account_id is not None and dead.account_id != self.account_id:
            return False
        if self.reason is not None and self.reason.lower() not in dead.reason.lower():
            return False
        return self.since is None or (dead.dead_at is not None and dead.dead_at >= self.since)


class DeadQueue:
    """``outbox.dead`` held for one command: :meth:`scan` takes every message unsettled,
    :meth:`return_all` gives back what is still held (see the module's docstring)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._channel: AbstractChannel | None = None
        self.held: list[tuple[AbstractIncomingMessage, DeadLetter]] = []

    async def scan(self) -> list[DeadLetter]:
        """Every message in the queue, oldest first, held unsettled."""
        assert self._bus.connection is not None, "connect the bus first"
        self._channel = await self._bus.connection.channel(publisher_confirms=False)
        queue: AbstractQueue = await self._channel.declare_queue(topology.DEAD_QUEUE,
                                                                 passive=True)
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            self.held.append((message, read(message)))
        return [dead for _, dead in self.held]

    async def replay(self, selected: Filters, now: float,
                     before: Callable[[DeadLetter], Awaitable[None]] | None = None
                     ) -> list[DeadLetter]:
        """Republish each selected message to its lane (after ``before(dead)``: the CLI
        reopens the job's record), ack it once confirmed. Raises :class:`ValueError` before
        anything is sent when one has no lane."""
        chosen = [(m, d) for m, d in self.held if selected.match(d)]
        laneless = [d.id for _, d in chosen if d.lane is None]
        if laneless:
            raise ValueError(f"no lane to replay {', '.join(laneless)} to (not a job or event)")
        done = []
        for message, dead in chosen:
            assert dead.lane is not None
            exchange, key = dead.lane
            if before is not None:
                await before(dead)
            await self._bus.publish(exchange, key, message.body,
                                    headers=replay_headers(dead.headers, now),
                                    content_type=message.content_type or "application/json")
            await message.ack()
            done.append(dead)
        return done

    async def purge(self, selected: Filters) -> list[DeadLetter]:
        """Ack (remove) each selected message."""
        done = []
        for message, dead in self.held:
            if selected.match(dead):
                await message.ack()
                done.append(dead)
        return done

    async def return_all(self) -> None:
        """Give back every message still held (one nack with ``multiple``; a worn one as a
        confirmed copy, then acked: see :data:`RECOPY_AT`), close the channel."""
        pending = [(m, d) for m, d in self.held if not m.processed]
        self.held = []
        for message, dead in pending:
            if _int(message.headers.get(DELIVERY_COUNT)) >= RECOPY_AT:
                await self._bus.publish(topology.DEAD_EXCHANGE, message.routing_key or "",
                                        message.body, headers=_fresh(dead),
                                        message_id=dead.id,
                                        content_type=message.content_type or "application/json")
                await message.ack()
        rest = [m for m, _ in pending if not m.processed]
        if rest:
            await rest[-1].nack(multiple=True, requeue=True)
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


def _fresh(dead: DeadLetter) -> dict[str, Any]:
    """A returned copy's headers: the same, without the count, with when it died."""
    headers = {k: v for k, v in dead.headers.items() if k != DELIVERY_COUNT}
    if dead.dead_at is not None:
        headers.setdefault(DEAD_AT_HEADER, int(dead.dead_at.timestamp()))
    return headers


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], dict):
        return deaths[-1]  # the list is newest first: the last is the first death
    return {}


def _reason(headers: dict[str, Any], death: dict[str, Any]) -> str:
    said = _text(headers.get(REASON_HEADER))
    if said:
        return said
    why = _text(headers.get("x-first-death-reason")) or _text(death.get("reason"))
    queue = _text(headers.get("x-first-death-queue")) or _text(death.get("queue"))
    return f"{why} (from {queue})" if why and queue else why or "unknown"


def _dead_at(message: AbstractIncomingMessage, death: dict[str, Any]) -> datetime | None:
    kept = _int((message.headers or {}).get(DEAD_AT_HEADER))
    if kept:
        return datetime.fromtimestamp(kept, UTC)
    moment = death.get("time") if death else None
    moment = moment if isinstance(moment, datetime) else message.timestamp
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _digest(message: AbstractIncomingMessage, headers: dict[str, Any]) -> str:
    """An id for a message that has none: its bytes, headers and time."""
    seen = json.dumps(headers, sort_keys=True, default=str).encode()
    stamp = str(message.timestamp or "").encode()
    return "h-" + hashlib.sha256(message.body + b"\0" + seen + b"\0" + stamp).hexdigest()[:24]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def held(bus: Bus, work: Callable[[DeadQueue], Awaitable[T]]) -> T:
    """Run ``work(queue)`` on ``outbox.dead`` held (scanned) for it; whatever is still held
    afterwards (an error included) goes back."""
    queue = DeadQueue(bus)
    try:
        await queue.scan()
        return await work(queue)
    finally:
        await queue.return_all()


async def listing(bus: Bus, selected: Filters) -> list[DeadLetter]:
    """The selected dead letters, by time of death (a returned copy goes to the back)."""
    async def work(queue: DeadQueue) -> list[DeadLetter]:
        chosen = [dead for _, dead in queue.held if selected.match(dead)]
        chosen.sort(key=lambda d: d.dead_at or datetime.min.replace(tzinfo=UTC))  # stable
        return chosen
    return await held(bus, work)


async def find(bus: Bus, dead_id: str) -> dict[str, Any] | None:
    """One dead letter as ``show`` prints it (its row, routing key, headers, body), or None."""
    async def work(queue: DeadQueue) -> dict[str, Any] | None:
        for message, dead in queue.held:
            if dead.id == dead_id:
                return {**dead.row(), "routing_key": dead.routing_key,
                        "headers": plain(dead.headers),
                        "body": message.body[:BODY_SHOWN].decode("utf-8", "replace"),
                        "body_cut": len(message.body) > BODY_SHOWN}
        return None
    return await held(bus, work)


async def settle(bus: Bus, redis: Client, *, action: str, selected: Filters, actor: str,
                 reason: str, idempotency_ttl: int) -> list[dict[str, Any]]:
    """Replay or purge the selection; one audit record each (``dead.<action>``: actor, reason,
    the dead letter's id, job, lane and reason) in its account's stream, else the global one.
    Rows with their ``audit_id``. :class:`NotInQueue` for an id not there, ValueError for a
    replay of what has no lane: nothing settled either way."""
    gate = Gate(redis, idempotency_ttl=idempotency_ttl)

    async def reopen(dead: DeadLetter) -> None:
        if dead.account_id and dead.job_id and dead.lane and \
                dead.lane[0] == topology.JOBS_EXCHANGE:
            await gate.reopen(dead.account_id, dead.job_id, actor=actor, reason=reason)

    async def work(queue: DeadQueue) -> list[DeadLetter]:
        missing = set(selected.ids) - {dead.id for _, dead in queue.held}
        if missing:
            raise NotInQueue(missing)
        if action == "replay":
            return await queue.replay(selected, time.time(), reopen)
        return await queue.purge(selected)

    await redis.ping()  # Redis answers before anything is settled: no audit record missed
    done = await held(bus, work)
    audit, rows = Audit(redis), []
    for dead in done:
        row = dead.row()
        row["audit_id"] = await audit.record(
            dead.account_id, actor=actor, action=f"dead.{action}", reason=reason,
            message=dead.id, job=dead.job_id or "", lane=row["lane"] or "",
            dead_reason=dead.reason[:500])
        rows.append(row)
    return rows


def plain(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers as JSON can hold them (bytes as text, times as ISO 8601)."""
    def one(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: one(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [one(v) for v in value]
        return value
    return {k: one(v) for k, v in headers.items()}
