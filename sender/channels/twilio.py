"""SMS through Twilio's Messages API with the ``twilio`` package's async client.

One shared ``AsyncTwilioHttpClient`` session; ``OUTBOX_TWILIO_API_BASE`` replaces the API's
base URL (the local stand-in in development and tests). Before any request the number is
parsed and normalised to E.164 (phonenumbers, default region HK) and refused when it cannot
take SMS (landline, invalid), and the body's segments are counted (GSM-7 or UCS-2) against a
maximum. Each sender (number or Messaging Service) has its own rate limit, so Twilio's queue
is never overfilled. The status callback URL carries the job and account ids; Twilio signs
the whole URL, so a callback names its job authentically.

A second path (``OUTBOX_TWILIO_FALLBACK_*``: another Twilio account, or the same account's
other Messaging Service) takes the SMS while the first cannot be used, and only then. A job
moves to it only on evidence that the first did not create the message: the connection could
not be opened (refused, DNS, TLS), or Twilio answered 5xx (an error response, no Message
resource). The first is then marked down for ``OUTBOX_TWILIO_PROBE_INTERVAL`` seconds, during
which its traffic goes straight to the fallback; the first send after that tries it again (a
probe by traffic). A request whose answer was lost (a timeout, a connection cut after it was
written) may have created the message: it is not sent on the fallback but deferred as before
(``transient/networkerror``). A job with its own ``from`` (a number of the first account)
stays on the first path. Each change is a WARNING line of ``outbox.sms`` and the gauge
``outbox_relay_up{relay="twilio:<account SID>:<sender>"}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from aiohttp import ClientConnectorError, ClientError
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from config import Settings
from sender.channels.base import NotSent, SendFailure, SendResult
from sender.channels.sms_numbers import InvalidNumber, normalise_number
from sender.channels.sms_segments import describe, segments
from sender.compliance import MissingSenderInfo, SenderInfo, sms_marketing_body
from sender.models import SmsJob
from suppression.classify import Outcome, classify_twilio

log = logging.getLogger("outbox.sms")
PROVIDER = "twilio"
#: ``watcher(path, up)``: told of every path at start and of each change (sender.service)
PathWatcher = Callable[[str, bool], None]
NETWORK_ERROR = Outcome("transient", "networkerror")
RATE_LIMITED = Outcome("transient", "speeding")
# Twilio errors that end the job with a status other than the kind's default.
_STATUS_FOR_CODE = {21211: "rejected", 21614: "rejected", 21610: "unsubscribed"}
_SUPPRESS_FOR_CODE = {21211: "invalid", 21614: "invalid", 21610: "sms_stop"}


class RateLimiter:
    """A rate per sender: ``rate`` messages a second, bursts of ``burst`` (the generic cell
    rate algorithm: each sender's theoretical arrival time moves ``1 / rate`` per message, and
    a message may go while that time is at most the burst's tolerance,
    ``(burst - 1) / configured rate`` seconds, ahead of now).

    Nothing is reserved ahead: a caller takes a place only when it may go now, otherwise it
    sleeps until the earliest moment it might and asks again, at the rate of that moment. So
    waiters are spaced ``1 / rate`` apart however many wait, and a rate that recovers speeds
    up the callers already waiting (reservations made at a cut rate once held 25 retried
    jobs 2 s apart while the rate was back to 50/s).

    Twilio's 429 halves the sender's rate (down to ``floor``) and spends its burst, once per
    congestion signal: the 429s of requests that went before the last cut were answers to the
    old rate and do not cut again (as TCP cuts once per window). Each accepted message gives
    back a twentieth of the configured rate (additive increase, multiplicative decrease)."""

    def __init__(self, rate: float, burst: int, floor: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._configured = rate
        self._tolerance = (max(1, burst) - 1) / rate  # seconds of burst, whatever the rate
        self._floor = min(floor, rate)
        self._rates: dict[str, float] = {}
        self.lowest = rate  # the lowest rate any sender was cut to (metrics, tests)
        self._tat: dict[str, float] = {}  # sender -> theoretical arrival time of the next
        self._cut_at: dict[str, float] = {}  # sender -> when its rate was last cut
        self._clock = clock

    def rate(self, sender: str) -> float:
        """The sender's current rate (messages per second)."""
        return self._rates.get(sender, self._configured)

    def try_take(self, sender: str) -> float:
        """Take ``sender``'s next place if it may send now (0.0); otherwise take nothing and
        return the seconds until it might."""
        now = self._clock()
        tat = max(self._tat.get(sender, now), now)
        wait = tat - self._tolerance - now
        if wait > 1e-9:  # not a float's rounding as a wait
            return wait
        self._tat[sender] = tat + 1.0 / self.rate(sender)
        return 0.0

    async def acquire(self, sender: str) -> float:
        """Wait until ``sender`` may send one more message; return the clock's time then
        (hand it back to :meth:`slow_down` if the provider answers 429)."""
        while True:  # a timed re-check, not an event: the place frees up with the clock
            wait = self.try_take(sender)  # no await between reading and moving the time
            if not wait:
                return self._clock()
            await asyncio.sleep(wait)

    def slow_down(self, sender: str, sent_at: float | None = None) -> None:
        """A 429 for a message that went at ``sent_at`` (None: now)."""
        now = self._clock()
        if sent_at is not None and sent_at < self._cut_at.get(sender, float("-inf")):
            return  # sent before the last cut: that cut already answered it
        self._cut_at[sender] = now
        self._rates[sender] = max(self._floor, self.rate(sender) / 2)
        self.lowest = min(self.lowest, self._rates[sender])
        # the burst is spent: the next message waits one whole interval at the new rate
        self._tat[sender] = max(self._tat.get(sender, now),
                                now + self._tolerance + 1.0 / self.rate(sender))

    def speed_up(self, sender: str) -> None:
        if sender in self._rates:
            rate = self._rates[sender] + self._configured / 20
            if rate >= self._configured:
                del self._rates[sender]
            else:
                self._rates[sender] = rate


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    account_sid: str
    auth_token: str
    api_base: str
    from_: str | None
    messaging_service_sid: str | None
    status_callback: str | None  # OUTBOX_PUBLIC_URL + /webhooks/twilio/status
    region: str = "HK"
    max_segments: int = 10
    rate_per_sender: float = 10.0

    @property
    def name(self) -> str:
        """How logs and the gauge name this path (no secret)."""
        return f"twilio:{self.account_sid}:{self.messaging_service_sid or self.from_ or ''}"


class Unreachable(Exception):
    """The path certainly did not create the message (no connection, or a 5xx answer)."""

    def __init__(self, failure: SendFailure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


@dataclass(eq=False)
class Path:
    """One way to Twilio: an account (client) and its sender, and whether it is up."""

    config: TwilioConfig
    client: Client
    down_until: float = 0.0  # monotonic; 0: up

    @property
    def name(self) -> str:
        return self.config.name


def _network_failure(exc: BaseException) -> SendFailure:
    return SendFailure(NETWORK_ERROR, f"{type(exc).__name__}: {exc}", PROVIDER)


def make_client(config: TwilioConfig) -> Client:
    """The twilio ``Client`` on one shared async HTTP session, pointed at ``api_base``."""
    client = Client(config.account_sid, config.auth_token,
                    http_client=AsyncTwilioHttpClient())
    client.edge = None  # or the client rewrites the host from TWILIO_EDGE/TWILIO_REGION
    client.region = None
    client.api.base_url = config.api_base.rstrip("/")
    return client


class TwilioChannel:
    """The SMS channel."""

    name = "sms"
    provider = PROVIDER

    def __init__(self, config: TwilioConfig, client: Client | None = None, *,
                 fallback: TwilioConfig | None = None, fallback_client: Client | None = None,
                 probe_interval: float = 15.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        for path in (config, fallback):
            if path is not None and not (path.from_ or path.messaging_service_sid):
                raise ValueError("Twilio needs OUTBOX_TWILIO_FROM or a Messaging Service SID")
        self._config = config
        self._client = client or make_client(config)
        self.paths = [Path(config, self._client)]
        if fallback is not None:
            self.paths.append(Path(fallback, fallback_client or make_client(fallback)))
        self._probe_interval = probe_interval
        self._clock = clock
        self._watchers: list[PathWatcher] = []
        self._limiter = RateLimiter(config.rate_per_sender, max(1, int(config.rate_per_sender)))
        self._stopped = False

    def watch(self, watcher: PathWatcher) -> None:
        """Call ``watcher(path, up)`` now for every path and then on each change."""
        self._watchers.append(watcher)
        for path in self.paths:
            watcher(path.name, not path.down_until)

    async def send(self, job: SmsJob, sender: tuple[str, ...] | None = None) -> SendResult:
        """Send one SMS job; SendFailure (with ``status`` for refusals that end the job).
        Marketing carries the account's identification and the opt-out line."""
        to = self._check_number(job.to)
        body = self._body(job, sender)
        encoding, count = segments(body)
        if count > self._config.max_segments:
            raise SendFailure(Outcome("hard", "mesgtoobig"), f"{count} segments, over the "
                              f"maximum of {self._config.max_segments}", PROVIDER,
                              status="rejected", suppress="")
        # a job's own number belongs to the first account: it stays on that path
        paths = self.paths[:1] if job.from_ else self.paths
        now = self._clock()
        # the paths up (or whose time down is over: tried again), else all, in order
        order = [p for p in paths if p.down_until <= now] or list(paths)
        last: Unreachable | None = None
        for path in order:
            try:
                message = await self._create(path, job, to, body)
            except Unreachable as exc:
                self._down(path, exc)
                last = exc
                continue
            self._up(path)
            return SendResult(PROVIDER, message.sid,
                              f"{message.status}; {describe(encoding, count)}",
                              {"segments": count, "encoding": encoding})
        assert last is not None  # the loop returned unless every path was unreachable
        raise last.failure

    async def _create(self, path: Path, job: SmsJob, to: str, body: str) -> Any:
        """One create on ``path``: its Message resource; SendFailure for Twilio's answers,
        :class:`Unreachable` when the message was certainly not created."""
        from_ = job.from_ or path.config.from_
        params = self._params(job, to, from_, body, path.config)
        lane = from_ or path.config.messaging_service_sid or ""
        sent_at = await self._limiter.acquire(lane)
        if self._stopped:  # the wait for the sender's rate outlived the worker
            raise NotSent("stopping")
        try:
            message = await path.client.messages.create_async(**params)
        except TwilioRestException as exc:
            if exc.status == 429 or exc.code == 20429:
                self._limiter.slow_down(lane, sent_at)
            failure = self._failure(exc)
            if exc.status >= 500:  # an error answer: no Message resource was created
                raise Unreachable(failure) from None
            raise failure from None
        except ClientConnectorError as exc:  # never connected: nothing was sent
            raise Unreachable(_network_failure(exc)) from None
        except (TimeoutError, ClientError, OSError) as exc:  # the answer lost: not moved
            raise _network_failure(exc) from None
        self._limiter.speed_up(lane)
        return message

    def _down(self, path: Path, exc: Unreachable) -> None:
        """Mark ``path`` down for the probe interval (said once per change)."""
        was_up = not path.down_until
        path.down_until = self._clock() + self._probe_interval
        if was_up and len(self.paths) > 1:
            rest = [p.name for p in self.paths if not p.down_until]
            log.warning("SMS path %s is down (%s); its traffic goes to %s for %.0f s, then "
                        "it is tried again", path.name, exc,
                        rest[0] if rest else "no path (none is up)", self._probe_interval,
                        extra={"relay": path.name, "detail": str(exc)})
            self._tell(path)

    def _up(self, path: Path) -> None:
        if path.down_until:
            path.down_until = 0.0
            if len(self.paths) > 1:
                log.warning("SMS path %s is up again; its traffic returns to it", path.name,
                            extra={"relay": path.name})
                self._tell(path)

    def _tell(self, path: Path) -> None:
        for watcher in self._watchers:
            watcher(path.name, not path.down_until)

    def _check_number(self, raw: str) -> str:
        try:
            return normalise_number(raw, self._config.region)
        except InvalidNumber as exc:
            raise SendFailure(Outcome("hard", "userunknown"), str(exc), PROVIDER,
                              status="rejected", suppress="invalid") from None

    def _body(self, job: SmsJob, sender: tuple[str, ...] | None) -> str:
        if job.category != "marketing":
            return job.body
        try:
            return sms_marketing_body(job.body, SenderInfo.require(sender))
        except MissingSenderInfo as exc:
            raise SendFailure(Outcome("hard", "notaccept"), str(exc), PROVIDER,
                              status="rejected", suppress="") from None

    def _params(self, job: SmsJob, to: str, from_: str | None, body: str,
                config: TwilioConfig) -> dict[str, str]:
        params = {"to": to, "body": body}
        if job.from_ or not config.messaging_service_sid:
            params["from_"] = from_ or ""
        else:
            params["messaging_service_sid"] = config.messaging_service_sid
        if self._config.status_callback:
            query = urlencode({"j": job.id, "a": job.account_id})
            params["status_callback"] = f"{self._config.status_callback}?{query}"
        return params

    def _failure(self, exc: TwilioRestException) -> SendFailure:
        if exc.status == 429 or exc.code == 20429 or exc.status >= 500:
            outcome = RATE_LIMITED if exc.status == 429 or exc.code == 20429 else NETWORK_ERROR
            return SendFailure(outcome, f"HTTP {exc.status} {exc.code}: {exc.msg}", PROVIDER)
        outcome = classify_twilio(exc.code)
        return SendFailure(outcome, f"{exc.code}: {exc.msg}"[:500], PROVIDER,
                           status=_STATUS_FOR_CODE.get(exc.code or 0),
                           suppress=_SUPPRESS_FOR_CODE.get(exc.code or 0))

    def stop(self) -> None:
        """Shutdown begins: a send still waiting for its sender's rate does not start."""
        self._stopped = True

    async def close(self) -> None:
        for path in self.paths:
            await path.client.http_client.close()


def build(settings: Settings) -> TwilioChannel | None:
    """The SMS channel when Twilio is configured; None leaves SMS jobs waiting in their queue."""
    if not settings.twilio_configured:
        return None
    config = TwilioConfig(
        account_sid=settings.twilio_account_sid or "",
        auth_token=settings.twilio_auth_token.get_secret_value()
        if settings.twilio_auth_token else "",
        api_base=settings.twilio_api_base, from_=settings.twilio_from,
        messaging_service_sid=settings.twilio_messaging_service_sid,
        status_callback=f"{settings.public_url}/webhooks/twilio/status",
        region=settings.sms_region, max_segments=settings.sms_max_segments,
        rate_per_sender=settings.twilio_rate_per_sender)
    fallback = None
    if settings.twilio_fallback_configured:
        token = settings.twilio_fallback_auth_token
        fallback = replace(
            config, account_sid=settings.twilio_fallback_account_sid or config.account_sid,
            auth_token=token.get_secret_value() if token else config.auth_token,
            api_base=settings.twilio_fallback_api_base or config.api_base,
            from_=settings.twilio_fallback_from,
            messaging_service_sid=settings.twilio_fallback_messaging_service_sid)
    return TwilioChannel(config, fallback=fallback,
                         probe_interval=settings.twilio_probe_interval)
