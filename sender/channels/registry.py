"""The delivery channels, each declared once: what the worker needs on top of
:mod:`suppression.channels` (name, address kind, opt-out reason).

A :class:`Delivery` is the channel, its job model (a :class:`sender.models.JobBase` with
``channel: Literal["<name>"]``), its queue and the factory of its sender (``None`` when the
settings do not configure it: its jobs wait in its queues). Each channel has two lanes derived
from that one queue name (docs/design.md, "Priority lanes"): the priority lane ``<queue>`` bound
with routing key ``<name>`` (transactional and notification jobs) and the bulk lane
``<queue>.bulk`` bound with ``<name>.bulk`` (marketing jobs, :data:`BULK_CATEGORIES`). The
topology, the job parser, the client's routing and the worker's consumers all read this list;
:func:`declare` also declares the channel in :mod:`suppression.channels`, so the keys, the Lua
scripts, the CLI and the admin API know it.

Adding a channel (README, "Adding a channel"): a module ``sender/channels/<name>.py`` with its
job model, its sender (:class:`sender.channels.base.Channel`) and ``build(settings)``, and one
``declare`` line below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from config import Settings
from sender import models
from sender.channels import smtp, twilio
from sender.channels.base import Channel as Sender
from sender.models import BULK_CATEGORIES, EmailJob, JobBase, SmsJob
from suppression import channels
from suppression.channels import Channel

log = logging.getLogger("outbox.channels")

#: The lanes of every channel, in the order the worker serves them.
PRIORITY, BULK = "priority", "bulk"
LANES = (PRIORITY, BULK)


def lane_of(category: str) -> str:
    """The lane a job of ``category`` is published on."""
    return BULK if category in BULK_CATEGORIES else PRIORITY


@dataclass(frozen=True, slots=True)
class Delivery:
    """One channel as the worker sees it."""

    channel: Channel
    job: type[JobBase]
    queue: str
    build: Callable[[Settings], Sender | None]

    @property
    def name(self) -> str:
        """The channel's name: its jobs' ``channel`` and their priority lane's routing key."""
        return self.channel.name

    def routing_key(self, lane: str = PRIORITY) -> str:
        """``email`` / ``email.bulk``: the key of one lane (a channel name has no ``.``)."""
        return self.name if lane == PRIORITY else f"{self.name}.{lane}"

    def lane_queue(self, lane: str = PRIORITY) -> str:
        """``outbox.email`` / ``outbox.email.bulk``: the queue of one lane."""
        return self.queue if lane == PRIORITY else f"{self.queue}.{lane}"

    def lanes(self) -> tuple[tuple[str, str, str], ...]:
        """(lane, routing key, queue) of both lanes, priority first."""
        return tuple((lane, self.routing_key(lane), self.lane_queue(lane)) for lane in LANES)


_DECLARED: dict[str, Delivery] = {}
_ADAPTER: dict[tuple[type[JobBase], ...], TypeAdapter[JobBase]] = {}


def declare(delivery: Delivery) -> Delivery:
    """Add a channel (and declare it in :mod:`suppression.channels`)."""
    channels.declare(delivery.channel)
    _DECLARED[delivery.name] = delivery
    return delivery


def withdraw(name: str) -> None:
    """Forget a channel here and in :mod:`suppression.channels` (a test's throwaway one)."""
    _DECLARED.pop(name, None)
    channels.withdraw(name)


def deliveries() -> tuple[Delivery, ...]:
    """Every declared channel, in declaration order."""
    return tuple(_DECLARED.values())


def get(name: str) -> Delivery:
    """The channel called ``name`` (``KeyError`` when there is none)."""
    return _DECLARED[name]


def queues() -> dict[str, str]:
    """Each channel's priority queue."""
    return {d.name: d.queue for d in _DECLARED.values()}


def routing_key(channel: str, category: str) -> str:
    """The key a job of ``channel`` and ``category`` is published (and retried) with:
    ``email`` or, for marketing, ``email.bulk``."""
    return get(channel).routing_key(lane_of(category))


def parse_job(body: bytes, *, max_bytes: int,
              attachment_limits: models.AttachmentLimits | None = None) -> JobBase:
    """Decode and validate one job of any declared channel; raise
    :class:`sender.models.InvalidJob` with a readable reason. ``attachment_limits``: the
    settings' (default :data:`sender.models.ATTACHMENT_LIMITS`)."""
    data = models.load(body, max_bytes=max_bytes)
    job_models = tuple(d.job for d in _DECLARED.values())
    adapter = _ADAPTER.get(job_models)
    if adapter is None:
        adapter = _ADAPTER[job_models] = models.job_adapter(job_models)
    try:
        return adapter.validate_python(data, context={"attachment_limits": attachment_limits})
    except ValidationError as exc:
        raise models.invalid(exc, data) from None


def build_senders(settings: Settings, *, built: Mapping[str, Sender] | None = None
                  ) -> dict[str, Sender]:
    """The senders the settings configure, by channel; ``built``: senders the caller made
    itself (the worker's email channel, with the DKIM keys of the domain store)."""
    senders: dict[str, Sender] = {}
    for d in _DECLARED.values():
        sender = (built or {}).get(d.name) or d.build(settings)
        if sender is None:
            log.warning("channel %s is not configured: its jobs wait in %s and %s",
                        d.name, d.queue, d.lane_queue(BULK))
        else:
            senders[d.name] = sender
    return senders


EMAIL = declare(Delivery(channels.EMAIL, EmailJob, "outbox.email", smtp.build))
SMS = declare(Delivery(channels.SMS, SmsJob, "outbox.sms", twilio.build))
