"""Start-up and shutdown of one worker process: connections in, worker assembled and run,
connections out.

:func:`build_worker` is the one place the pieces are made and wired: one :class:`Gate` shared by
the pipeline and the provider-event applier, one Redis-call guard (hold and retry while Redis
is down) shared by both, the outage trackers and their watch (:mod:`sender.outages`), the
senders of the declared channels (:func:`sender.channels.registry.build_senders`), the metrics
and the gauges.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry

from config import Settings
from sender import frames, shaping, topology
from sender.acks import Acks
from sender.bus import Bus
from sender.channels.base import Channel
from sender.channels.registry import build_senders
from sender.connect import ping_redis, redis_client
from sender.gauges import Gauges
from sender.held import HeldJobs, HeldSweeper
from sender.metrics import Metrics
from sender.models import AttachmentLimits
from sender.outages import Dependencies, Watch
from sender.pipeline import REDIS_CALL_TIMEOUT, Pipeline, RedisCalls, RetryPolicy
from sender.provider_event_applier import EventApplier
from sender.recipient_events import PendingSweeper, RecipientEvents
from sender.schedule import Mover
from sender.settle import Settle
from sender.validation import Rules
from sender.worker import Worker
from suppression.coalesce import Coalescer
from suppression.gate import Gate
from suppression.held import HeldStore
from suppression.reputation import Policy
from suppression.roundtrip import Client, execute
from suppression.schedule import Schedule
from suppression.store import AccountStore, Audit, SuppressionStore

log = logging.getLogger("outbox.service")


def make_redis(settings: Settings, *, socket_timeout: float | None = 5.0) -> Client:
    """The Redis pool (hiredis parser when installed; a pool per node on a Redis Cluster,
    ``OUTBOX_REDIS_CLUSTER``); timeouts so an outage is noticed.

    The worker passes ``socket_timeout=None`` and bounds each whole call itself
    (``Pipeline.redis_call``): redis-py implements a socket timeout with ``wait_for``, a new
    task for every write, about 20 µs twice a job."""
    return redis_client(settings.redis_url.get_secret_value(), cluster=settings.redis_cluster,
                        socket_timeout=socket_timeout, socket_connect_timeout=5,
                        health_check_interval=15,
                        max_connections=max(64, settings.concurrency * 2))


def build_worker(settings: Settings, *, bus: Bus, redis: Client,
                 channels: dict[str, Channel], registry: CollectorRegistry,
                 dependencies: Dependencies | None = None) -> Worker:
    """The worker and everything it runs, wired together (no I/O). ``dependencies``: the
    process's outage trackers (made on ``registry`` when not given)."""
    metrics = Metrics(registry)
    dependencies = dependencies or Dependencies(registry)
    stop = asyncio.Event()
    if settings.shaping and "email" in channels:  # reply-driven shaping (sender.shaping)
        channels = {**channels, "email": shaping.build(
            settings, redis, channels["email"], metrics=metrics,
            publish=partial(_publish_ops, bus))}
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    policy = Policy.from_settings(settings)
    # the round trips of the jobs in flight share their writes (one per batch, not per job)
    send = Coalescer(partial(execute, redis), wait=settings.batch_wait_ms / 1000,
                     max_calls=settings.batch_max, timeout=REDIS_CALL_TIMEOUT)
    gate = Gate(redis, idempotency_ttl=settings.idempotency_ttl, policy=policy,
                sms_region=settings.sms_region, send=send,
                timeline_ttl=settings.timeline_ttl, history_ttl=settings.history_ttl,
                verp_key=settings.signing_key if settings.bounce_domain else None,
                require_senders=settings.require_verified_senders,
                own_sms_senders=(settings.twilio_from, settings.twilio_messaging_service_sid))
    redis_call = RedisCalls(metrics, stop.is_set, dependencies.redis)
    schedule = Schedule(redis, idempotency_ttl=settings.idempotency_ttl,
                        timeline_ttl=settings.timeline_ttl, send=send)
    # one settling object for the jobs, the events and the worker's guard; acks coalesced
    # per loop turn
    settle = Settle(bus, Acks())
    pipeline = Pipeline(
        bus=bus, gate=gate, channels=channels, metrics=metrics,
        retry=RetryPolicy(settings.retry_tiers, settings.retry_max_attempts,
                          settings.retry_max_age),
        max_job_bytes=settings.max_job_bytes, owner=worker_id, stopping=stop.is_set,
        redis_call=redis_call, held=HeldStore.from_settings(redis, settings), settle=settle,
        attachment_limits=AttachmentLimits(settings.max_attachments,
                                           settings.max_attachment_bytes),
        schedule=schedule, rules=Rules.from_settings(settings),
        shaping=getattr(channels.get("email"), "shaping", None))
    events = EventApplier(bus=bus, gate=gate, store=SuppressionStore(redis), redis=redis,
                          metrics=metrics, redis_call=redis_call, settle=settle,
                          sms_region=settings.sms_region,
                          recipients=RecipientEvents(redis, bus))
    gauges = Gauges(settings, bus=bus, accounts=AccountStore(redis, policy), metrics=metrics)
    # outbox_relay_up{relay}: the SMTP relays, and the SMS paths (twilio:<account>:<sender>)
    for watched in (getattr(channels.get("email"), "relays", None), channels.get("sms")):
        watch_paths = getattr(watched, "watch", None)
        if watch_paths is not None:
            watch_paths(lambda relay, up: metrics.relay_up.labels(relay).set(1 if up else 0))
    watch = Watch(dependencies, redis=redis, connection=lambda: bus.connection)
    return Worker(settings, bus=bus, redis=redis, pipeline=pipeline, events=events,
                  settle=settle, channels=channels, metrics=metrics, stop=stop,
                  worker_id=worker_id, gauges=gauges, watch=watch, mover=Mover(schedule, bus))


async def _publish_ops(bus: Bus, routing_key: str, event: dict[str, Any]) -> None:
    """An ops event (a destination paused) on ``outbox.status``, confirmed."""
    await bus.publish(topology.STATUS_EXCHANGE, routing_key, shaping.event_body(event),
                      message_id=event["id"])


def signing_email_channel(settings: Settings, redis: Client) -> Channel:
    """The email channel, its messages DKIM-signed (``OUTBOX_DKIM``) with the active keys of
    the account's verified domain covering the From domain, and (with a bounce domain) their
    VERP envelope sender at that domain's verified return path: both from one cached read of
    the domain (:mod:`sender.signing_keys`)."""
    from sender.channels import smtp
    from sender.dkim import DkimKey
    from sender.signing_keys import SigningKeys
    from suppression.domains import DomainStore

    lookup = SigningKeys(DomainStore.from_settings(redis, settings), DkimKey.from_sealed_pem,
                         keys=settings.dkim)
    return smtp.build(settings, keys_for=lookup, return_path_for=lookup.return_path)


@asynccontextmanager
async def started_worker(settings: Settings, registry: CollectorRegistry | None = None,
                         dependencies: Dependencies | None = None) -> AsyncIterator[Worker]:
    """A worker with its own Redis pool, bus and channels, consuming; on exit it stops
    (draining within the grace) and everything is closed. ``dependencies``: the process's
    outage trackers when it runs more than the worker (``outbox run``)."""
    frames.install()  # AMQP frames already whole read at once (sender.frames)
    redis = make_redis(settings, socket_timeout=None)
    try:  # fail fast, in one line, on a bad URL or a Redis that is not there
        await ping_redis(redis, settings.redis_url.get_secret_value())
    except BaseException:
        await redis.aclose()
        raise
    bus = Bus.from_settings(settings)
    channels: dict[str, Channel] = {}
    worker: Worker | None = None
    # recipient events whose publisher died after claiming them (sender.recipient_events)
    sweeper = PendingSweeper(RecipientEvents(redis, bus))
    held_sweeper: HeldSweeper | None = None  # jobs held too long end expired
    try:
        await bus.connect(declare=True)
        channels = build_senders(settings, built={"email": signing_email_channel(settings,
                                                                                 redis)})
        worker = build_worker(settings, bus=bus, redis=redis, channels=channels,
                              registry=registry or CollectorRegistry(),
                              dependencies=dependencies)
        await worker.start()
        sweeper.start()
        held_sweeper = HeldSweeper(
            HeldJobs(HeldStore.from_settings(redis, settings), bus, Audit(redis),
                     worker.metrics), worker.metrics,
            HeldSweeper.period_for(settings.hold_seconds))
        held_sweeper.start()
        log.info("worker %s started (%s)", worker.worker_id, ", ".join(channels))
        yield worker
    finally:
        await sweeper.stop()
        if held_sweeper is not None:
            await held_sweeper.stop()
        if worker is not None:
            log.info("stopping: %d jobs in flight", worker.inflight)
            await worker.stop()
            await worker.close()
        # the worker's own channels: the e-mail one wrapped with shaping, whose close also
        # ends the shaping's background refresh (closing the unwrapped channel left that
        # task running past the worker)
        for channel in (worker.channels if worker is not None else channels).values():
            await channel.close()
        await bus.close()
        await redis.aclose()
        log.info("worker stopped")


#: the garbage collector's thresholds in a worker process once it runs (gen0, gen1, gen2).
#: Python's (700, 10, 10) collected the young generation about 150 times a second at 1,000
#: jobs/s, and the whole heap every few seconds: 11 % of the worker's CPU, pauses up to 53 ms
#: (``python -m benchmarks.inproc`` with gc.callbacks timing). Almost everything a job
#: allocates is freed by reference counting; the cycles it leaves are few and small.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """For a process that runs one worker (``outbox worker``, a supervisor's child), after
    start-up: what start-up allocated (modules, settings, pools) moves to the permanent
    generation, never scanned again (``gc.freeze``), and collections are rarer
    (:data:`GC_THRESHOLDS`). Not in ``started_worker``: a test process runs many."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run_worker(settings: Settings, stop: asyncio.Event,
                     registry: CollectorRegistry | None = None) -> None:
    """Run a worker until ``stop`` is set, then drain and close everything. This process
    runs nothing else: its garbage collector is tuned for the worker (:func:`tune_gc`)."""
    async with started_worker(settings, registry):
        tune_gc()
        await stop.wait()
