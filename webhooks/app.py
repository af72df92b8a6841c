"""The HTTP server: provider webhooks, unsubscribe, the admin API, metrics and health."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from config import Settings
from sender.bus import Bus
from suppression.roundtrip import Client
from suppression.store import SuppressionStore
from webhooks.admin import AdminApi
from webhooks.handlers import TwilioWebhooks, UnsubscribeWebhooks, WebhookMetrics
from webhooks.provider_routes import (
    MailgunWebhooks,
    PostmarkWebhooks,
    SendGridWebhooks,
    SesWebhooks,
)

log = logging.getLogger("outbox.webhooks")

SETTINGS = web.AppKey("settings", Settings)
BUS = web.AppKey("bus", Bus)
REDIS: web.AppKey[Client] = web.AppKey("redis")
REGISTRY = web.AppKey("registry", CollectorRegistry)


def make_app(settings: Settings, *, bus: Bus, redis: Client,
             registry: CollectorRegistry) -> web.Application:
    """The aiohttp application; connections are passed in, already open."""
    app = web.Application(client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[BUS] = bus
    app[REDIS] = redis
    app[REGISTRY] = registry
    metrics_ = WebhookMetrics(registry)
    app.router.add_routes(TwilioWebhooks(settings, bus, metrics_).routes())
    app.router.add_routes(UnsubscribeWebhooks(settings, bus, SuppressionStore(redis),
                                              metrics_, redis).routes())
    app.router.add_routes(SesWebhooks(settings, bus, metrics_).routes())
    app.router.add_routes(SendGridWebhooks(settings, bus, metrics_).routes())
    app.router.add_routes(MailgunWebhooks(settings, bus, redis, metrics_).routes())
    app.router.add_routes(PostmarkWebhooks(settings, bus, metrics_).routes())
    app.router.add_routes(AdminApi(settings, bus, redis).routes())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Ready: Client answers and the AMQP connection is open."""
    problems = []
    try:
        await request.app[REDIS].ping()
    except Exception as exc:  # any failure means not ready
        problems.append(f"redis: {type(exc).__name__}")
    connection = request.app[BUS].connection
    if connection is None or connection.is_closed:
        problems.append("amqp: not connected")
    status = 503 if problems else 200
    return web.json_response({"ok": not problems, "problems": problems}, status=status)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this process's registry."""
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
