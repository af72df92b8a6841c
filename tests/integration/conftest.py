"""Fixtures shared by the integration tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.helpers import cli_runner


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, amqp_url: str,
        backend_redis_url: tuple[str, bool]) -> Any:
    """``await cli("accounts", "show", ...)``: the CLI in process on this test's services
    (its Redis db, or the Redis Cluster for a test marked ``backends``)."""
    url, cluster = backend_redis_url
    return cli_runner(monkeypatch, amqp_url, url, cluster=cluster)
