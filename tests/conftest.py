"""Shared fixtures: real RabbitMQ and Redis (started here if not running, stopped by PID
afterwards), a fresh vhost and a wiped Redis db per test, and an aiosmtpd server per test
with per-recipient switches for 4xx/5xx replies."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import services  # noqa: E402  (scripts/services.py)

PROFILE = services.PROFILES["test"]


@pytest.fixture(scope="session")
def broker() -> Iterator[services.Profile]:
    """RabbitMQ and Redis for the test session: reused when up, else started and stopped."""
    redis_started = services.start_redis(PROFILE)
    rabbit_started = services.start_rabbitmq(PROFILE)
    yield PROFILE
    if rabbit_started:  # only what this session started is stopped
        services.stop_rabbitmq(PROFILE)
    if redis_started:
        services.stop_redis(PROFILE)


@pytest.fixture
def amqp_url(broker: services.Profile) -> Iterator[str]:
    """A fresh vhost for this test, deleted afterwards."""
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    yield services.add_vhost(PROFILE, vhost)
    services.management(PROFILE, "DELETE", f"vhosts/{vhost}")


@pytest.fixture
def redis_url(broker: services.Profile) -> Iterator[str]:
    """A Redis db of this test process (so parallel runs do not share one), wiped first."""
    import os

    import redis

    url = f"redis://127.0.0.1:{PROFILE.redis_port}/{os.getpid() % 62 + 1}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@dataclass
class Recorder:
    """What the test SMTP server received, and the switches that make it refuse."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)  # rcpt -> "550 5.1.1 ..." reply
    delay: float = 0.0

    def by_rcpt(self, rcpt: str) -> list[bytes]:
        return [data for _, rcpts, data in self.messages if rcpt in rcpts]


class RecordingHandler:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        reply = self.recorder.replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.recorder.delay:
            await asyncio.sleep(self.recorder.delay)
        self.recorder.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return f"250 2.0.0 Ok: queued as Q{len(self.recorder.messages)}"


@pytest_asyncio.fixture
async def smtp_server() -> AsyncIterator[tuple[str, Recorder]]:
    """An aiosmtpd server on a free port in this test's loop: (smtp_url, recorder)."""
    from aiosmtpd.smtp import SMTP

    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(RecordingHandler(recorder), enable_SMTPUTF8=True, hostname="test-mx"),
        host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    yield f"smtp://127.0.0.1:{port}", recorder
    server.close()
    await server.wait_closed()


@pytest.fixture
def make_settings(amqp_url: str, redis_url: str) -> Any:
    """Build settings for this test's vhost and Redis db, with overrides."""
    from config import load_settings

    def _make(**overrides: Any) -> Any:
        base = {"amqp_url": amqp_url, "redis_url": redis_url, "retry_tiers": (1, 2),
                "shutdown_grace": 5.0, "smtp_timeout": 5.0, "metrics_port": 0}
        return load_settings(**{**base, **overrides})

    return _make
