"""Each provider's webhook routes, beside its parser (``webhooks/providers/<name>.py``):
``POST /webhooks/twilio/status`` and ``/webhooks/twilio/inbound`` (:class:`TwilioWebhooks`),
``POST /webhooks/ses``, ``/webhooks/sendgrid``, ``/webhooks/mailgun`` and
``/webhooks/postmark`` (docs/reference.md, "Email provider webhooks").

Each handler answers 404 while its provider is not configured; verifies first (403 — 401 for
Postmark's basic auth — and no effect when that fails); parses (400); publishes the events on
``outbox.events`` with publisher confirms and answers 2xx only after (503 when the broker does
not confirm: the provider retries). Twilio signs the decoded form, so its body is decoded
once, strictly, before the check (400 for a body that is not a plain form, a repeated field
included), and that decoding is what is parsed.

What the provider modules cannot know is added here:

* SES: the ``TopicArn`` must be one of ``OUTBOX_SES_TOPIC_ARNS`` (SNS signs what any AWS
  account publishes: the topic is what makes a message ours). The signing certificate comes
  from :class:`webhooks.sns_certificates.SnsCertificates` (only from an SNS URL, without
  blocking, cached by URL): a URL not SNS's or a certificate out of its validity is refused
  (403), a failed fetch answered 503 (SNS retries). A verified
  ``SubscriptionConfirmation`` is logged with its ``SubscribeURL`` and answered 200 but not
  confirmed: an operator confirms it once (a GET of that URL), so the server never fetches a
  URL named in a request body.
* SendGrid and Mailgun: the signed timestamp must be at most 5 minutes old and at most
  1 minute ahead. Mailgun: a token is accepted once (``SET NX EX`` on
  :func:`suppression.keys.mailgun_token`; a replay gets 406, Mailgun's "do not retry"); the
  token is released again when the events could not be published, so Mailgun's retry is taken.
* All: a ``job_id`` read from a Message-ID whose domain is not ``OUTBOX_MESSAGE_ID_DOMAIN``
  is dropped (the provider's own Message-ID, not one of our jobs). An event naming a job that
  was never handed over, or handed over for another recipient, is not published (200 all
  the same: :func:`webhooks.provider_event_publisher.hand_over`). The worker deduplicates
  events by provider and event id.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

from aiohttp import hdrs, web
from pydantic import SecretStr
from redis.exceptions import RedisError

from config import Settings
from sender.bus import Bus
from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from suppression import ids, keys
from suppression.roundtrip import Client
from webhooks.handlers import WebhookMetrics
from webhooks.provider_event_publisher import hand_over
from webhooks.providers import mailgun, postmark, sendgrid, ses, twilio
from webhooks.providers.base import PayloadError
from webhooks.sns_certificates import (
    CertificateInvalid,
    CertificateRefused,
    CertificateUnavailable,
    SnsCertificates,
)

log = logging.getLogger("outbox.webhooks")

#: a signed timestamp older than this, or further ahead than FUTURE_SKEW, is refused (seconds)
MAX_AGE = 300
FUTURE_SKEW = 60
_MESSAGE_ID = re.compile(r"<([^<>@\s]+)@([^<>@\s]+)>")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")
T = TypeVar("T")


class _Routes:
    """What every provider's routes hold: the settings, the bus the events are published on
    (with confirms), Redis (the hand-over check) and the webhook metrics."""

    def __init__(self, settings: Settings, bus: Bus, redis: Client,
                 metrics: WebhookMetrics) -> None:
        self._settings = settings
        self._bus = bus
        self._redis = redis
        self._metrics = metrics

    async def _hand_over(self, events: list[ProviderEvent]) -> None:
        await hand_over(self._bus, self._redis, events, self._metrics,
                        region=self._settings.sms_region)


class TwilioWebhooks(_Routes):
    """``POST /webhooks/twilio/status`` and ``POST /webhooks/twilio/inbound``."""

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhooks/twilio/status", self.status),
                web.post("/webhooks/twilio/inbound", self.inbound)]

    async def _verified(self, request: web.Request) -> twilio.Form:
        """The body decoded once (400 if it is not a strict form) and its signature checked
        (403): the same :class:`twilio.Form` is what the parser then reads."""
        tokens = self._settings.twilio_auth_tokens()
        if not tokens:
            raise web.HTTPNotFound(text="Twilio is not configured")
        try:
            form = twilio.decode_form(await request.read(),
                                      request.headers.get(hdrs.CONTENT_TYPE, ""))
        except PayloadError as exc:
            raise self._refuse(request, web.HTTPBadRequest, "bad_payload", str(exc)) from None
        url = self._settings.public_url + request.path_qs
        signature = request.headers.get(twilio.SIGNATURE_HEADER, "")
        # the token of the account the callback names (a fallback account signs with its
        # own); an unknown account's is checked against the first's, and fails
        token = tokens.get(form.get("AccountSid") or "", next(iter(tokens.values())))
        if not twilio.verify(url, form, signature, token):
            raise self._refuse(request, web.HTTPForbidden, "bad_signature", "bad signature")
        return form

    def _refuse(self, request: web.Request, error: type[web.HTTPException], result: str,
                text: str) -> web.HTTPException:
        """Counted, logged, and the answer to raise: nothing of the request was acted on."""
        self._metrics.count("twilio", "unknown", result)
        log.warning("twilio webhook refused: %s", text,
                    extra={"path": request.path_qs, "result": result})
        return error(text=text)

    async def status(self, request: web.Request) -> web.Response:
        """Status callback → one event for its job (named by the signed ``j``/``a`` query)."""
        form = await self._verified(request)
        try:
            events = twilio.parse_fields(form)
        except PayloadError as exc:
            raise self._refuse(request, web.HTTPBadRequest, "bad_payload", str(exc)) from None
        job_id = self._query_id(request, "j", "job id")
        account_id = self._query_id(request, "a", "account id")
        events = [e.replace(job_id=e.job_id or job_id, account_id=e.account_id or account_id)
                  for e in events]
        await self._hand_over(events)
        return web.Response(status=204)

    async def inbound(self, request: web.Request) -> web.Response:
        """Inbound SMS: STOP and its kin opt out, START opts back in; others are ignored."""
        form = await self._verified(request)
        try:
            sms = twilio.parse_inbound_fields(form)
        except PayloadError as exc:
            raise self._refuse(request, web.HTTPBadRequest, "bad_payload", str(exc)) from None
        if sms.keyword in ("stop", "start"):
            event = _opt_event(sms, self._query_id(request, "a", "account id"))
            await self._hand_over([event])
        else:
            self._metrics.count("twilio", "inbound", "ignored")
        # An empty TwiML answer: Twilio sends its own STOP/START confirmations.
        return web.Response(text="<Response/>", content_type="application/xml")

    def _query_id(self, request: web.Request, name: str, what: str) -> str | None:
        """The id in the query string's ``name`` (Outbox puts ``a`` and ``j`` in the callback
        URL it gives Twilio), None when absent; 400 when it is not an id (:mod:`suppression.ids`):
        no event is made for a made-up account."""
        value = request.query.get(name)
        if value is None:
            return None
        try:
            return ids.parse_id(value, f"{what} (query {name})")
        except ids.InvalidId as exc:
            raise self._refuse(request, web.HTTPBadRequest, "bad_payload", str(exc)) from None

def _opt_event(sms: twilio.InboundSms, account_id: str | None) -> ProviderEvent:
    """An inbound STOP/START as an event: ``unsubscribed`` or ``other`` with reason ``start``."""
    stop = sms.keyword == "stop"
    return ProviderEvent(
        provider="twilio", type="unsubscribed" if stop else "other", channel="sms",
        recipient=sms.from_, provider_message_id=sms.message_sid, message_id=None, job_id=None,
        kind=None, reason="sms_stop" if stop else "sms_start", diagnostic=sms.body[:160],
        at=utcnow_iso(), event_id=f"{sms.message_sid}:{sms.keyword}", account_id=account_id,
        raw={"to": sms.to})


class _ProviderWebhooks(_Routes):
    """What the four email providers' handlers share: one route (``path``, answered by
    :meth:`receive`), refusals, parsing, attribution, publishing with confirms."""

    provider = ""
    path = ""

    def routes(self) -> list[web.RouteDef]:
        return [web.post(self.path, self.receive)]

    async def receive(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    def _refuse(self, error: type[web.HTTPException], result: str, text: str,
                headers: dict[str, str] | None = None) -> web.HTTPException:
        self._metrics.count(self.provider, "unknown", result)
        log.warning("%s webhook refused: %s", self.provider, text,
                    extra={"provider": self.provider, "result": result})
        return error(text=text, headers=headers)

    def _parse(self, parse: Callable[[bytes, str], list[ProviderEvent]], body: bytes,
               content_type: str) -> list[ProviderEvent]:
        try:
            events = parse(body, content_type)
        except PayloadError as exc:
            raise self._refuse(web.HTTPBadRequest, "bad_payload", str(exc)) from None
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            # a signed body of a shape the parser does not expect (a list where the provider
            # documents an object, say): refused like any unreadable payload, never a 500
            raise self._refuse(web.HTTPBadRequest, "bad_payload",
                               f"payload not understood ({type(exc).__name__}: {exc})"[:300]
                               ) from None
        return [self._attribute(e) for e in events]

    def _attribute(self, event: ProviderEvent) -> ProviderEvent:
        """Drop a job id that is only the local part of someone else's Message-ID."""
        match = _MESSAGE_ID.search(event.message_id or "")
        ours = self._settings.message_id_domain.lower()
        if match and event.job_id == match.group(1) and match.group(2).lower() != ours:
            return event.replace(job_id=None)
        return event

    def _decoded(self, decode: Callable[[], T]) -> T:
        """What ``decode`` reads of the body; a :class:`PayloadError` refused (400)."""
        try:
            return decode()
        except PayloadError as exc:
            raise self._refuse(web.HTTPBadRequest, "bad_payload", str(exc)) from None

    async def _publish(self, parse: Callable[[bytes, str], list[ProviderEvent]], body: bytes,
                       content_type: str) -> web.Response:
        """The body's events (:meth:`_parse`) handed over; 200 once the broker confirmed."""
        await self._hand_over(self._parse(parse, body, content_type))
        return web.Response(status=200, text="ok")

    def _check_signed(self, verified: bool, timestamp: str | None = None) -> None:
        """403 unless the signature was ``verified`` and its signed ``timestamp`` (if any)
        is fresh."""
        if not verified:
            raise self._refuse(web.HTTPForbidden, "bad_signature", "bad signature")
        if timestamp is not None:
            self._check_fresh(timestamp)

    def _check_fresh(self, timestamp: str) -> None:
        try:
            age = time.time() - float(timestamp)
        except ValueError:
            raise self._refuse(web.HTTPForbidden, "stale", "bad timestamp") from None
        if age > MAX_AGE or age < -FUTURE_SKEW:
            raise self._refuse(web.HTTPForbidden, "stale", "timestamp outside the window")


class SesWebhooks(_ProviderWebhooks):
    """``POST /webhooks/ses``: Amazon SNS notifications carrying SES events."""

    provider = ses.PROVIDER
    path = "/webhooks/ses"

    def __init__(self, settings: Settings, bus: Bus, redis: Client, metrics: WebhookMetrics,
                 certificates: SnsCertificates | None = None) -> None:
        super().__init__(settings, bus, redis, metrics)
        self._certificates = certificates or SnsCertificates()

    async def receive(self, request: web.Request) -> web.Response:
        topics = self._settings.ses_topic_arns
        if not topics:
            raise web.HTTPNotFound(text="SES is not configured")
        body = await request.read()
        envelope = self._decoded(lambda: ses.decode_envelope(body))
        if envelope.get("TopicArn") not in topics:
            raise self._refuse(web.HTTPForbidden, "bad_topic", "topic not accepted")
        pem = await self._certificate(str(envelope.get("SigningCertURL") or ""))
        self._check_signed(ses.verify(envelope, certificate_pem=pem))
        if envelope["Type"] in ses.CONFIRMATION_TYPES:
            return self._confirmation(envelope)
        return await self._publish(ses.parse, body, request.content_type)

    async def _certificate(self, url: str) -> str:
        """The signing certificate (:class:`SnsCertificates`), or the refusal to answer."""
        try:
            return await self._certificates.get(url)
        except CertificateRefused:
            raise self._refuse(web.HTTPForbidden, "bad_certificate_url",
                               "SigningCertURL is not an SNS certificate URL") from None
        except CertificateInvalid:
            raise self._refuse(web.HTTPForbidden, "bad_certificate", "certificate invalid"
                               ) from None
        except CertificateUnavailable as exc:
            log.warning("SNS certificate not fetched: %s", exc, extra={"url": url})
            raise web.HTTPServiceUnavailable(text="certificate unavailable") from None

    def _confirmation(self, envelope: dict[str, object]) -> web.Response:
        """Logged for an operator to confirm by hand (see the module docstring)."""
        log.warning("SNS %s for %s: confirm by opening SubscribeURL %s",
                    envelope["Type"], envelope.get("TopicArn"), envelope.get("SubscribeURL"),
                    extra={"provider": "ses", "topic": envelope.get("TopicArn")})
        self._metrics.count(self.provider, "other", "subscription")
        return web.Response(status=200, text="logged; confirm by hand")


def _configured(secret: SecretStr | None, provider: str) -> str:
    """The provider's secret; 404 while it is not configured (the route is not there)."""
    if secret is None:
        raise web.HTTPNotFound(text=f"{provider} is not configured")
    return secret.get_secret_value()


class SendGridWebhooks(_ProviderWebhooks):
    """``POST /webhooks/sendgrid``: the signed Event Webhook."""

    provider = sendgrid.PROVIDER
    path = "/webhooks/sendgrid"

    async def receive(self, request: web.Request) -> web.Response:
        key = _configured(self._settings.sendgrid_public_key, "SendGrid")
        body = await request.read()
        signature = request.headers.get(sendgrid.SIGNATURE_HEADER, "")
        timestamp = request.headers.get(sendgrid.TIMESTAMP_HEADER, "")
        self._check_signed(sendgrid.verify(body, signature, timestamp, key), timestamp)
        return await self._publish(sendgrid.parse, body, request.content_type)


class MailgunWebhooks(_ProviderWebhooks):
    """``POST /webhooks/mailgun``: signed, fresh, and each token once."""

    provider = mailgun.PROVIDER
    path = "/webhooks/mailgun"

    async def receive(self, request: web.Request) -> web.Response:
        key = _configured(self._settings.mailgun_signing_key, "Mailgun")
        body = await request.read()
        sig = self._decoded(lambda: mailgun.decode(body, request.content_type)["signature"])
        self._check_signed(mailgun.verify(sig["timestamp"], sig["token"], sig["signature"], key),
                           sig["timestamp"])
        token_key = await self._claim(sig["token"])
        try:
            return await self._publish(mailgun.parse, body, request.content_type)
        except web.HTTPException as exc:
            if exc.status >= 400:  # not taken: let Mailgun's retry through
                await self._release(token_key)
            raise

    async def _claim(self, token: str) -> str:
        if not _TOKEN.match(token):
            raise self._refuse(web.HTTPForbidden, "bad_signature", "malformed token")
        token_key = keys.mailgun_token(token)
        try:
            fresh = await self._redis.set(token_key, "1", nx=True, ex=keys.MAILGUN_TOKEN_TTL)
        except RedisError as exc:
            log.warning("mailgun token not recorded: %s", exc)
            raise web.HTTPServiceUnavailable(text="try again") from None
        if not fresh:
            raise self._refuse(web.HTTPNotAcceptable, "replay", "token already used")
        return token_key

    async def _release(self, token_key: str) -> None:
        try:
            await self._redis.delete(token_key)
        except RedisError as exc:  # the token expires on its own
            log.warning("mailgun token not released: %s", exc)


class PostmarkWebhooks(_ProviderWebhooks):
    """``POST /webhooks/postmark``: HTTP basic auth on the webhook URL."""

    provider = postmark.PROVIDER
    path = "/webhooks/postmark"

    async def receive(self, request: web.Request) -> web.Response:
        user = self._settings.postmark_webhook_user
        password = self._settings.postmark_webhook_password
        if not user or password is None:
            raise web.HTTPNotFound(text="Postmark is not configured")
        if not postmark.basic_auth_ok(request.headers.get("Authorization"), user,
                                      password.get_secret_value()):
            raise self._refuse(web.HTTPUnauthorized, "bad_auth", "authentication required",
                               headers={"WWW-Authenticate": 'Basic realm="outbox"'})
        body = await request.read()
        return await self._publish(postmark.parse, body, request.content_type)
