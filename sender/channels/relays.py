"""Several relays behind ``OUTBOX_SMTP_URL`` (comma-separated, in order of preference): the
first is the primary, the others carry its traffic only while it is down.

:class:`Relays` keeps a :class:`~sender.channels.smtp.SmtpPool` per relay and sends each
message through the first relay that is up. A relay is marked down when a connection to it
cannot be opened (refused, timed out, a greeting other than 220, TLS or AUTH failing:
:class:`~sender.channels.smtp.RelayUnavailable`); the message then goes to the next relay at
once, and so does every later one, until a probe (a connection and QUIT every
``OUTBOX_SMTP_RELAY_PROBE_INTERVAL`` seconds) finds it up again. Each change is one WARNING
line of ``outbox.smtp`` and the gauge ``outbox_relay_up{relay}`` (``host:port``).

A message is never sent twice because of a failover:

* only a send that certainly did not hand the message over moves on: one whose connection
  could not be opened, or whose connection was lost or timed out before the end of the
  message was written (a relay takes a message only at the final "."). Such a send is tried
  once more on the same relay with a fresh connection (an idle connection may have been closed
  under it), and that connection's failure marks the relay down;
* the known ambiguity, the whole message written and then no reply (the connection lost, or
  ``OUTBOX_SMTP_DATA_TIMEOUT``): :class:`~sender.channels.base.OutcomeUnknown` is raised as it
  is, never retried on another relay by this class. The pipeline handles it as it always has
  with one relay: the job is returned to its queue as after a crash, and sent again (through
  whichever relay is up then) only on that redelivery, at most ``UNKNOWN_DELIVERIES`` times,
  then ends ``failed`` (:mod:`sender.pipeline`). A relay killed mid-DATA can therefore cause
  at most one extra copy per message in flight on it, exactly as without a fallback;
* an SMTP reply (4xx, 5xx) is the relay's answer, classified as always, and moves nothing.

``OUTBOX_SMTP_ROUTES`` (``marketing=2``) gives a job category its own first relay, and
``OUTBOX_SMTP_ACCOUNT_ROUTES`` (``acct_bank=2``) an account (over its category's); the others,
in their order, are its fallbacks, with the same rules.

When every relay is down each send tries them all in order (the error of the last is the
send's: a ``transient/networkerror`` deferral, as with one relay down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aiosmtplib.errors import SMTPServerDisconnected, SMTPTimeoutError

from sender.channels.base import OutcomeUnknown
from sender.channels.smtp import RelayUnavailable, SmtpPool

log = logging.getLogger("outbox.smtp")

#: ``watcher(relay, up)``: told of every relay at start and of each change
RelayWatcher = Callable[[str, bool], None]
#: a connection lost or timed out before the message's end went out: not handed over
_NOT_HANDED_OVER = (SMTPServerDisconnected, SMTPTimeoutError)


@dataclass(eq=False)
class Relay:
    """One relay: its pool and whether it is up."""

    name: str
    pool: SmtpPool
    up: bool = True
    down_since: float = 0.0
    why: str = ""
    probe: asyncio.Task[None] | None = field(default=None, repr=False)


class Relays:
    """Pools to the relays of ``OUTBOX_SMTP_URL``, with failover; the interface of
    :class:`~sender.channels.smtp.SmtpPool` (``send``, ``stop``, ``close``)."""

    def __init__(self, pools: Sequence[SmtpPool], *, probe_interval: float = 15.0,
                 routes: Mapping[str, int] | None = None,
                 account_routes: Mapping[str, int] | None = None) -> None:
        """``routes``: per job category, the index of the relay its mail goes through first
        (the others follow in their order); ``account_routes`` the same per account, over
        the category's."""
        if not pools:
            raise ValueError("no relay")
        self.relays = [Relay(pool.name, pool) for pool in pools]
        self._orders = {category: self._order(at) for category, at in (routes or {}).items()}
        self._account_orders = {account: self._order(at)
                                for account, at in (account_routes or {}).items()}
        self._probe_interval = probe_interval
        self._watchers: list[RelayWatcher] = []
        self._stopped = False

    def _order(self, first: int) -> list[Relay]:
        return [self.relays[first]] + [r for i, r in enumerate(self.relays) if i != first]

    def watch(self, watcher: RelayWatcher) -> None:
        """Call ``watcher(relay, up)`` now for every relay and then on each change."""
        self._watchers.append(watcher)
        for relay in self.relays:
            watcher(relay.name, relay.up)

    def up(self) -> list[str]:
        """The relays up now, in order of preference."""
        return [r.name for r in self.relays if r.up]

    def route(self, category: str | None = None, account_id: str | None = None) -> str:
        """The relay a send of ``account_id`` and ``category`` goes through now (the first up
        in its order; the first of all when none is up): the relay part of a shaping
        destination."""
        order = self._order_for(category, account_id)
        return next((r.name for r in order if r.up), order[0].name)

    def _order_for(self, category: str | None, account_id: str | None) -> list[Relay]:
        """``account_id``'s route, else ``category``'s, else the configured order."""
        return self._account_orders.get(account_id or "") or \
            self._orders.get(category or "", self.relays)

    async def send(self, envelope_from: str, recipients: list[str], data: bytes,
                   *, smtputf8: bool = False, first: bool = False, stuffed: bool = False,
                   category: str | None = None, account_id: str | None = None) -> str:
        """Send through the first relay up, in the order of ``account_id``'s route,
        ``category``'s or the configured one (every relay in that order when none is up);
        the exceptions of :meth:`SmtpPool.send`, a :class:`RelayUnavailable` only when no
        relay could be reached."""
        order = self._order_for(category, account_id)
        candidates = [r for r in order if r.up] or list(order)
        last: RelayUnavailable | None = None
        for relay in candidates:
            try:
                return await self._through(relay, envelope_from, recipients, data,
                                           smtputf8=smtputf8, first=first, stuffed=stuffed)
            except RelayUnavailable as exc:
                self._down(relay, exc)
                last = exc
        assert last is not None
        raise last

    async def _through(self, relay: Relay, envelope_from: str, recipients: list[str],
                       data: bytes, **options: bool) -> str:
        """One relay: a connection lost before the message's end was written is tried once
        more with a fresh connection (whose failure to open is the relay's)."""
        try:
            return await relay.pool.send(envelope_from, recipients, data, **options)
        except OutcomeUnknown:
            raise
        except _NOT_HANDED_OVER as exc:
            if len(self.relays) == 1:
                raise
            log.info("relay %s: connection lost before the message went out (%s: %s); "
                     "trying a fresh connection", relay.name, type(exc).__name__, exc,
                     extra={"relay": relay.name})
            return await relay.pool.send(envelope_from, recipients, data, **options)

    def _down(self, relay: Relay, exc: RelayUnavailable) -> None:
        if not relay.up:
            return
        relay.up, relay.down_since, relay.why = False, time.monotonic(), exc.why
        rest = self.up()
        log.warning("relay %s is down (%s); its traffic goes to %s until a probe finds it up",
                    relay.name, exc.why, rest[0] if rest else "no relay (none is up)",
                    extra={"relay": relay.name, "detail": exc.why})
        self._tell(relay)
        if not self._stopped:
            relay.probe = asyncio.get_running_loop().create_task(self._probe(relay))

    async def _probe(self, relay: Relay) -> None:
        """Open a connection to ``relay`` every probe interval until one opens: it is up."""
        while not self._stopped:
            await asyncio.sleep(self._probe_interval)
            try:
                await relay.pool.probe()
            except RelayUnavailable as exc:
                relay.why = exc.why
                log.debug("relay %s still down: %s", relay.name, exc.why)
                continue
            relay.up, relay.probe = True, None
            log.warning("relay %s is up again after %.1f s; its traffic returns to it",
                        relay.name, time.monotonic() - relay.down_since,
                        extra={"relay": relay.name})
            self._tell(relay)
            return

    def _tell(self, relay: Relay) -> None:
        for watcher in self._watchers:
            watcher(relay.name, relay.up)

    def stop(self) -> None:
        """Shutdown begins: every pool stops (sends not yet in a transaction raise NotSent)."""
        self._stopped = True
        for relay in self.relays:
            relay.pool.stop()

    async def close(self) -> None:
        """End the probes and QUIT every idle connection."""
        self._stopped = True
        probes = [r.probe for r in self.relays if r.probe is not None]
        for task in probes:
            task.cancel()
        for task in probes:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(r.pool.close() for r in self.relays))
