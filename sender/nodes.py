"""Several RabbitMQ nodes behind ``OUTBOX_AMQP_URL`` (comma-separated: the nodes of a
cluster, any of which will do).

:func:`connect_amqp` tries the nodes in order and keeps the first that answers; its
:class:`ClusterConnection` is aio-pika's robust connection, which, when that node dies, tries
the next node of the list (then the next, round and round) and restores its channels and
consumers there. The queues are quorum queues (:mod:`sender.topology`), replicated on the
cluster's nodes, so a node's loss costs the deliveries in flight on it (redelivered from
another replica, the gate refusing a second send of any already settled) and the seconds to
reconnect, nothing else. Each move is one WARNING line of ``outbox.connect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aio_pika
from aio_pika.connection import make_url
from aio_pika.exceptions import AMQPError
from aiormq.exceptions import AMQPError as AiormqError

from config import split_urls
from sender.connect import CONNECT_TIMEOUT, ServiceRefused, amqp_error

log = logging.getLogger("outbox.connect")
C = TypeVar("C", bound=aio_pika.Connection)


class ClusterConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, over the nodes of a cluster: every attempt that fails and
    every connection lost moves the next attempt to the next node of the list (round and
    round), so a dead node is left for one that answers. aio-pika then restores the channels
    and consumers on the new node. One URL: exactly aio-pika's connection."""

    def __init__(self, url: Any, *, urls: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._nodes = [make_url(u) for u in urls] or [self.url]
        self._at = self._nodes.index(self.url) if self.url in self._nodes else 0
        self._opened = False  # the first attempt's failure is connect_amqp's to tell

    async def _on_connected(self) -> None:
        self._opened = True
        await super()._on_connected()

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        """Called by aio-pika when a connection is lost or an attempt failed (before its
        next attempt): point :attr:`url` at the next node."""
        if len(self._nodes) > 1 and self._opened and not self.close_called:
            lost = self.url
            self._at = (self._at + 1) % len(self._nodes)
            self.url = self._nodes[self._at]
            log.warning("RabbitMQ node %s lost or unreachable; next attempt at %s",
                        _node(lost), _node(self.url), extra={
                            "node": _node(lost), "next_node": _node(self.url)})
        await super()._on_connection_close(closing)

    @property
    def node(self) -> str:
        """``host:port`` of the node this connection is at (or tries next)."""
        return _node(self.url)


def _node(url: Any) -> str:
    return f"{url.host}:{url.port}"


async def connect_amqp(urls: str, *, setting: str | None = "OUTBOX_AMQP_URL",
                       name: str = "outbox", within: float = CONNECT_TIMEOUT
                       ) -> ClusterConnection:
    """A :class:`ClusterConnection` to the first node of ``urls`` (one AMQP URL, or several
    comma-separated) that answers, tried in order, each given ``within`` seconds (at every
    reconnect too); it moves on to the next node when its node dies. Raises
    :class:`ServiceRefused` at once for a refused login or vhost (a setting is wrong, the
    other nodes would say the same), :class:`ServiceUnreachable` naming every node when
    none answers."""
    def robust(url: str, order: list[str]) -> ClusterConnection:
        return ClusterConnection(make_url(url), urls=order, fail_fast=True,
                                 client_properties={"connection_name": name})

    return await _first(urls, robust, setting, within)


async def probe_nodes(urls: str, *, setting: str | None = "OUTBOX_AMQP_URL",
                      within: float = CONNECT_TIMEOUT) -> None:
    """Open and close one plain connection to the first node of ``urls`` that answers;
    raise as :func:`connect_amqp` does."""
    def plain(url: str, order: list[str]) -> aio_pika.Connection:
        return aio_pika.Connection(make_url(url),
                                   client_properties={"connection_name": "outbox probe"})

    connection = await _first(urls, plain, setting, within)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), within)


async def _first(urls: str, make: Callable[[str, list[str]], C], setting: str | None,
                 within: float) -> C:
    """``make(url, nodes from that one on)`` for each node in turn, until one connects."""
    nodes = split_urls(urls)
    failure: BaseException | None = None
    for at, url in enumerate(nodes):
        connection, node = make(url, nodes[at:] + nodes[:at]), _node(make_url(url))
        try:
            # the timeout is kept for every reconnect: a node whose host is gone (no RST)
            # is given up after it, not after the system's TCP timeout of minutes
            await connection.connect(timeout=within)
        except (AMQPError, AiormqError, OSError) as exc:
            with contextlib.suppress(Exception):
                await connection.close()
            error = amqp_error(url, exc, setting)
            if isinstance(error, ServiceRefused):
                raise error from None
            failure = exc
            if len(nodes) > 1:
                log.warning("RabbitMQ node %s: %s; trying the next", node, error.why,
                            extra={"node": node})
            continue
        return connection
    assert failure is not None
    raise amqp_error(urls, failure, setting) from None
