"""The worker's periodic gauges: ``outbox_accounts{state}``, ``outbox_queue_depth{queue}`` and
``outbox_queue_limit{queue,unit}``
(every worker reports the same totals; the Prometheus rules take the max)."""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractChannel

from config import Settings
from sender import topology
from sender.bus import Bus
from sender.metrics import Metrics
from sender.periodic import Periodic
from suppression.store import AccountStore

log = logging.getLogger("outbox.worker")
ACCOUNTS_GAUGE_PERIOD = 30.0  # seconds between refreshes of outbox_accounts{state}
#: seconds for closing its broker channel: a robust channel waits for the broker forever
BROKER_CALL_TIMEOUT = 5.0


class Gauges(Periodic):
    """Refreshes the gauges at the start, then every :data:`ACCOUNTS_GAUGE_PERIOD` seconds
    until stopped; a failed refresh is logged at DEBUG only (an outage: the pipeline reports
    it)."""

    name = "gauges"
    log = log
    turn_at_start = True
    failure_level = logging.DEBUG

    def __init__(self, settings: Settings, *, bus: Bus, accounts: AccountStore,
                 metrics: Metrics) -> None:
        super().__init__(ACCOUNTS_GAUGE_PERIOD)
        self._settings = settings
        self._bus = bus
        self._accounts = accounts
        self._metrics = metrics
        self._channel: AbstractChannel | None = None

    async def close(self) -> None:
        if self._channel is not None:
            try:
                await asyncio.wait_for(self._channel.close(), BROKER_CALL_TIMEOUT)
            except Exception as exc:
                log.debug("closing channel: %s", exc)
            self._channel = None

    async def turn(self) -> None:
        """One refresh of every gauge, bounded by the period."""
        async with asyncio.timeout(ACCOUNTS_GAUGE_PERIOD):
            for state, count in (await self._accounts.count_by_state()).items():
                self._metrics.accounts.labels(state).set(count)
            await self.queue_depths()

    async def queue_depths(self) -> None:
        """Set ``outbox_queue_depth`` of every queue of the topology (one pass)."""
        # A channel of its own (a failed passive declare closes its channel), used through
        # the raw aiormq channel so the robust layer does not collect a queue per call.
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._bus.channel(1)
        raw = await self._channel.get_underlay_channel()
        _, queues = topology.describe(self._settings.retry_tiers,
                                      self._settings.status_queue_max_length)
        for q in queues:
            ok = await raw.queue_declare(q.name, passive=True)
            self._metrics.queue_depth.labels(q.name).set(ok.message_count or 0)
            bound = topology.limits(q)
            if bound:
                self._metrics.queue_limit.labels(q.name, "messages").set(bound[0])
                self._metrics.queue_limit.labels(q.name, "bytes").set(bound[1])
