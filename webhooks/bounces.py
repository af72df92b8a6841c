"""``outbox bounces``: an SMTP listener for the bounces of a self-run relay.

Point the MX of ``OUTBOX_BOUNCE_DOMAIN`` here. Anyone on the Internet can connect, so what a
message says is believed only when it proves it concerns a message we sent, and only as far
as its proof goes (``ProviderEvent.trust``):

* (a) ``signed``: it comes to a correctly signed VERP address (:mod:`suppression.verp`; any
  key of ``OUTBOX_SECRET_KEY`` verifies): ``bounce+<account>+<job>+<sig>@<domain>``, or
  ``bounce+r=<ref>@<domain>`` whose ref record (``outbox:verp:<ref>``) names the job and whose
  ref is the HMAC of it. The same addresses are accepted at the return-path subdomain
  (``bounces.<domain>``, a CNAME to the bounce domain) of a sending domain verified for the
  account the address names, where the worker sends that domain's mail from
  (:func:`suppression.domains.verified_return_path`); at any other account's, 550 at RCPT.
  Applied in full: the job's status, the account's rates, a global
  suppression for a hard bounce or complaint;
* (b) ``quoted``: without a VERP address, it quotes our
  ``Message-ID: <job@OUTBOX_MESSAGE_ID_DOMAIN>`` and ``X-Outbox-Account`` of that job. Both
  are in every copy the recipient holds, so this proves only that someone who saw the message
  wrote it: the worker suppresses that recipient for that account alone and counts nothing
  (``sender.provider_event_applier``). The event carries its evidence (``raw.evidence``: what
  was quoted, the peer, MAIL FROM, RCPT TO), and its id differs from a signed report's of the
  same bounce, so a forged quote sent first cannot make the genuine bounce look like a repeat;

and in both cases every recipient the report names is the job's own: the job hash must show
the job handed over (``gate.HANDED_OVER``) for exactly that recipient (``rc``, written on the
claim). A signed address is no proof about the recipient (every recipient of our mail sees
its own VERP address), so (a) checks it too; a job whose record has expired cannot be checked
and is not believed. Believed reports are published to ``outbox.events`` (one event per
recipient, its id derived from the job, recipient, type and trust: a report repeated is
applied once) and only then accepted (250).

Anything else changes NOTHING: a message that is not a report, a VERP address without a
correct signature, a Message-ID that is not ours or of a job not sent to the recipient named,
no attribution at all. It is accepted (250, so nobody retries it), kept as evidence on
``outbox.dead`` (its first :data:`EVIDENCE_BYTES`; ``x-outbox-reason`` says why and whether
it was cut), counted in ``outbox_bounces_total{result}`` and logged with one WARNING line.

At the SMTP level: recipients outside the bounce domain get 550 5.1.1 at RCPT, but for a
correctly signed VERP address at a return-path subdomain of its own account (checked at RCPT:
one Redis HGET, and a GETEX for the referenced form; 451 while Redis cannot answer); at most
:data:`MAX_RECIPIENTS` per message; ``SIZE`` is ``OUTBOX_BOUNCES_MAX_BYTES`` (552 above it);
each connection and each message takes a token from its peer IP's bucket
(``OUTBOX_BOUNCES_RATE``/``OUTBOX_BOUNCES_BURST``; 421 and close, or 450, when empty). Every
4xx/5xx reply is logged (one line) and counted (``refused`` for 5xx, ``deferred`` for 4xx).
When the broker or Redis cannot be reached the answer is 451 and the relay retries.

Reading costs the event loop nothing (:mod:`webhooks.bounce_work`): each message is read in a
reader process, from at most its first ``OUTBOX_BOUNCES_SCAN_BYTES`` (a message whose headers
and parts say nothing of a report from its first 16 KiB only), within
``OUTBOX_BOUNCES_READ_TIMEOUT`` (past it: kept as ``not_report``, the reader restarted). Each
peer IP has a work budget over ``OUTBOX_BOUNCES_SOURCE_WINDOW`` seconds: message bytes
(``OUTBOX_BOUNCES_SOURCE_BYTES``) and reading CPU seconds (``OUTBOX_BOUNCES_SOURCE_CPU``); past
either, 450 at MAIL and at the end of DATA until it has drained. A connection is closed (421)
after ``OUTBOX_BOUNCES_IDLE_TIMEOUT`` seconds without a command, ``OUTBOX_BOUNCES_DATA_TIMEOUT``
from DATA to the end of the message, and ``OUTBOX_BOUNCES_CONNECTION_TIMEOUT`` in all.

``result``: ``accepted`` (signed), ``quoted`` (believed as the recipient's own word only),
``not_report``, ``unattributed``, ``refused``, ``deferred``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from config import Settings
from sender.bus import Bus, PublishFailed, QueueFull
from sender.provider_events import QUOTED, SIGNED, ProviderEvent
from suppression.domains import RETURN_PATH_LABEL, is_return_path_of
from suppression.gate import sent_to
from suppression.roundtrip import Client
from suppression.verp import is_verp, parse_ref, ref_ttl, resolve_ref, verify_verp
from webhooks.bounce_work import (
    ReaderPool,
    ReaderUnavailable,
    ReadTimeout,
    SourceBudget,
    WorkLimits,
)
from webhooks.provider_event_publisher import publish_events
from webhooks.providers.base import safe_id

log = logging.getLogger("outbox.bounces")

EVIDENCE_BYTES = 256 * 1024  # what outbox.dead keeps of a message that is not believed
MAX_RECIPIENTS = 10  # a report goes to one address; a few for relays that batch
RESULTS = ("accepted", "quoted", "not_report", "unattributed", "refused", "deferred")
TRY_LATER = "451 4.3.0 Temporary failure, try again later"
OVER_BUDGET = "450 4.7.1 Too much mail to read from your address, try again later"


class Unbelieved(Exception):
    """The report does not prove it concerns a message we sent; the message says why."""


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """What the listener needs from the settings."""

    domain: str
    keys: tuple[str, ...]
    message_id_domain: str
    max_bytes: int = 2 * 1024 * 1024
    #: a referenced VERP address's record is refreshed to this when a report resolves it
    ref_ttl: int = ref_ttl(3 * 86400)
    rate: float = 2.0
    burst: int = 60
    work: WorkLimits = WorkLimits()

    @classmethod
    def from_settings(cls, settings: Settings) -> ListenerConfig:
        """ValueError when ``OUTBOX_BOUNCE_DOMAIN`` is not set: nothing could be accepted."""
        if not settings.bounce_domain:
            raise ValueError("OUTBOX_BOUNCE_DOMAIN is not set: the bounce listener accepts "
                             "mail only for that domain")
        return cls(domain=settings.bounce_domain.lower(), keys=settings.secret_keys,
                   message_id_domain=settings.message_id_domain,
                   max_bytes=settings.bounces_max_bytes, rate=settings.bounces_rate,
                   burst=settings.bounces_burst, work=WorkLimits.from_settings(settings),
                   ref_ttl=ref_ttl(settings.idempotency_ttl))


class PeerBuckets:
    """An in-memory token bucket per peer IP (the least recently seen forgotten past
    ``max_peers``)."""

    def __init__(self, rate: float, burst: int, *, max_peers: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._max = rate, float(burst), max_peers
        self._clock = clock
        self._peers: dict[str, tuple[float, float]] = {}  # ip -> (tokens, at); oldest first

    def take(self, peer: str) -> bool:
        """Take a token for ``peer``; False when it has none left."""
        now = self._clock()
        tokens, at = self._peers.pop(peer, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        allowed = tokens >= 1
        self._peers[peer] = (tokens - 1 if allowed else tokens, now)
        if len(self._peers) > self._max:
            del self._peers[next(iter(self._peers))]
        return allowed


class BounceMetrics:
    """``outbox_bounces_total{result}``, ``outbox_bounces_read_cpu_seconds_total``,
    ``outbox_queue_refused_total{queue}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter("outbox_bounces_total", "Bounce listener messages and "
                                "refusals by result", ["result"], registry=registry)
        for result in RESULTS:
            self.messages.labels(result)
        self.read_cpu = Counter("outbox_bounces_read_cpu_seconds", "CPU seconds the bounce "
                                "listener's readers spent reading messages", registry=registry)
        self.refused = Counter("outbox_queue_refused", "Publishes a full queue refused (nack)",
                               ["queue"], registry=registry)

    def count(self, result: str) -> None:
        self.messages.labels(result).inc()


def _event_id(account: str, job: str, event: ProviderEvent, trust: str) -> str:
    """Stable for the same report; a quoted report's differs from the signed one's of the
    same bounce (a forged quote must not pre-empt the genuine bounce as a "repeat")."""
    seed = f"{account}|{job}|{event.recipient}|{event.type}"
    if trust != SIGNED:
        seed += f"|{trust}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def _peer_ip(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "unknown")


class BounceHandler:
    """aiosmtpd handler: refuse what is not for us, believe only what proves itself."""

    def __init__(self, config: ListenerConfig, *, bus: Bus, redis: Client,
                 metrics: BounceMetrics, buckets: PeerBuckets, readers: ReaderPool,
                 budget: SourceBudget) -> None:
        self._config = config
        self._bus = bus
        self._redis = redis
        self._metrics = metrics
        self._buckets = buckets
        self._readers = readers
        self._budget = budget
        self._message_id = re.compile(
            rf"^<([A-Za-z0-9][A-Za-z0-9._\-]{{0,127}})@{re.escape(config.message_id_domain)}>$",
            re.IGNORECASE)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not self._buckets.take(_peer_ip(session.peer)):
            return "450 4.7.1 Too many messages from your address, try again later"
        if not self._budget.allows(_peer_ip(session.peer)):
            return OVER_BUDGET
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.rpartition("@")[2].lower() != self._config.domain:
            try:  # a return-path subdomain: only a signed address of that domain's account
                ours = await self._attribute(address) is not None
            except (RedisError, OSError) as exc:
                log.warning("return-path address not checked (Redis): %s", exc)
                return TRY_LATER
            if not ours:
                return (f"550 5.1.1 <{address}>: Recipient address rejected: not a bounce "
                        "address")
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        peer = _peer_ip(session.peer)
        if not self._budget.allows(peer):
            return OVER_BUDGET  # read nothing more from it; the sender keeps the message
        self._budget.charge(peer, nbytes=len(raw))
        if isinstance(server, ListenerSMTP):
            server.working(self._config.work.read_timeout + 30)  # our time, not the client's
        try:
            outcome = await self._readers.read(raw, envelope.rcpt_tos,
                                               self._config.message_id_domain)
        except ReadTimeout as exc:
            self._spent(peer, exc.seconds)
            return await self._keep(raw, "not_report", str(exc), session, envelope)
        except ReaderUnavailable as exc:
            log.warning("report not read (reader died), asking the relay to retry: %s", exc)
            return TRY_LATER
        self._spent(peer, outcome.cpu)
        if outcome.events is None:
            return await self._keep(raw, "not_report", outcome.problem, session, envelope)
        events = outcome.events
        try:
            believed = await self._believe(events, session, envelope)
        except Unbelieved as exc:
            return await self._keep(raw, "unattributed", str(exc), session, envelope)
        except (RedisError, OSError) as exc:
            log.warning("report not checked (Redis), asking the relay to retry: %s", exc)
            return TRY_LATER
        try:
            count = await publish_events(self._bus, believed)
        except PublishFailed as exc:
            if isinstance(exc, QueueFull):
                self._metrics.refused.labels(exc.queue).inc()
            log.warning("report not published, asking the relay to retry: %s", exc)
            return TRY_LATER
        first = believed[0]
        result = "quoted" if first.trust == QUOTED else "accepted"
        self._metrics.count(result)
        log.info("report accepted (%s) for job %s", first.trust, first.job_id, extra={
            "events": count, "account_id": first.account_id, "job_id": first.job_id,
            "type": first.type, "trust": first.trust, "result": result})
        return "250 2.0.0 Report accepted"

    def _spent(self, peer: str, cpu: float) -> None:
        self._budget.charge(peer, cpu=cpu)
        self._metrics.read_cpu.inc(cpu)

    async def handle_exception(self, error: Exception) -> str:
        log.exception("bounce listener: unexpected error", exc_info=error)
        return TRY_LATER

    async def _believe(self, events: list[ProviderEvent], session: Session,
                       envelope: Envelope) -> list[ProviderEvent]:
        """The events with their account, job, trust and evidence, when the report proves
        them; Unbelieved otherwise."""
        if not events:
            raise Unbelieved("the report has no recipient block with an Action")
        evidence: dict[str, Any] = {
            "peer": _peer_ip(session.peer), "mail_from": str(envelope.mail_from)[:500],
            "rcpt_to": ",".join(envelope.rcpt_tos)[:1000]}
        signed = await self._verp(envelope.rcpt_tos)
        if signed:
            (account, job), trust = signed, SIGNED
        else:
            account, job = self._quoted(events[0])
            trust = QUOTED
            evidence.update(quoted_message_id=events[0].message_id,
                            quoted_account=events[0].account_id)
        for event in events:
            problem = await sent_to(self._redis, account, job, event.recipient)
            if problem:
                raise Unbelieved(problem)
        return [e.replace(account_id=account, job_id=job, trust=trust,
                          event_id=_event_id(account, job, e, trust),
                          raw={**e.raw, "evidence": evidence}) for e in events]

    async def _verp(self, rcpt_tos: list[str]) -> tuple[str, str] | None:
        """The account and job of the first correctly signed VERP recipient; None when no
        recipient looks like one; Unbelieved when some do but none is signed right."""
        claimed = [a for a in rcpt_tos
                   if is_verp(a) or a.strip("<>").lower().startswith("bounce+")]
        for address in claimed:
            verified = await self._attribute(address)
            if verified:
                return verified
        if claimed:
            raise Unbelieved(f"VERP address {claimed[0]} has no correct signature (or names "
                             "no job of ours, or is at a return path not of its account)")
        return None

    async def _attribute(self, address: str) -> tuple[str, str] | None:
        """The account and job of a correctly signed VERP address at the bounce domain, or
        at the return-path subdomain of a domain verified for that account
        (:func:`~suppression.domains.is_return_path_of`, one HGET); None otherwise."""
        domain = address.strip().strip("<>").rpartition("@")[2].lower()
        if domain != self._config.domain and not domain.startswith(f"{RETURN_PATH_LABEL}."):
            return None  # nothing of ours: no Redis read for it
        keys = self._config.keys
        verified = verify_verp(address, keys)
        ref = None if verified else parse_ref(address)
        if ref:
            verified = await resolve_ref(self._redis, ref, keys, self._config.ref_ttl)
        if verified is None:
            return None
        if domain == self._config.domain or await is_return_path_of(self._redis, verified[0],
                                                                     domain):
            return verified
        return None

    def _quoted(self, event: ProviderEvent) -> tuple[str, str]:
        match = self._message_id.match((event.message_id or "").strip())
        account = safe_id(event.account_id)
        if not match or not account:
            raise Unbelieved("names no job of ours: no signed VERP address, and no quoted "
                             f"Message-ID <job@{self._config.message_id_domain}> with "
                             "X-Outbox-Account")
        return account, match.group(1)

    async def _keep(self, raw: bytes, result: str, reason: str, session: Session,
                    envelope: Envelope) -> str:
        """Keep a message we do not act on as evidence (capped), count it, log one line."""
        kept = raw[:EVIDENCE_BYTES]
        cut = f" [first {len(kept)} of {len(raw)} bytes kept]" if len(kept) < len(raw) else ""
        peer, rcpts = _peer_ip(session.peer), ",".join(envelope.rcpt_tos)
        headers = {"x-outbox-peer": peer, "x-outbox-mail-from": str(envelope.mail_from)[:500],
                   "x-outbox-rcpt-to": rcpts[:1000], "x-outbox-size": len(raw)}
        try:
            await self._bus.publish_dead(kept, f"bounces listener: {result}{cut}: {reason}",
                                         "bounces", headers=headers)
        except PublishFailed as exc:
            if isinstance(exc, QueueFull):
                self._metrics.refused.labels(exc.queue).inc()
            log.warning("message not kept, asking the sender to retry: %s", exc)
            return TRY_LATER
        self._metrics.count(result)
        log.warning("bounce listener: %s from %s to %s kept on outbox.dead, nothing changed: "
                    "%s", result, peer, rcpts, reason,
                    extra={"result": result, "peer": peer, "size": len(raw)})
        return "250 2.0.0 Accepted (not acted on; kept for inspection)"


class ListenerSMTP(SMTP):
    """aiosmtpd's SMTP with a per-peer connection limit, a log line and count for every
    refusal (4xx/5xx reply), and three timeouts (:class:`WorkLimits`): idle (aiosmtpd's own,
    restarted by each command), from DATA to the end of the message, and for the whole
    connection (no timer ever runs past it). A timeout answers 421 and closes."""

    def __init__(self, handler: BounceHandler, *, buckets: PeerBuckets,
                 metrics: BounceMetrics, limits: WorkLimits, **kwargs: Any) -> None:
        super().__init__(handler, timeout=limits.idle_timeout, **kwargs)
        self._buckets = buckets
        self._metrics = metrics
        self._limits = limits
        self._turned_away = False
        self._deadline = self.loop.time() + limits.connection_timeout

    def working(self, seconds: float) -> None:
        """The listener works on a message for up to ``seconds``: no idle or DATA timeout
        meanwhile (the connection's own still holds)."""
        self._reset_timeout(seconds)

    async def smtp_DATA(self, arg: str) -> None:
        self._reset_timeout(self._limits.data_timeout)
        await super().smtp_DATA(arg)

    def _reset_timeout(self, duration: float | None = None) -> None:
        left = self._deadline - self.loop.time()
        super()._reset_timeout(max(0.01, min(duration or self._timeout_duration, left)))

    def _timeout_cb(self) -> None:
        peer = _peer_ip(self.session.peer if self.session else None)
        whole = self.loop.time() >= self._deadline - 0.01
        log.warning("bounce listener closed a connection from %s: %s", peer,
                    "connection time limit" if whole else "timeout",
                    extra={"peer": peer, "result": "deferred"})
        self._metrics.count("deferred")
        if self.transport is not None and not self.transport.is_closing():
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(b"421 4.4.2 Timeout, closing the connection\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadline = self.loop.time() + self._limits.connection_timeout
        peer = _peer_ip(transport.get_extra_info("peername"))
        if self._original_transport is None and not self._buckets.take(peer):
            self._turned_away = True
            self._metrics.count("deferred")
            log.warning("bounce listener refused a connection from %s: over its rate", peer)
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(b"421 4.7.0 Too many connections from your address, "
                                b"try again later\r\n")
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._turned_away:
            super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if not self._turned_away:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._turned_away else super().eof_received()

    async def push(self, status: AnyStr) -> None:  # as aiosmtpd declares it
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if text[:1] in ("4", "5"):
            self._metrics.count("refused" if text[:1] == "5" else "deferred")
            log.warning("bounce listener refused %s: %s", _peer_ip(self.session.peer
                                                                   if self.session else None),
                        text)
        await super().push(status)


class BounceListener:
    """The listening server and its reader processes: ``close()`` then ``wait_closed()``."""

    def __init__(self, server: asyncio.Server, readers: ReaderPool) -> None:
        self.server = server
        self._readers = readers

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self.server.sockets)

    def close(self) -> None:
        """Stop listening."""
        self.server.close()

    async def wait_closed(self) -> None:
        """Wait for the server to close, then stop the readers."""
        await self.server.wait_closed()
        await self._readers.close()


async def start_bounce_listener(config: ListenerConfig, *, bus: Bus, redis: Client, host: str,
                                port: int,
                                registry: CollectorRegistry | None = None) -> BounceListener:
    """Start the listener (and its reader processes) in the running loop."""
    metrics = BounceMetrics(registry or CollectorRegistry())
    buckets = PeerBuckets(config.rate, config.burst)
    work = config.work
    readers = ReaderPool(work)
    await readers.start()
    budget = SourceBudget(work.source_bytes, work.source_cpu, work.source_window)
    handler = BounceHandler(config, bus=bus, redis=redis, metrics=metrics, buckets=buckets,
                            readers=readers, budget=budget)
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: ListenerSMTP(handler, buckets=buckets, metrics=metrics, limits=work,
                                 data_size_limit=config.max_bytes, enable_SMTPUTF8=True,
                                 hostname="outbox-bounces"),
            host=host, port=port)
    except BaseException:
        await readers.close()
        raise
    log.info("bounce listener on %s:%d for @%s", host, port, config.domain)
    return BounceListener(server, readers)
