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
