"""What the HTTP server answers while Redis or RabbitMQ cannot be reached: a JSON ``503``
naming the dependency and why, with no traceback (aiohttp's own answer was a plain-text
``500 Internal Server Error`` and a traceback in the log for every request)::

    503 {"error": "Redis is unreachable; try again later", "dependency": "redis",
         "cause": "connection refused"}       with Retry-After: 5

The outage is told to the process's tracker (:mod:`sender.outages`): one WARNING when it
starts, one INFO when it ends, not a line per request.
"""

from __future__ import annotations

import logging

from aio_pika.exceptions import AMQPError
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiormq.exceptions import AMQPError as AiormqError
from aiormq.exceptions import ChannelInvalidStateError

from sender.bus import PublishFailed
from sender.connect import REDIS_DOWN, SERVICES
from sender.outages import RABBITMQ, REDIS, WATCH_PERIOD, Dependencies

log = logging.getLogger("outbox.webhooks")

#: what a handler lets escape when the broker cannot be reached or did not take a message
BROKER_DOWN: tuple[type[BaseException], ...] = (PublishFailed, AMQPError, AiormqError,
                                                ChannelInvalidStateError)
_NAMES = {REDIS: SERVICES["redis"][0], RABBITMQ: SERVICES["amqp"][0]}


def outage_middleware(dependencies: Dependencies) -> Middleware:
    """The middleware that answers a request whose handler found Redis or RabbitMQ
    unreachable with a JSON 503, and tells the tracker."""

    @web.middleware
    async def unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except REDIS_DOWN as exc:
            return _unavailable(dependencies, REDIS, exc, request)
        except BROKER_DOWN as exc:
            return _unavailable(dependencies, RABBITMQ, exc, request)

    return unavailable


def _unavailable(dependencies: Dependencies, dependency: str, exc: BaseException,
                 request: web.Request) -> web.Response:
    tracker = dependencies[dependency]
    tracker.failed(exc)
    log.debug("%s %s: %s unreachable: %s", request.method, request.path, dependency,
              tracker.cause)
    body = {"error": f"{_NAMES[dependency]} is unreachable; try again later",
            "dependency": dependency, "cause": tracker.cause}
    return web.json_response(body, status=503,
                             headers={"Retry-After": str(int(WATCH_PERIOD))})
