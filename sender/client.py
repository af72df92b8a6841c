"""The CRM's client: ``from sender.client import Outbox``.

    async with Outbox("amqp://guest:guest@127.0.0.1:5672/") as outbox:
        await outbox.send_email(id="order-1234-receipt", account_id="acct_1",
                                category="transactional", to="ana@example.com",
                                from_="Shop <shop@example.com>", subject="Your receipt",
                                text="Thank you for your order.")
        result = await outbox.publish_many([email_job(...), sms_job(...)])
        async for event in outbox.events("email.*", "*.bounced"):
            print(event.id, event.status, event.reason)

Every job is validated by the worker's own validation (:func:`sender.validation.validate` on
the exact bytes published: size, depth, finite numbers, fields, addresses and headers as the
renderer reads them, phone numbers, SMS segments) before anything is published: an invalid one
raises :class:`sender.models.InvalidJob` with the reason the worker would give, and nothing is
sent. Give the worker's ``sms_region`` and ``sms_max_segments`` when they are not the defaults
(``Outbox.from_settings`` does). Not checked here: whether the sender is verified for the
account (the worker's records decide). An SMS that a character or the marketing footer makes
UCS-2, or longer by a segment, is published with a WARNING logged (``outbox.client``);
:func:`sms_warnings` gives the same notes as a value.
Jobs are published persistent, mandatory and confirmed: when a publish returns, RabbitMQ has
the job; when it raises :class:`sender.bus.PublishFailed`, it does not (publish it again: the
job id is the idempotency key, so a job published twice is sent once). A broker that cannot be
reached raises :class:`sender.connect.ServiceUnreachable` at connect, one line, password masked.

A job may wait for a ``send_at`` (RFC 3339 with its offset); :meth:`Outbox.cancel` cancels it
before it is due through the admin API (``admin_url`` and a token of the ``support`` role:
the CRM never holds Redis credentials), as ``outbox jobs cancel`` does.

Status events come back typed (:class:`sender.models.StatusEvent`; recipient events, routing
key ``recipient.<channel>.<change>``, as :class:`sender.models.RecipientEvent`): ``events()``
consumes a queue of its own bound to ``outbox.status`` with the routing keys asked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from config import Settings
from config.settings import DEFAULT_RETRY_TIERS
from sender.bus import Bus, PublishFailed
from sender.channels import registry
from sender.models import (
    AttachmentLimits,
    Category,
    EmailJob,
    Event,
    InvalidJob,
    JobBase,
    RecipientEvent,
    SmsJob,
    StatusEvent,
    parse_event,
)
from sender.topology import DEFAULT_STATUS_QUEUE_MAX_LENGTH, STATUS_EXCHANGE, STATUS_QUEUE
from sender.validation import DEFAULT_RULES, Rules, sms_notes, validate
from suppression import channels

log = logging.getLogger("outbox.client")

MAX_JOB_BYTES = DEFAULT_RULES.max_job_bytes
#: Publishes awaiting their confirms at once in :meth:`Outbox.publish_many`.
PUBLISH_WINDOW = 256
#: Events an ``events()`` queue keeps for a slow reader; beyond, the oldest are dropped.
EVENTS_MAX_LENGTH = 10_000
#: A topic binding: words of letters, digits, ``_`` and ``-``, or ``*`` / ``#``, joined by dots.
_BINDING = re.compile(r"^(?:[A-Za-z0-9_\-]+|\*|#)(?:\.(?:[A-Za-z0-9_\-]+|\*|#))*$")

Job = JobBase  # a job of any declared channel (EmailJob, SmsJob, ...), as parse_job returns it
JobInput = JobBase | Mapping[str, Any] | bytes


class InvalidBatch(InvalidJob):
    """Some jobs of a batch are invalid; none of the batch was published. ``problems`` holds
    ``(index in the batch, InvalidJob)`` for each."""

    def __init__(self, problems: list[tuple[int, InvalidJob]], total: int) -> None:
        listed = "; ".join(f"job {i}" + (f" ({exc.job_id})" if exc.job_id else "")
                           + f": {exc.reason}" for i, exc in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        super().__init__(f"{len(problems)} of {total} jobs invalid, none published: "
                         f"{listed}{more}")
        self.problems = problems


class CancelFailed(RuntimeError):
    """The admin API did not answer whether the job was cancelled (unreachable, a refused
    token, a server error): nothing is known; cancelling again is safe."""


@dataclass(frozen=True)
class CancelResult:
    """What :meth:`Outbox.cancel` got: ``cancelled`` True when the job will not be sent
    (cancelled now, or before); False when it was sent (or is being sent) already, or is
    unknown (``outcome`` ``too_late`` or ``unknown``); ``message`` says which."""

    cancelled: bool
    outcome: str
    message: str
    due: str | None = None


@dataclass(frozen=True)
class PublishResult:
    """What :meth:`Outbox.publish_many` did: every job confirmed by the broker, and every one
    it did not take with the reason (publish those again; their ids make it safe)."""

    published: tuple[Job, ...]
    failed: tuple[tuple[Job, str], ...]

    @property
    def ok(self) -> bool:
        return not self.failed


def routing_key(job: Job) -> str:
    """The key a job is published with on ``outbox.jobs``: its channel's lane for its
    category (``email``; ``email.bulk`` for marketing, which waits behind no password reset)."""
    return registry.routing_key(job.channel, job.category)


def email_job(*, id: str, account_id: str, category: Category, to: str, from_: str,
              subject: str, text: str | None = None, html: str | None = None,
              topic: str | None = None, reply_to: str | None = None,
              headers: Mapping[str, str] | None = None,
              metadata: Mapping[str, Any] | None = None,
              not_after: datetime | str | None = None,
              send_at: datetime | str | None = None,
              attachments: Sequence[Mapping[str, Any]] | None = None,
              max_job_bytes: int = MAX_JOB_BYTES) -> EmailJob:
    """A validated email job (InvalidJob with the reason otherwise). ``id`` is yours and the
    idempotency key: use the CRM's id for this message, so a retried call is sent once.
    ``category`` has no default: a marketing message needs consent and sender information.
    ``attachments``: ``{"filename", "content_type", "content" (base64), "content_id"?}``."""
    job = _validated(_encode(_fields(
        channel="email", id=id, account_id=account_id, category=category, to=to, subject=subject,
        text=text, html=html, topic=topic, reply_to=reply_to, headers=headers,
        metadata=metadata, not_after=not_after, send_at=send_at,
        attachments=[dict(a) for a in attachments] if attachments else None,
        **{"from": from_})), Rules(max_job_bytes=max_job_bytes))
    assert isinstance(job, EmailJob)
    return job


def sms_job(*, id: str, account_id: str, category: Category, to: str, body: str,
            from_: str | None = None, topic: str | None = None,
            metadata: Mapping[str, Any] | None = None,
            not_after: datetime | str | None = None,
            send_at: datetime | str | None = None,
            max_job_bytes: int = MAX_JOB_BYTES, sms_region: str = DEFAULT_RULES.sms_region,
            sms_max_segments: int = DEFAULT_RULES.sms_max_segments) -> SmsJob:
    """A validated SMS job (``to`` in E.164, or national in ``sms_region``); see
    :func:`email_job`."""
    job = _validated(_encode(_fields(
        channel="sms", id=id, account_id=account_id, category=category, to=to, body=body,
        topic=topic, metadata=metadata, not_after=not_after, send_at=send_at,
        **{"from": from_})), Rules(max_job_bytes, sms_region, sms_max_segments))
    assert isinstance(job, SmsJob)
    return job


class Outbox:
    """A connection to Outbox's exchanges. Declares the topology on connect, so nothing
    published before a worker starts is lost."""

    def __init__(self, amqp_url: str, *, retry_tiers: tuple[int, ...] = DEFAULT_RETRY_TIERS,
                 max_job_bytes: int = MAX_JOB_BYTES,
                 status_queue_max_length: int = DEFAULT_STATUS_QUEUE_MAX_LENGTH,
                 publish_window: int = PUBLISH_WINDOW,
                 sms_region: str = DEFAULT_RULES.sms_region,
                 sms_max_segments: int = DEFAULT_RULES.sms_max_segments,
                 _setting: str | None = None,
                 attachment_limits: AttachmentLimits | None = None,
                 admin_url: str | None = None, admin_token: str | None = None,
                 schedule_max_ahead: float = DEFAULT_RULES.schedule_max_ahead) -> None:
        """``status_queue_max_length`` must match the workers' OUTBOX_STATUS_QUEUE_MAX_LENGTH
        (RabbitMQ refuses a queue declared again with other arguments); ``max_job_bytes``,
        ``sms_region``, ``sms_max_segments``, ``attachment_limits`` and ``schedule_max_ahead``
        their OUTBOX_MAX_JOB_BYTES, OUTBOX_SMS_REGION, OUTBOX_SMS_MAX_SEGMENTS,
        OUTBOX_MAX_ATTACHMENTS and _BYTES and OUTBOX_SCHEDULE_MAX_AHEAD (validation uses them
        as the worker does). ``admin_url`` (the webhooks server, e.g.
        ``https://outbox.example``) and ``admin_token`` (role ``support``): for :meth:`cancel`
        only."""
        self._bus = Bus(amqp_url, retry_tiers=retry_tiers,
                        status_max_length=status_queue_max_length, setting=_setting)
        self._max_job_bytes = max_job_bytes
        self._attachment_limits = attachment_limits
        self.rules = Rules(max_job_bytes, sms_region, sms_max_segments, attachment_limits,
                           schedule_max_ahead)
        self._window = publish_window
        self._admin = (admin_url.rstrip("/"), admin_token) if admin_url and admin_token else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbox:
        """The client Outbox's own commands use (``outbox enqueue``): every value from the
        settings, errors naming OUTBOX_AMQP_URL."""
        return cls(settings.amqp_url.get_secret_value(), retry_tiers=settings.retry_tiers,
                   max_job_bytes=settings.max_job_bytes,
                   status_queue_max_length=settings.status_queue_max_length,
                   sms_region=settings.sms_region, sms_max_segments=settings.sms_max_segments,
                   _setting="OUTBOX_AMQP_URL",
                   attachment_limits=AttachmentLimits(settings.max_attachments,
                                                      settings.max_attachment_bytes),
                   schedule_max_ahead=settings.schedule_max_ahead)

    async def connect(self) -> Outbox:
        await self._bus.connect(declare=True)
        return self

    # --- jobs ---------------------------------------------------------------------------

    def validate(self, job: JobInput) -> tuple[Job, bytes]:
        """The job as the worker will read it and the bytes to publish; InvalidJob if not."""
        body = job if isinstance(job, bytes) else _encode(
            job.model_dump(by_alias=True) if isinstance(job, BaseModel) else dict(job))
        return _validated(body, self.rules), body

    async def publish(self, job: JobInput, *, warnings: bool = True) -> Job:
        """Validate and publish one job (a model, a mapping or JSON bytes); returns the job
        once RabbitMQ has confirmed it. An SMS's :func:`sms_warnings` are logged (WARNING)
        unless ``warnings`` is False (the caller reports them itself)."""
        parsed, body = self.validate(job)
        if warnings:
            _log_warnings(parsed, self.rules)
        await self._publish(parsed, body)
        return parsed

    async def send_email(self, *, id: str, account_id: str, category: Category, to: str,
                         from_: str, subject: str, text: str | None = None,
                         html: str | None = None, topic: str | None = None,
                         reply_to: str | None = None, headers: Mapping[str, str] | None = None,
                         metadata: Mapping[str, Any] | None = None,
                         not_after: datetime | str | None = None,
                         send_at: datetime | str | None = None,
                         attachments: Sequence[Mapping[str, Any]] | None = None) -> EmailJob:
        """Build (:func:`email_job`), validate and publish an email; returns the job once
        RabbitMQ has confirmed it."""
        job = email_job(id=id, account_id=account_id, category=category, to=to, from_=from_,
                        subject=subject, text=text, html=html, topic=topic, reply_to=reply_to,
                        headers=headers, metadata=metadata, not_after=not_after,
                        send_at=send_at, attachments=attachments,
                        max_job_bytes=self._max_job_bytes)
        await self.publish(job)
        return job

    async def send_sms(self, *, id: str, account_id: str, category: Category, to: str,
                       body: str, from_: str | None = None, topic: str | None = None,
                       metadata: Mapping[str, Any] | None = None,
                       not_after: datetime | str | None = None,
                       send_at: datetime | str | None = None) -> SmsJob:
        """Build (:func:`sms_job`), validate and publish an SMS (``to`` in E.164)."""
        job = sms_job(id=id, account_id=account_id, category=category, to=to, body=body,
                      from_=from_, topic=topic, metadata=metadata, not_after=not_after,
                      send_at=send_at, max_job_bytes=self._max_job_bytes,
                      sms_region=self.rules.sms_region,
                      sms_max_segments=self.rules.sms_max_segments)
        await self.publish(job)
        return job

    async def publish_many(self, jobs: Iterable[JobInput]) -> PublishResult:
        """Validate every job first (:class:`InvalidBatch` naming each invalid one, and nothing
        published, if any is), then publish them all, up to ``publish_window`` awaiting their
        confirms at once, and wait for every confirm."""
        checked: list[tuple[Job, bytes]] = []
        problems: list[tuple[int, InvalidJob]] = []
        for index, job in enumerate(jobs):
            try:
                checked.append(self.validate(job))
                _log_warnings(checked[-1][0], self.rules)
            except InvalidJob as exc:
                problems.append((index, exc))
        if problems:
            raise InvalidBatch(problems, len(problems) + len(checked))
        window = asyncio.Semaphore(self._window)

        async def one(parsed: Job, body: bytes) -> str | None:
            async with window:
                try:
                    await self._publish(parsed, body)
                except PublishFailed as exc:
                    return str(exc)
                return None

        outcomes = await asyncio.gather(*(one(p, b) for p, b in checked))
        return PublishResult(
            published=tuple(p for (p, _), why in zip(checked, outcomes, strict=True) if not why),
            failed=tuple((p, why) for (p, _), why in zip(checked, outcomes, strict=True) if why))

    async def enqueue(self, job: Mapping[str, Any] | bytes, *, validate: bool = True,
                      warnings: bool = True) -> Job | None:
        """Validate and publish one job; returns it once RabbitMQ has confirmed it.
        ``validate=False`` publishes bytes as they are (the worker dead-letters invalid ones)
        and returns None; ``warnings`` as for :meth:`publish`."""
        if validate:
            return await self.publish(job, warnings=warnings)
        body = job if isinstance(job, bytes) else json.dumps(job, ensure_ascii=False).encode()
        await self._bus.publish_job(body, _guess_key(body))
        return None

    async def _publish(self, job: Job, body: bytes) -> None:
        await self._bus.publish_job(body, routing_key(job), message_id=job.id)

    async def cancel(self, account_id: str, job_id: str, *, reason: str | None = None
                     ) -> CancelResult:
        """Cancel a job waiting for its ``send_at`` (``POST /admin/jobs/ACCOUNT/ID/cancel``):
        :class:`CancelResult` (``cancelled`` False when it is sent already or unknown);
        :class:`CancelFailed` when the API did not say; ``ValueError`` without ``admin_url``
        and ``admin_token``."""
        if self._admin is None:
            raise ValueError("cancel needs admin_url and admin_token (role support)")
        import aiohttp  # only here: publishing needs no HTTP client

        base, token = self._admin
        url = f"{base}/admin/jobs/{quote(account_id, safe='')}/{quote(job_id, safe='')}/cancel"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
                    http.post(url, json={"reason": reason} if reason else {},
                              headers={"Authorization": f"Bearer {token}"}) as answer:
                status = answer.status
                data = await answer.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CancelFailed(f"{url}: {type(exc).__name__}: {exc}") from exc
        if status == 200:
            return CancelResult(True, data["outcome"], data["message"], data.get("due"))
        if status in (404, 409):
            said = str(data.get("error", ""))
            return CancelResult(False, "unknown" if status == 404 else "too_late", said)
        raise CancelFailed(f"{url}: HTTP {status}: {data.get('error') if data else ''}")

    # --- status events ------------------------------------------------------------------

    async def events(self, *bindings: str, queue: str | None = None,
                     max_length: int = EVENTS_MAX_LENGTH, prefetch: int = 100,
                     ready: Callable[[], None] | None = None) -> AsyncIterator[Event]:
        """Status events as they are published, for the routing keys ``bindings`` (topic
        patterns on ``outbox.status``: ``email.*``, ``*.bounced``, ``account.#``,
        ``recipient.#``; all when none is given): :class:`StatusEvent`, or
        :class:`RecipientEvent` for ``recipient.<channel>.<change>`` keys (``"type":
        "recipient"``).

        Without ``queue``: an exclusive, auto-delete queue of this connection (deleted when it
        closes, at most ``max_length`` events waiting, the oldest dropped): sees what is
        published while it is open. With ``queue`` a durable quorum queue of that name, bound
        the same way and bounded the same way, keeps events while you are away;
        ``queue="outbox.status"`` reads Outbox's own queue (every event; no bindings).
        An event is acknowledged when the loop asks for the next one, so one whose handling
        raised comes back (durable queues). Bodies that are not status events are logged and
        skipped. ``ready`` is called once the queue is bound (events published from then on
        are seen), before the first event."""
        keys = bindings or ("#",)
        for key in keys:
            if not _BINDING.match(key):
                raise ValueError(f"not a routing key pattern: {key!r} (words, * or #, "
                                 f"joined by dots, e.g. email.* or *.bounced)")
        if queue == STATUS_QUEUE and bindings:
            raise ValueError(f"{STATUS_QUEUE} takes every event: give no bindings, or use a "
                             f"queue of your own")
        channel = await self._bus.channel(prefetch)
        try:
            if queue == STATUS_QUEUE:  # declared with the topology on connect
                q = await channel.get_queue(STATUS_QUEUE, ensure=True)
            else:
                bound: dict[str, Any] = {"x-max-length": max_length, "x-overflow": "drop-head"}
                q = await (channel.declare_queue(None, exclusive=True, auto_delete=True,
                                                 arguments=bound) if queue is None else
                           channel.declare_queue(queue, durable=True, arguments={
                               "x-queue-type": "quorum", **bound}))
                for key in keys:
                    await q.bind(STATUS_EXCHANGE, routing_key=key)
            if ready is not None:
                ready()
            async with q.iterator() as messages:
                async for message in messages:
                    try:
                        event = parse_event(message.body, message.routing_key or "")
                    except ValueError as exc:
                        log.warning("skipped a message on %s that is not a status event: %s",
                                    message.routing_key, " ".join(str(exc).split())[:300])
                        await message.ack()
                        continue
                    yield event
                    await message.ack()
        finally:
            await asyncio.shield(_close_quietly(channel))

    # --- connection ---------------------------------------------------------------------

    async def close(self) -> None:
        await self._bus.close()

    async def __aenter__(self) -> Outbox:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


async def _close_quietly(channel: Any) -> None:
    try:
        await asyncio.wait_for(channel.close(), 5)
    except Exception:  # the connection may be gone already: the queue goes with it
        log.debug("events channel close failed", exc_info=True)


def _fields(**fields: Any) -> dict[str, Any]:
    """A job's fields: version 1, defaults left out (None and empty)."""
    return {"v": 1, **{k: (dict(v) if isinstance(v, Mapping) else v)
                       for k, v in fields.items() if v is not None}}


def _encode(data: Any) -> bytes:
    """JSON bytes of a job as the worker will read them; InvalidJob for what JSON cannot say
    (NaN/Infinity, an unknown type, a circular or over-deep structure, a lone surrogate)."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=_json_default)
        return text.encode()
    except ValueError as exc:
        if "float" in str(exc):
            raise InvalidJob("a number is out of range (not finite)", *_ids(data)) from None
        raise InvalidJob(f"not JSON: {exc}", *_ids(data)) from None
    except (TypeError, RecursionError) as exc:
        raise InvalidJob(f"not JSON: {exc}", *_ids(data)) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()  # naive: refused by validation (no time zone)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _ids(data: Any) -> tuple[str | None, str | None, str | None]:
    if not isinstance(data, dict):
        return None, None, None
    job_id, account_id, channel = (v if isinstance(v, str) else None
                                   for v in (data.get("id"), data.get("account_id"),
                                             data.get("channel")))
    return job_id, account_id, channel


def _validated(body: bytes, rules: Rules) -> Job:
    return validate(body, rules)


def sms_warnings(job: Job, *, max_segments: int = DEFAULT_RULES.sms_max_segments
                 ) -> tuple[str, ...]:
    """What an SMS job will cost that its text does not show (empty for other jobs): a
    character outside GSM-7 making the whole message UCS-2, the marketing footer (the
    account's sender information, unknown here, and the bilingual STOP line) making it UCS-2 or
    adding segments (:func:`sender.validation.sms_notes`)."""
    return sms_notes(job, max_segments=max_segments)


def _log_warnings(job: Job, rules: Rules) -> None:
    for note in sms_warnings(job, max_segments=rules.sms_max_segments):
        log.warning("job %s: %s", job.id, note, extra={
            "job_id": job.id, "account_id": job.account_id, "channel": job.channel})


def _guess_key(body: bytes) -> str:
    """Routing key for an unvalidated body: its channel's lane for its category when both
    are readable (marketing on ``<channel>.bulk``), else :func:`_guess_channel`'s."""
    channel = _guess_channel(body)
    try:
        category = json.loads(body).get("category")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return channel
    return registry.routing_key(channel, category if isinstance(category, str) else "")


def _guess_channel(body: bytes) -> str:
    """Routing key for an unvalidated body: its channel if readable and declared, else
    ``email`` (the worker dead-letters what it cannot parse)."""
    try:
        channel = json.loads(body).get("channel")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return channels.EMAIL.name
    return channel if channel in channels.names() else channels.EMAIL.name


__all__ = ["EVENTS_MAX_LENGTH", "CancelFailed", "CancelResult", "InvalidBatch", "InvalidJob",
           "Job", "Outbox", "PublishFailed", "PublishResult", "RecipientEvent", "Rules",
           "StatusEvent", "email_job", "routing_key", "sms_job", "sms_warnings"]
