"""The HTTP server: provider webhooks, unsubscribe, the admin API, metrics and health.

Slow clients are cut (:func:`make_runner`, :func:`read_body_in_time`):

==================  ===========================  ==========================================
phase               bound                        then
==================  ===========================  ==========================================
idle, or headers    ``OUTBOX_HTTP_IDLE_TIMEOUT`` closed (aiohttp's keep-alive timer: armed
still coming                                     when the connection opens and after each
                                                 answer, it closes a connection whose next
                                                 request has not been read whole)
body                ``OUTBOX_HTTP_BODY_TIMEOUT`` 408, ``Connection: close``
                    after the headers
body larger than    ``MAX_BODY`` (decompressed)  413
body unreadable     (bad chunking or encoding)   400
==================  ===========================  ==========================================

Every body is read here, before any handler runs, so no handler waits on a slow client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from config import Settings
from sender.bus import Bus
from sender.outages import Dependencies, Watch
from suppression.roundtrip import Client
from suppression.store import SuppressionStore
from webhooks.admin import AdminApi
from webhooks.handlers import UnsubscribeWebhooks, WebhookMetrics
from webhooks.outages import outage_middleware
from webhooks.providers.routes import (
    MailgunWebhooks,
    PostmarkWebhooks,
    SendGridWebhooks,
    SesWebhooks,
    TwilioWebhooks,
)

log = logging.getLogger("outbox.webhooks")
#: the HTTP server's own log (aiohttp's, through :class:`ClientFaults`)
server_log = logging.getLogger("outbox.http")

SETTINGS = web.AppKey("settings", Settings)
BUS = web.AppKey("bus", Bus)
REDIS: web.AppKey[Client] = web.AppKey("redis")
REGISTRY = web.AppKey("registry", CollectorRegistry)
#: the largest request body, decompressed (413 above it); providers post a few kilobytes
MAX_BODY = 1024 * 1024
#: after an answer to a body that was not read whole (too slow, too large), the rest is read
#: and dropped this long before the connection closes, so the client can read the answer
#: (aiohttp's default is 10 s, which a slow client would stretch)
LINGER = 2.0


def make_app(settings: Settings, *, bus: Bus, redis: Client, registry: CollectorRegistry,
             dependencies: Dependencies | None = None) -> web.Application:
    """The aiohttp application; connections are passed in, already open. ``dependencies``:
    the process's outage trackers (made on ``registry`` when not given); a Redis or broker
    outage is answered with a JSON 503 (:mod:`webhooks.outages`) and watched while the app
    runs. Every body is read whole first (:func:`read_body_in_time`)."""
    dependencies = dependencies or Dependencies(registry)
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[outage_middleware(dependencies),
                                       read_body_in_time(settings.http_body_timeout)])
    app.cleanup_ctx.append(_watching(Watch(dependencies, redis=redis,
                                           connection=lambda: bus.connection)))
    app[SETTINGS] = settings
    app[BUS] = bus
    app[REDIS] = redis
    app[REGISTRY] = registry
    metrics_ = WebhookMetrics(registry)
    app.router.add_routes(TwilioWebhooks(settings, bus, redis, metrics_).routes())
    app.router.add_routes(UnsubscribeWebhooks(settings, bus, SuppressionStore(redis),
                                              metrics_, redis).routes())
    app.router.add_routes(SesWebhooks(settings, bus, redis, metrics_).routes())
    app.router.add_routes(SendGridWebhooks(settings, bus, redis, metrics_).routes())
    app.router.add_routes(MailgunWebhooks(settings, bus, redis, metrics_).routes())
    app.router.add_routes(PostmarkWebhooks(settings, bus, redis, metrics_).routes())
    app.router.add_routes(AdminApi(settings, bus, redis).routes())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def _watching(watch: Watch) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        watch.start()
        yield
        await watch.stop()
    return run


class ClientFaults(logging.Filter):
    """aiohttp logs every request its parser cannot read (a header line over 8 KB, broken
    chunking) at ERROR with a traceback, though it answers 400: a client's fault, which
    anyone can send. Such a record becomes one WARNING line; every other is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"[:500]
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


server_log.addFilter(ClientFaults())


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner of ``app`` with the idle and header bound (``keepalive_timeout``) from
    ``settings``, logging to ``outbox.http``; start it with ``runner.setup()`` and a
    ``web.TCPSite``."""
    return web.AppRunner(app, access_log=None, keepalive_timeout=settings.http_idle_timeout,
                         lingering_time=LINGER, logger=server_log)


def read_body_in_time(timeout: float) -> Middleware:
    """A middleware reading every request body whole within ``timeout`` seconds before the
    handler runs: 408 (and the connection closed) for a body that trickles, 400 for one
    whose transfer encoding cannot be read, 413 above :data:`MAX_BODY`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(timeout):
                    await request.read()  # kept: the handler's read() returns it
            except TimeoutError:
                log.warning("request body not received within %g s; connection closed",
                            timeout, extra={"path": request.path, "remote": request.remote})
                raise _closing(web.HTTPRequestTimeout(text="request body too slow")) from None
            except RequestPayloadError as exc:
                return await _answered_and_closed(request, f"unreadable body: {exc}"[:200])
            except ConnectionError:  # the client left mid-body: nobody to answer
                gone = web.Response(status=400, text="connection lost")
                gone.force_close()
                return gone
        return await handler(request)

    return middleware


async def _answered_and_closed(request: web.Request, text: str) -> web.StreamResponse:
    """400, written, then the connection closed at once: the parser gave up on the body
    (bad chunking, bad gzip), and aiohttp's lingering read would raise its error again,
    unhandled, with a traceback in the log."""
    response = web.Response(status=400, text=text)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()  # the answer is flushed before the socket closes
    return response


def _closing(error: web.HTTPException) -> web.HTTPException:
    """``error`` answered with the connection closed after it (the body is not whole)."""
    error.force_close()
    return error


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
