"""Provider webhook handlers: verify first (401/403 and no effect when it fails), then parse
(400 for a body that cannot be read), then hand the events to the worker on ``outbox.events``
and answer 2xx only once the broker has confirmed them (503 otherwise: the provider retries).
Twilio signs the decoded form, so its body is decoded once, strictly, before the check (400 for
a body that is not a plain form, a repeated field included), and that decoding is what is parsed.
"""

from __future__ import annotations

import html
import logging

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter

from config import Settings
from sender.bus import Bus, PublishFailed
from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from sender.recipient_events import Change, RecipientEvents
from suppression import ids
from suppression.roundtrip import Client
from suppression.store import SuppressionStore
from suppression.tokens import BadToken, Unsubscribe, read_token
from webhooks.events import hand_over, publish_events
from webhooks.providers import twilio
from webhooks.providers.base import PayloadError

log = logging.getLogger("outbox.webhooks")


class WebhookMetrics:
    """``outbox_webhook_events_total{provider,type,result}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("outbox_webhook_events_total", "Webhook events by outcome",
                              ["provider", "type", "result"], registry=registry)

    def count(self, provider: str, type_: str, result: str, n: int = 1) -> None:
        self.events.labels(provider, type_, result).inc(n)


class TwilioWebhooks:
    """``POST /webhooks/twilio/status`` and ``POST /webhooks/twilio/inbound``."""

    def __init__(self, settings: Settings, bus: Bus, redis: Client,
                 metrics: WebhookMetrics) -> None:
        self._settings = settings
        self._bus = bus
        self._redis = redis
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhooks/twilio/status", self.status),
                web.post("/webhooks/twilio/inbound", self.inbound)]

    async def _verified(self, request: web.Request) -> twilio.Form:
        """The body decoded once (400 if it is not a strict form) and its signature checked
        (403): the same :class:`twilio.Form` is what the parser then reads."""
        token = self._settings.twilio_auth_token
        if token is None:
            raise web.HTTPNotFound(text="Twilio is not configured")
        try:
            form = twilio.decode_form(await request.read(),
                                      request.headers.get(hdrs.CONTENT_TYPE, ""))
        except PayloadError as exc:
            raise self._refuse(request, web.HTTPBadRequest, "bad_payload", str(exc)) from None
        url = self._settings.public_url + request.path_qs
        signature = request.headers.get(twilio.SIGNATURE_HEADER, "")
        if not twilio.verify(url, form, signature, token.get_secret_value()):
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
        await self._publish(events)
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
            await self._publish([event])
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

    async def _publish(self, events: list[ProviderEvent]) -> None:
        await hand_over(self._bus, self._redis, events, self._metrics,
                        region=self._settings.sms_region)


def _opt_event(sms: twilio.InboundSms, account_id: str | None) -> ProviderEvent:
    """An inbound STOP/START as an event: ``unsubscribed`` or ``other`` with reason ``start``."""
    stop = sms.keyword == "stop"
    return ProviderEvent(
        provider="twilio", type="unsubscribed" if stop else "other", channel="sms",
        recipient=sms.from_, provider_message_id=sms.message_sid, message_id=None, job_id=None,
        kind=None, reason="sms_stop" if stop else "sms_start", diagnostic=sms.body[:160],
        at=utcnow_iso(), event_id=f"{sms.message_sid}:{sms.keyword}", account_id=account_id,
        raw={"to": sms.to})


class UnsubscribeWebhooks:
    """``GET /u/<token>`` (a page with a button) and ``POST /u/<token>`` (the button, and
    RFC 8058 one-click from the mailbox provider). A POST is honoured at once: the account's
    suppression entry is written before the answer and its recipient event published
    (``unsubscribed``, once: a second POST publishes nothing; when the broker does not take
    it the answer is 503, the entry stays and the event is pending, published by the next
    POST), then the event goes to the worker for the job's status. A GET changes nothing
    (link scanners follow GETs)."""

    def __init__(self, settings: Settings, bus: Bus, store: SuppressionStore,
                 metrics: WebhookMetrics, redis: Client) -> None:
        """``redis``: where recipient changes are recorded (``sender.recipient_events``)."""
        self._secrets = settings.secret_keys
        self._bus = bus
        self._store = store
        self._metrics = metrics
        self._recipients = RecipientEvents(redis, bus)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/u/{token}", self.page), web.post("/u/{token}", self.unsubscribe)]

    def _read(self, request: web.Request) -> Unsubscribe:
        try:
            return read_token(self._secrets, request.match_info["token"])
        except BadToken:
            self._metrics.count("unsubscribe", "unsubscribed", "bad_token")
            raise web.HTTPNotFound(text="This unsubscribe link is not valid. "
                                        "此取消訂閱連結無效。") from None

    async def page(self, request: web.Request) -> web.Response:
        u = self._read(request)
        body = _PAGE.format(recipient=html.escape(u.recipient))
        return web.Response(text=body, content_type="text/html")

    async def unsubscribe(self, request: web.Request) -> web.Response:
        u = self._read(request)
        # the bytes, not text(): a body in no readable charset is still a click (RFC 8058's
        # is ASCII), never a 500
        how = "one-click" if b"List-Unsubscribe" in await request.read() else "unsubscribe page"
        await self._store.add(u.recipient, channel=u.channel, reason="unsubscribe",
                              account_id=u.account_id, source=f"job:{u.job_id}", detail=how,
                              actor="recipient")
        await self._announce(u, how)
        event = ProviderEvent(
            provider="unsubscribe", type="unsubscribed", channel=u.channel, recipient=u.recipient,
            provider_message_id=None, message_id=None, job_id=u.job_id, kind=None,
            reason="unsubscribe", diagnostic=how, at=utcnow_iso(),
            event_id=f"{u.job_id}:{u.recipient}", account_id=u.account_id)
        try:
            await publish_events(self._bus, [event])
        except PublishFailed as exc:  # the suppression is written: the CRM hears it later
            log.warning("unsubscribe event not published: %s", exc)
        self._metrics.count("unsubscribe", "unsubscribed", "accepted")
        return web.Response(text=_DONE, content_type="text/html")

    async def _announce(self, u: Unsubscribe, how: str) -> None:
        """Publish the recipient event; 503 (the entry stays, the event pending) when the
        broker does not take it."""
        source = "one_click" if how == "one-click" else "unsubscribe_page"
        try:
            await self._recipients.announce(Change(u.account_id, u.channel, u.recipient,
                                                   "unsubscribed", source))
        except PublishFailed as exc:
            log.warning("unsubscribe recipient event not published (kept pending): %s", exc)
            self._metrics.count("unsubscribe", "unsubscribed", "unavailable")
            raise web.HTTPServiceUnavailable(text=_AGAIN, content_type="text/html") from None


_PAGE = """<!doctype html><meta charset="utf-8"><title>Unsubscribe 取消訂閱</title>
<p>Unsubscribe {recipient} from these messages? 要為 {recipient} 取消訂閱嗎？</p>
<form method="post"><button type="submit">Unsubscribe 取消訂閱</button></form>"""
_DONE = """<!doctype html><meta charset="utf-8"><title>Unsubscribed 已取消訂閱</title>
<p>You are unsubscribed. 你已取消訂閱。</p>"""
_AGAIN = """<!doctype html><meta charset="utf-8"><title>Unsubscribed 已取消訂閱</title>
<p>You are unsubscribed, but we could not confirm it yet: please press the button again.
你已取消訂閱，但暫時未能確認：請再按一次按鈕。</p>"""
