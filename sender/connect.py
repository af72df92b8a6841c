"""Reaching RabbitMQ and Redis: the Redis client, and one readable line when a service is not
there.

:func:`redis_client` is the one place a Redis client is made: ``redis.asyncio.Redis``, or
``redis.asyncio.cluster.RedisCluster`` when ``OUTBOX_REDIS_CLUSTER`` says ``OUTBOX_REDIS_URL``
names a node of a Redis Cluster (the client reads the other nodes from it).

A connection that is refused, times out or names an unknown host becomes
:class:`ServiceUnreachable`; a server that answers but refuses the login (wrong password, unknown
vhost or db), or a Redis that is not what ``OUTBOX_REDIS_CLUSTER`` says (a cluster node used
without it: every key on another node would fail with MOVED; a plain Redis named as a cluster
node) becomes :class:`ServiceRefused`. Either message is one line naming the service, the
URL with its password masked, the setting it came from and what to do::

    cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:5672/ (OUTBOX_AMQP_URL): connection
    refused; is RabbitMQ running? start it with `make services` or set OUTBOX_AMQP_URL

``OUTBOX_AMQP_URL`` may list the nodes of a RabbitMQ cluster, comma-separated: the connection
(:mod:`sender.nodes`) is to the first that answers, and when that node dies it moves on to the
next of the list; the unreachable message then names every node.

One-shot commands print it and exit 1 (2 for a refused login: a setting is wrong); the
long-running ones wait with :func:`wait_for_services`, retrying with backoff, one log line an
attempt, until the services are up or the process is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AuthenticationError as RedisAuthError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import split_urls
from suppression.roundtrip import Client

log = logging.getLogger("outbox.connect")

#: service key -> (name for people, the setting holding its URL)
SERVICES = {"amqp": ("RabbitMQ", "OUTBOX_AMQP_URL"), "redis": ("Redis", "OUTBOX_REDIS_URL")}
#: seconds between start-up attempts; the last one repeats
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: one attempt to reach a service at start (a host that drops packets must not hang it)
CONNECT_TIMEOUT = 10.0
#: What redis-py raises for a server that cannot be reached or stops answering (a refused
#: login is its subclass AuthenticationError, told apart by :func:`redis_error`)
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
#: ... and what else a first ping can raise: our own time limit, a refused db or password
_REDIS_AT_CONNECT: tuple[type[BaseException], ...] = (*REDIS_DOWN, OSError, RedisResponseError)


def redis_client(url: str, *, cluster: bool = False, socket_timeout: float | None = 5.0,
                 socket_connect_timeout: float = 5.0, **options: Any) -> Client:
    """The Redis client for ``url``: a pool on one Redis, or with ``cluster`` a Redis Cluster
    client (a pool per node) that finds the nodes from the one named, or from the first that
    answers of several, comma-separated (so a node down at start-up does not stop it).
    ``options``: more connection settings (``max_connections`` is per node on a cluster)."""
    urls = split_urls(url)
    if cluster and len(urls) > 1:
        first = urlsplit(urls[0])
        nodes = [ClusterNode(p.hostname or "127.0.0.1", p.port or 6379)
                 for p in map(urlsplit, urls)]
        return RedisCluster(startup_nodes=nodes, username=unquote(first.username or "") or None,
                            password=unquote(first.password or "") or None,
                            ssl=first.scheme == "rediss", socket_timeout=socket_timeout,
                            socket_connect_timeout=socket_connect_timeout, **options)
    factory = RedisCluster.from_url if cluster else Redis.from_url
    return factory(url, socket_timeout=socket_timeout,
                   socket_connect_timeout=socket_connect_timeout, **options)


class ServiceUnreachable(ConnectionError):
    """A service could not be reached; worth retrying. ``str()`` is the one line to print."""

    def __init__(self, service: str, url: str, why: str, setting: str | None) -> None:
        name = SERVICES.get(service, (service, None))[0]
        where = f"{name} at {mask_url(url)}" + (f" ({setting})" if setting else "")
        todo = f"is {name} running? start it with `make services`" + (
            f" or set {setting}" if setting else "")
        super().__init__(f"cannot reach {where}: {why}; {todo}")
        self.service, self.setting, self.url, self.why = service, setting, mask_url(url), why


class ServiceRefused(RuntimeError):
    """A service answered but refused us (login, vhost, db): a setting is wrong, retrying
    will not help. ``str()`` is the one line to print."""

    def __init__(self, service: str, url: str, why: str, setting: str | None) -> None:
        name = SERVICES.get(service, (service, None))[0]
        where = f"{name} at {mask_url(url)}" + (f" ({setting})" if setting else "")
        fix = "check the user, password and vhost" if service == "amqp" else \
            "check the password and db number"
        super().__init__(f"{where} refused the connection: {why}; {fix}"
                         + (f" in {setting}" if setting else ""))
        self.service, self.setting, self.url, self.why = service, setting, mask_url(url), why


class RedisModeMismatch(ServiceRefused):
    """``OUTBOX_REDIS_CLUSTER`` and the Redis at ``OUTBOX_REDIS_URL`` disagree."""

    def __init__(self, url: str, *, cluster_node: bool, setting: str | None) -> None:
        where = f"Redis at {mask_url(url)}" + (f" ({setting})" if setting else "")
        if cluster_node:
            why_ = ("is a Redis Cluster node; set OUTBOX_REDIS_CLUSTER=true (a single-node "
                    "client gets MOVED for every key another node holds)")
        else:
            why_ = ("is not a Redis Cluster node (cluster mode is not enabled there); unset "
                    "OUTBOX_REDIS_CLUSTER or set OUTBOX_REDIS_URL to a node of the cluster")
        RuntimeError.__init__(self, f"{where} {why_}")
        self.service, self.setting, self.url, self.why = "redis", setting, mask_url(url), why_


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo or a ``password=`` query value) as ``***``; a
    comma-separated list of URLs, each so."""
    if "," in url:
        return ",".join(mask_url(one) for one in split_urls(url))
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if "password" in query.lower():
        query = urlencode([(k, "***" if k.lower() == "password" else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (each once)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def why(exc: BaseException) -> str:
    """A few words for people on why a connection failed (from the OS error underneath)."""
    chain = causes(exc)
    for err in chain:
        if isinstance(err, socket.gaierror):
            return f"unknown host ({err.strerror})"
        if isinstance(err, ConnectionRefusedError) or (
                isinstance(err, OSError) and err.errno == errno.ECONNREFUSED):
            return "connection refused"
        if isinstance(err, TimeoutError):
            return "timed out"
    for err in chain:
        if isinstance(err, OSError) and isinstance(err.strerror, str) and err.strerror:
            return err.strerror.lower()
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def amqp_error(url: str, exc: BaseException, setting: str | None = "OUTBOX_AMQP_URL"
               ) -> ServiceUnreachable | ServiceRefused:
    """What a failed AMQP connect means: refused by the broker (login, vhost) or unreachable."""
    from aiormq.exceptions import AuthenticationError, ProbableAuthenticationError

    if isinstance(exc, AuthenticationError | ProbableAuthenticationError):
        return ServiceRefused("amqp", url, "login refused", setting)
    if "Connection.OpenOk" in str(exc):  # the broker closed at Connection.Open: no such vhost
        vhost = urlsplit(url).path.lstrip("/") or "/"
        return ServiceRefused("amqp", url, f"vhost {vhost!r} not found or not allowed", setting)
    return ServiceUnreachable("amqp", url, why(exc), setting)


def redis_error(url: str, exc: BaseException, setting: str | None = "OUTBOX_REDIS_URL"
                ) -> ServiceUnreachable | ServiceRefused:
    """What a failed Redis call at connect means: refused (password, db) or unreachable."""
    if isinstance(exc, RedisAuthError | RedisResponseError):
        return ServiceRefused("redis", url, " ".join(str(exc).split())[:200], setting)
    return ServiceUnreachable("redis", url, why(exc), setting)


async def ping_redis(redis: Client, url: str, *, setting: str | None = "OUTBOX_REDIS_URL",
                     within: float = CONNECT_TIMEOUT) -> None:
    """Check ``redis`` answers, and is what the client takes it for (a cluster node or not);
    raise :class:`ServiceUnreachable` / :class:`ServiceRefused`. On a cluster every node
    answers (the ping goes to each)."""
    try:
        await asyncio.wait_for(_ping(redis, url, setting), within)
    except RedisClusterException as exc:
        raise _cluster_error(url, exc, setting) from None
    except _REDIS_AT_CONNECT as exc:
        raise redis_error(url, exc, setting) from None


async def _ping(redis: Client, url: str, setting: str | None) -> None:
    if isinstance(redis, RedisCluster):  # every primary: the worker talks to each
        await redis.execute_command("PING", target_nodes=RedisCluster.PRIMARIES)
        return
    await redis.ping()
    try:
        info = await redis.info("cluster")
    except RedisResponseError:  # INFO renamed away: nothing more to learn
        return
    if info.get("cluster_enabled"):
        raise RedisModeMismatch(url, cluster_node=True, setting=setting)


def _cluster_error(url: str, exc: RedisClusterException, setting: str | None
                   ) -> ServiceUnreachable | ServiceRefused:
    """What a failed first contact with a cluster means: no node reached, a login refused,
    or a node that is no cluster node."""
    chain = causes(exc)
    for err in chain:
        if isinstance(err, RedisAuthError) or "NOAUTH" in str(err) or "WRONGPASS" in str(err):
            return redis_error(url, RedisAuthError(str(err)), setting)
    if any("Cluster mode is not enabled" in str(err) for err in chain):
        return RedisModeMismatch(url, cluster_node=False, setting=setting)
    down = next((e for e in chain if isinstance(e, (*REDIS_DOWN, OSError))), exc)
    return ServiceUnreachable("redis", url, why(down), setting)


async def probe_amqp(url: str, *, setting: str | None = "OUTBOX_AMQP_URL",
                     within: float = CONNECT_TIMEOUT) -> None:
    """Open and close one AMQP connection (to any node of the list); raise as
    :func:`amqp_error` says."""
    from sender.nodes import probe_nodes

    await probe_nodes(url, setting=setting, within=within)


async def probe_redis(url: str, *, setting: str | None = "OUTBOX_REDIS_URL",
                      within: float = CONNECT_TIMEOUT, cluster: bool = False) -> None:
    """Ping Redis at ``url`` once with its own client."""
    redis = redis_client(url, cluster=cluster, socket_connect_timeout=within,
                         socket_timeout=within)
    try:
        await ping_redis(redis, url, setting=setting, within=within)
    finally:
        await redis.aclose()


async def wait_for_services(urls: dict[str, str], stop: asyncio.Event, *,
                            delays: Iterable[float] = RETRY_DELAYS,
                            redis_cluster: bool = False) -> bool:
    """Probe each service of ``urls`` (``{"amqp": url, "redis": url}``) until all answer,
    logging one line per unreachable service and attempt, waiting with backoff in between.
    True once all are up; False when ``stop`` is set first (at once, even mid-probe).
    A refused login raises :class:`ServiceRefused` (retrying would not help), and so does a
    Redis that is a cluster node when ``redis_cluster`` is false, or the reverse."""
    probes: dict[str, Callable[[str], Awaitable[None]]] = {
        "amqp": probe_amqp,
        "redis": lambda url: probe_redis(url, cluster=redis_cluster)}
    steps = list(delays)
    attempt = 0
    while True:
        attempt += 1
        down: list[ServiceUnreachable] = []
        for service, url in urls.items():
            try:
                if not await _unless_stopped(probes[service](url), stop):
                    return False
            except ServiceUnreachable as exc:
                down.append(exc)
        if not down:
            if attempt > 1:
                log.info("%s reachable: starting", " and ".join(
                    SERVICES[s][0] for s in urls), extra={"attempt": attempt})
            return True
        delay = steps[min(attempt - 1, len(steps) - 1)]
        for failure in down:
            log.error("%s (attempt %d, retrying in %g s)", failure, attempt, delay,
                      extra={"setting": failure.setting, "url": failure.url,
                             "attempt": attempt, "retry_in": delay})
        if not await _unless_stopped(asyncio.sleep(delay), stop):
            return False


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it): True when it finished."""
    if stop.is_set():
        if asyncio.iscoroutine(work):
            work.close()
        return False
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False
    task.result()  # raises what the probe raised
    return True
