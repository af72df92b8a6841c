"""Fixtures of the unit tests that run the gate's Lua on the test Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sender.connect import redis_client
from suppression.gate import Gate
from suppression.reputation import Policy
from suppression.roundtrip import Client


@pytest.fixture
async def redis(backend_redis_url: tuple[str, bool]) -> AsyncIterator[Client]:
    """A client on this test's wiped Redis db, or (tests marked ``backends``) on the cluster."""
    url, cluster = backend_redis_url
    client = redis_client(url, cluster=cluster)
    yield client
    await client.aclose()


@pytest.fixture
def gate(redis: Client) -> Gate:
    """A gate with a rate high enough that the token bucket never decides a test."""
    return Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000))
