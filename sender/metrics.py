"""Prometheus metrics of the worker (DESIGN.md "Metrics"); the registry is injected."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)


class Metrics:
    """The worker's collectors, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.jobs = Counter("outbox_jobs_total", "Jobs by final or intermediate status",
                            ["channel", "status"], registry=registry)
        self.send_seconds = Histogram("outbox_send_seconds", "Time to hand one message over",
                                      ["channel", "provider"], buckets=_SEND_BUCKETS,
                                      registry=registry)
        self.provider_replies = Counter("outbox_provider_replies_total",
                                        "Provider replies by classified kind",
                                        ["provider", "kind"], registry=registry)
        self.retries = Counter("outbox_retries_total", "Jobs parked in a delay tier",
                               ["channel", "tier"], registry=registry)
        self.inflight = Gauge("outbox_inflight", "Jobs being processed now", ["channel"],
                              registry=registry)
        self.redis_seconds = Histogram("outbox_redis_seconds", "Redis round-trip time",
                                       buckets=_REDIS_BUCKETS, registry=registry)
        self.provider_events = Counter("outbox_provider_events_total",
                                       "Provider events applied by the worker",
                                       ["provider", "type", "result"], registry=registry)
        self.sms_segments = Counter("outbox_sms_segments_total",
                                    "SMS segments handed to the provider",
                                    ["encoding"], registry=registry)
        self.duplicates = Counter("outbox_duplicate_deliveries_total",
                                  "Deliveries not sent because the job id was already taken",
                                  ["channel", "verdict"], registry=registry)
        self.account_transitions = Counter("outbox_account_transitions_total",
                                           "Automatic account state changes seen by this worker",
                                           ["from", "to"], registry=registry)
        self.queue_depth = Gauge("outbox_queue_depth", "Messages ready in each queue",
                                 ["queue"], registry=registry)
        self.accounts = Gauge("outbox_accounts", "Accounts by state (refreshed periodically)",
                              ["state"], registry=registry)
