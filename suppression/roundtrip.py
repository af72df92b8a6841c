"""One Redis round trip of many commands, on a single Redis or a Redis Cluster.

:func:`execute` sends raw commands (tuples as Redis reads them: ``("HGET", key, field)``,
``("EVALSHA", sha, numkeys, *keys, *args)``), packed by hiredis in C, and returns every reply
in order; an error reply is returned as its exception, not raised, so the caller decides
(NOSCRIPT: load and resend). A connection left mid-reply (an error, a cancellation) is dropped,
never reused: its next reader would get this call's replies.

* Single Redis: one write on one pooled connection.
* Redis Cluster (``redis.asyncio.cluster.RedisCluster``): each command goes to the primary
  that owns the slot of its key (EVALSHA/EVAL: the first key, when there is one; other
  commands: the first argument; a command without a key: the default node), with redis-py's
  own slot table (``nodes_manager``) and node connections; one write per node, the nodes
  concurrently, the replies put back in the order of ``commands``. A ``MOVED`` reply updates
  the slot table and an ``ASK`` reply sends the command to the node named (after ``ASKING``,
  in the same write); ``TRYAGAIN`` (a slot half-migrated) waits a little; only those commands
  are sent again: Redis did not run them. A connection error propagates (the callers hold the
  job and retry) and makes the client re-read the cluster's layout on its next call; so does
  :class:`ClusterBusy`, for a cluster that cannot run a command now (``CLUSTERDOWN`` during a
  failover; a multi-key script on a slot being migrated answers ``TRYAGAIN`` until the
  migration ends).

Keys of one account share a hash tag (:mod:`suppression.keys`), so a script and its keys
always meet on one node; the global keys beside it go wherever their slot lives.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

#: a client of either kind: every Redis user in Outbox takes one (sender.connect makes it)
Client: TypeAlias = Redis | RedisCluster
#: commands sent again after MOVED/ASK/TRYAGAIN before giving up (redis-py's own limit)
REDIRECTS = RedisCluster.RedisClusterRequestTTL
TRYAGAIN_WAIT = 0.05  # seconds
_SCRIPTS = frozenset({"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"})


class ClusterBusy(RedisConnectionError):
    """The cluster cannot run these commands now (down during a failover, or a slot still
    migrating after every redirection): held and retried by the callers like an outage."""


async def execute(redis: Client, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one round trip (one write per node), read every reply (an error
    reply is returned, not raised). A connection left mid-reply is dropped, not reused."""
    if isinstance(redis, RedisCluster):
        return await _on_cluster(redis, commands)
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py: unannotated
    try:
        return await _send(conn, commands)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def _send(conn: Connection, commands: list[tuple[Any, ...]]) -> list[Any]:
    """One write of every command, then every reply (errors as values)."""
    # hiredis packs in C; redis-py's asyncio connection packs argument by argument in
    # Python, which was a third of the client's time for these ~30-argument scripts
    await conn.send_packed_command(b"".join(map(hiredis.pack_command, commands)),
                                   check_health=False)
    parser = getattr(conn, "_parser", None)  # redis-py's own parts: any other shape is read
    if isinstance(parser, _AsyncHiredisParser) and getattr(parser, "_reader", None) is not None \
            and hasattr(parser, "_connected") and not conn.socket_timeout:  # the usual way
        replies = await _hiredis_replies(parser, len(commands))
        if conn.health_check_interval:  # as read_response keeps it: the connection is alive
            conn.next_health_check = (asyncio.get_running_loop().time()
                                      + conn.health_check_interval)
        return replies
    replies = []
    for _ in commands:
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


async def _hiredis_replies(parser: _AsyncHiredisParser, count: int) -> list[Any]:
    """``count`` replies straight from the connection's hiredis reader: what
    ``Connection.read_response`` returns for each (an error reply as its exception, from the
    reader's own ``replyError``), without its per-reply work (a timeout context when the
    connection has a socket timeout, which is why such a connection is not read here, the
    health-check clock, set once for the round trip). A RESP3 push between the replies goes
    to the parser's handler, as redis-py's reading does. Reading stops at a connection error,
    raised as redis-py raises it; the caller drops the connection."""
    reader = parser._reader
    assert reader is not None
    gets = reader.gets
    push = getattr(parser, "_hiredis_PushNotificationType", None)
    replies: list[Any] = []
    for _ in range(count):
        while True:
            if not parser._connected:
                raise RedisConnectionError("Connection closed by server.")
            reply = gets()
            while reply is NOT_ENOUGH_DATA:
                await parser.read_from_socket()
                reply = gets()
            if push is None or not isinstance(reply, push):
                break
            await parser.handle_push_response(reply)
        if isinstance(reply, RedisConnectionError):
            raise reply
        if isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError):
            raise reply[0]
        replies.append(reply)
    return replies


def key_of(command: tuple[Any, ...]) -> Any:
    """The key a command is routed by, or None (a command without a key)."""
    name = str(command[0]).upper()
    if name in _SCRIPTS:
        return command[3] if len(command) > 3 and int(command[2]) > 0 else None
    return command[1] if len(command) > 1 else None


def node_of(redis: RedisCluster, command: tuple[Any, ...]) -> ClusterNode:
    """The primary that serves ``command``'s key (the default node for none)."""
    key = key_of(command)
    if key is None:
        return redis.get_default_node()
    return redis.nodes_manager.get_node_from_slot(redis.keyslot(key))


async def _on_cluster(redis: RedisCluster, commands: list[tuple[Any, ...]]) -> list[Any]:
    await redis.initialize()  # no-op once the slot table is read (again after an outage)
    replies: list[Any] = [None] * len(commands)
    pending = list(range(len(commands)))
    asked: dict[int, ClusterNode] = {}  # command -> the node an ASK named
    for _ in range(REDIRECTS):
        groups: dict[ClusterNode, list[int]] = {}
        for i in pending:
            node = asked.get(i) or node_of(redis, commands[i])
            groups.setdefault(node, []).append(i)
        sends = [_on_node(redis, node, [(commands[i], i in asked) for i in idx])
                 for node, idx in groups.items()]
        answers = [await sends[0]] if len(sends) == 1 else _raise_first(
            await asyncio.gather(*sends, return_exceptions=True))
        pending, asked, wait = [], {}, False
        for idx, got in zip(groups.values(), answers, strict=True):
            for i, reply in zip(idx, got, strict=True):
                if isinstance(reply, MovedError):
                    await redis.nodes_manager.move_slot(reply)
                elif isinstance(reply, AskError):
                    asked[i] = _asked_node(redis, reply)
                elif isinstance(reply, TryAgainError):
                    wait = True
                elif isinstance(reply, ClusterDownError):
                    redis._initialize = True  # the layout is changing: read it again
                    raise ClusterBusy(f"Redis Cluster: {reply}")
                else:
                    replies[i] = reply
                    continue
                pending.append(i)
        if not pending:
            return replies
        if wait:
            await asyncio.sleep(TRYAGAIN_WAIT)
    raise ClusterBusy(f"Redis Cluster: {len(pending)} commands still redirected after "
                      f"{REDIRECTS} tries (a slot being migrated?)")


async def _on_node(redis: RedisCluster, node: ClusterNode,
                   commands: list[tuple[tuple[Any, ...], bool]]) -> list[Any]:
    """One write to ``node`` (``ASKING`` before each command flagged so); the replies of the
    commands (not of the ASKINGs)."""
    wire: list[tuple[Any, ...]] = []
    for command, asking in commands:
        if asking:
            wire.append(("ASKING",))
        wire.append(command)
    conn = node.acquire_connection()
    try:
        await node.disconnect_if_needed(conn)  # marked after a layout change: reconnect
        got = await _send(conn, wire)
    except BaseException:
        await conn.disconnect()
        # the node failed mid-call (down, hung, failed over): as redis-py does, try it last
        # and read the cluster's layout again on the next call
        redis.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
        redis._initialize = True
        raise
    finally:
        node.release(conn)
    replies = iter(got)
    out = []
    for _, asking in commands:
        if asking:
            next(replies)  # ASKING's +OK
        out.append(next(replies))
    return out


def _raise_first(answers: list[list[Any] | BaseException]) -> list[list[Any]]:
    """The nodes' replies; a node that failed fails the whole call (the caller retries)."""
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return [a for a in answers if not isinstance(a, BaseException)]


def _asked_node(redis: RedisCluster, error: AskError) -> ClusterNode:
    node = redis.nodes_manager.get_node(host=error.host, port=error.port)
    if node is None:  # a node the layout does not know yet: add it, as redis-py does
        node = ClusterNode(error.host, error.port, "primary",
                           **redis.nodes_manager.connection_kwargs)
        redis.nodes_manager.set_nodes(redis.nodes_manager.nodes_cache, {node.name: node})
    return node

