"""Prometheus metrics of the worker (README, "Metrics"); the registry is injected.

Several worker processes (``outbox worker --processes N``) write their values to files in
``PROMETHEUS_MULTIPROC_DIR``, which the supervisor serves summed on one ``/metrics``
(prometheus_client's multiprocess mode; counters and histograms are summed over the
processes, dead ones included, so they never go back). Each gauge says how its processes'
values combine (``multiprocess_mode``; ``live``: a process's value goes when it exits): jobs
in flight add up (``livesum``); the queue depths and account counts are the same totals seen
by every process, so the latest reading is shown (``livemostrecent``). One process alone
ignores it."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)

#: The account state changes the post-send script makes by itself (post_send.lua). Their
#: ``outbox_account_transitions_total`` series are exposed at 0 from the start: a series born
#: at 1 gives ``increase()`` nothing to compare, and the first block after a start went
#: unalerted (deploy/prometheus/outbox-rules.yml, OutboxAccountBlocked).
AUTOMATIC_TRANSITIONS = (("active", "throttled"), ("active", "blocked"),
                         ("throttled", "active"), ("throttled", "blocked"),
                         ("active", "warning"), ("warning", "throttled"),
                         ("warning", "blocked"), ("warning", "active"),
                         ("throttled", "warning"))


class _Cached:
    """A labelled collector whose ``labels()`` children are kept in a dict: prometheus_client
    resolves them under a lock on every call, a dozen times a job."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


class Metrics:
    """The worker's collectors, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.jobs = _Cached(Counter("outbox_jobs_total", "Jobs by final or intermediate status",
                            ["channel", "status"], registry=registry))
        self.send_seconds = _Cached(Histogram("outbox_send_seconds",
                                              "Time to hand one message over",
                                              ["channel", "provider"], buckets=_SEND_BUCKETS,
                                              registry=registry))
        self.provider_replies = _Cached(Counter("outbox_provider_replies_total",
                                        "Provider replies by classified kind",
                                        ["provider", "kind"], registry=registry))
        self.retries = _Cached(Counter("outbox_retries_total", "Jobs parked in a delay tier",
                               ["channel", "tier"], registry=registry))
        self.inflight = _Cached(Gauge("outbox_inflight", "Jobs being processed now", ["channel"],
                              registry=registry, multiprocess_mode="livesum"))
        self.redis_seconds = Histogram("outbox_redis_seconds", "Redis round-trip time",
                                       buckets=_REDIS_BUCKETS, registry=registry)
        self.provider_events = _Cached(Counter("outbox_provider_events_total",
                                       "Provider events applied by the worker",
                                       ["provider", "type", "result"], registry=registry))
        self.sms_segments = _Cached(Counter("outbox_sms_segments_total",
                                    "SMS segments handed to the provider",
                                    ["encoding"], registry=registry))
        self.duplicates = _Cached(Counter("outbox_duplicate_deliveries_total",
                                  "Deliveries not sent because the job id was already taken",
                                  ["channel", "verdict"], registry=registry))
        self.account_transitions = _Cached(Counter("outbox_account_transitions_total",
                                           "Automatic account state changes seen by this worker",
                                           ["from", "to"], registry=registry))
        for from_state, to_state in AUTOMATIC_TRANSITIONS:
            self.account_transitions.labels(from_state, to_state)
        self.queue_depth = _Cached(Gauge("outbox_queue_depth", "Messages ready in each queue",
                                 ["queue"], registry=registry,
                                 multiprocess_mode="livemostrecent"))
        self.queue_limit = _Cached(Gauge("outbox_queue_limit", "Bound of each queue, in "
                                         "messages or bytes (x-max-length, "
                                         "x-max-length-bytes)", ["queue", "unit"],
                                         registry=registry,
                                         multiprocess_mode="livemostrecent"))
        #: 1 while a relay of OUTBOX_SMTP_URL (or an SMS path, twilio:<account>:<sender>) is
        #: up, 0 while it is marked down (its traffic on the next); over processes the lowest
        #: (down when any process finds it down)
        self.relay_up = _Cached(Gauge("outbox_relay_up", "1: the relay is up; 0: marked down, "
                                      "its traffic on the next relay", ["relay"],
                                      registry=registry, multiprocess_mode="livemin"))
        #: reply-driven shaping (sender.shaping): 1 on each destination's state; over
        #: processes the highest (slowed or paused when any process finds it so)
        self.destination_state = _Cached(Gauge(
            "outbox_destination_state", "1 on a destination's current shaping state (normal, "
            "slowed, paused), per provider group and relay", ["destination", "relay", "state"],
            registry=registry, multiprocess_mode="livemax"))
        self.destination_cuts = _Cached(Counter(
            "outbox_destination_cuts", "Slow-down replies that cut a destination's rate (or "
            "paused it)", ["destination", "relay"], registry=registry))
        self.accounts = _Cached(Gauge("outbox_accounts",
                                      "Accounts by state (refreshed periodically)",
                                      ["state"], registry=registry,
                                      multiprocess_mode="livemostrecent"))
        # totals over every account (per account: outbox accounts held, the admin API)
        self.held_jobs = _Cached(Gauge("outbox_held_jobs",
                                       "Jobs held while their account is blocked or "
                                       "suspended, over every account (refreshed by the "
                                       "held jobs sweep)", ["channel", "category"],
                                       registry=registry,
                                       multiprocess_mode="livemostrecent"))
