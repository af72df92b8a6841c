"""Fixtures shared by the integration tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.helpers import cli_runner


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, amqp_url: str, redis_url: str) -> Any:
    """``await cli("accounts", "show", ...)``: the CLI in process on this test's services."""
    return cli_runner(monkeypatch, amqp_url, redis_url)
