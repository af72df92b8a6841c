"""Fixtures of the unit tests that run the gate's Lua on the test Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from suppression.gate import Gate
from suppression.reputation import Policy


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on this test's wiped Redis db."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def gate(redis: Redis) -> Gate:
    """A gate with a rate high enough that the token bucket never decides a test."""
    return Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000))
