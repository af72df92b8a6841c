"""How a round trip's commands are routed on a Redis Cluster (by the slot of their key), and
that one round trip on a single Redis stays one write on one pooled connection."""

from __future__ import annotations

import pytest

from suppression.roundtrip import execute, key_of


@pytest.mark.parametrize(("command", "key"), [
    (("EVALSHA", "abc", 2, "outbox:{acct:a}:job:1", "outbox:{acct:a}:state", "x"),
     "outbox:{acct:a}:job:1"),
    (("EVAL", "return 1", 0, "arg"), None),  # no key: any primary
    (("HGET", "outbox:supp:email:a@example.com", "reason"), "outbox:supp:email:a@example.com"),
    (("SADD", "outbox:accounts", "a"), "outbox:accounts"),
    (("PING",), None),
])
def test_a_command_is_routed_by_its_key(command: tuple, key: str | None) -> None:
    assert key_of(command) == key


async def test_one_round_trip_is_one_write_on_one_connection(redis, monkeypatch) -> None:
    """On a single Redis: every reply in order, an error reply returned, not raised."""
    from redis.asyncio.connection import AbstractConnection

    writes: list[object] = []
    real = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: object, check_health: bool = True
                      ) -> None:
        writes.append((id(self), command))
        await real(self, command, check_health)

    await redis.ping()  # the pool's connection made (its handshake is not the round trip)
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    replies = await execute(redis, [("SET", "k", "1"), ("HGET", "k", "f"), ("GET", "k")])
    assert len(writes) == 1
    assert replies[0] == b"OK"
    assert "WRONGTYPE" in str(replies[1]) and replies[2] == b"1"


_MIXED = [("SET", "rt:k", "1"), ("HGET", "rt:k", "f"), ("GET", "rt:k"),
          ("EVALSHA", "0" * 40, 0), ("RPUSH", "rt:l", "a", "b"), ("LRANGE", "rt:l", 0, -1),
          ("EVAL", "return {1, {2, 'x'}, redis.error_reply('mine')}", 0), ("GET", "rt:none"),
          ("DEL", "rt:k", "rt:l")]


def _plain(reply: object) -> object:
    """A reply with its errors as (type, text), to compare."""
    if isinstance(reply, Exception):
        return (type(reply), str(reply))
    if isinstance(reply, list):
        return [_plain(r) for r in reply]
    return reply


async def test_replies_read_from_hiredis_are_the_replies_read_one_by_one(
        redis_url: str) -> None:
    """The worker's client (no socket timeout) reads a round trip's replies straight from
    its hiredis reader: the same values, error replies as the same exceptions, as a client
    that reads them through redis-py one by one."""
    from redis.exceptions import NoScriptError, ResponseError

    from sender.connect import redis_client
    from suppression import roundtrip

    fast, slow = redis_client(redis_url, socket_timeout=None), redis_client(redis_url)
    taken: list[int] = []
    real = roundtrip._hiredis_replies

    async def counted(parser: object, count: int) -> list[object]:
        taken.append(count)
        return await real(parser, count)  # type: ignore[arg-type]

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(roundtrip, "_hiredis_replies", counted)
            got = await execute(fast, _MIXED)
            expected = await execute(slow, _MIXED)
        assert taken == [len(_MIXED)]  # only the client without a socket timeout
        assert _plain(got) == _plain(expected)
        assert isinstance(got[3], NoScriptError) and isinstance(got[1], ResponseError)
        assert got[5] == [b"a", b"b"] and got[7] is None
    finally:
        await fast.aclose()
        await slow.aclose()


async def test_a_connection_closed_before_every_reply_came_fails_and_is_dropped(
        redis_url: str) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from sender.connect import redis_client

    client = redis_client(redis_url, socket_timeout=None)
    try:
        with pytest.raises(RedisConnectionError):  # QUIT: Redis answers, then hangs up
            await execute(client, [("PING",), ("QUIT",), ("PING",)])
        assert (await execute(client, [("ECHO", "again")]))[0] == b"again"  # a new one
    finally:
        await client.aclose()
