"""The webhook routes that are no provider's: the unsubscribe page (``/u/<token>``); and the
webhook metrics every route counts in. Each provider's routes live with the providers
(:mod:`webhooks.providers.routes`).
"""

from __future__ import annotations

import html
import logging

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from config import Settings
from sender.bus import Bus, PublishFailed
from sender.models import utcnow_iso
from sender.provider_events import ProviderEvent
from sender.recipient_events import Change, RecipientEvents
from suppression.roundtrip import Client
from suppression.store import SuppressionStore
from suppression.tokens import BadToken, Unsubscribe, read_token
from webhooks.provider_event_publisher import publish_events

log = logging.getLogger("outbox.webhooks")


class WebhookMetrics:
    """``outbox_webhook_events_total{provider,type,result}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("outbox_webhook_events_total", "Webhook events by outcome",
                              ["provider", "type", "result"], registry=registry)

    def count(self, provider: str, type_: str, result: str, n: int = 1) -> None:
        self.events.labels(provider, type_, result).inc(n)


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
