"""Outages seen and said quietly (sender.outages, webhooks.outages): Redis or RabbitMQ made
unreachable for a worker and the admin API of one process (as ``outbox run`` is) through a TCP
proxy in front of the real servers (never pausing the servers other tests share): one WARNING
when it starts, one INFO when it ends with how long and how many jobs waited, a JSON 503 from
the admin API with no traceback, ``outbox_dependency_up`` 0 during and 1 after."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sender.bus import Bus
from sender.outages import Dependencies
from sender.service import make_redis, started_worker
from tests.integration.helpers import collect, email_job, events, publish
from tests.integration.proxy import TcpProxy
from webhooks.app import make_app

pytestmark = pytest.mark.integration
TOKEN = "admin-token-for-outage-tests"


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def _one_process(settings: Any, port: int) -> AsyncIterator[tuple[str, CollectorRegistry]]:
    """A worker and the HTTP server in this loop sharing one registry and one set of outage
    trackers, as ``outbox run`` does; yields (base URL, registry)."""
    registry = CollectorRegistry()
    deps = Dependencies(registry)
    async with started_worker(settings, registry, deps):
        bus = Bus.from_settings(settings)
        await bus.connect()
        redis = make_redis(settings)
        runner = web.AppRunner(make_app(settings, bus=bus, redis=redis, registry=registry,
                                        dependencies=deps))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            yield f"http://127.0.0.1:{port}", registry
        finally:
            await runner.cleanup()
            await bus.close()
            await redis.aclose()


def _up(registry: CollectorRegistry, dependency: str) -> float | None:
    return registry.get_sample_value("outbox_dependency_up", {"dependency": dependency})


def _waited(registry: CollectorRegistry, dependency: str) -> float | None:
    return registry.get_sample_value("outbox_dependency_wait_seconds_total",
                                     {"dependency": dependency})


async def _until(check: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.1)
    return bool(check())


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "outbox.outage"]


async def test_redis_outage_one_warning_one_info_json_503_and_the_gauge(
        make_settings, smtp_server, amqp_url, redis_url, unused_tcp_port, caplog):
    caplog.set_level(logging.INFO)
    smtp_url, recorder = smtp_server
    proxy = await TcpProxy(urlsplit(redis_url).port).start()
    settings = make_settings(smtp_url=smtp_url, redis_url=_via(redis_url, proxy.port),
                             admin_tokens=TOKEN)
    jobs = [email_job() for _ in range(10)]
    answers: list[tuple[int, str, Any]] = []
    try:
        async with _one_process(settings, unused_tcp_port) as (base, registry), \
                aiohttp.ClientSession() as http:
            assert _up(registry, "redis") == 1 and _up(registry, "rabbitmq") == 1
            await proxy.cut()
            down_at = time.monotonic()
            await publish(amqp_url, jobs)
            for path in ("/admin/accounts", "/admin/accounts/acct_1", "/admin/audit/acct_1"):
                async with http.get(base + path,
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                    answers.append((response.status, response.content_type,
                                    await response.json(content_type=None)))
            assert await _until(lambda: _up(registry, "redis") == 0, 10)
            await asyncio.sleep(3.0)  # an outage of a few seconds, jobs held meanwhile
            assert _up(registry, "redis") == 0, "0 all through the outage"
            assert recorder.messages == [], "never sent unchecked"
            waited_during = _waited(registry, "redis")
            await proxy.restore()
            got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 10)
            down_for = time.monotonic() - down_at
            assert await _until(lambda: _up(registry, "redis") == 1, 10)
            waited_after = _waited(registry, "redis")
    finally:
        await proxy.close()

    assert sorted(e["id"] for e in events(got)) == sorted(j["id"] for j in jobs)
    for status, content_type, body in answers:
        assert (status, content_type) == (503, "application/json"), body
        assert body["dependency"] == "redis"
        assert body["cause"] == "connection refused"
        assert "unreachable" in body["error"]
    lines = _outage_lines(caplog)
    assert [(r.levelname, r.event) for r in lines] == [("WARNING", "down"), ("INFO", "up")]
    start, end = lines
    # the connections in use are dropped, new ones refused: either is seen first
    assert start.dependency == "redis"
    assert start.cause in ("connection refused", "connection closed by server"), start.cause
    assert end.jobs_waited == 10, end.getMessage()
    assert 3.0 <= end.down_s <= down_for + 1, (end.down_s, down_for)
    assert f"after {end.down_s:.1f} s; 10 jobs waited" in end.getMessage()
    # nothing else said it, and no traceback anywhere (aiohttp's "Error handling request")
    redis_warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                      and "redis" in r.getMessage().lower()]
    assert redis_warnings == [start]
    assert [r for r in caplog.records if r.exc_info] == []
    assert waited_during is not None and waited_during > 0
    assert waited_after is not None and waited_after >= end.down_s - 0.5


async def test_rabbitmq_outage_one_warning_one_info_and_the_gauge(
        make_settings, smtp_server, amqp_url, caplog):
    caplog.set_level(logging.INFO)
    smtp_url, recorder = smtp_server
    proxy = await TcpProxy(urlsplit(amqp_url).port).start()
    settings = make_settings(smtp_url=smtp_url, amqp_url=_via(amqp_url, proxy.port))
    registry = CollectorRegistry()
    jobs = [email_job() for _ in range(3)]
    try:
        async with started_worker(settings, registry):
            await proxy.cut()
            assert await _until(lambda: _up(registry, "rabbitmq") == 0, 10)
            await asyncio.sleep(2.0)
            assert _up(registry, "rabbitmq") == 0
            await proxy.restore()
            assert await _until(lambda: _up(registry, "rabbitmq") == 1, 30)
            await publish(amqp_url, jobs)
            got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 3, timeout=60)
    finally:
        await proxy.close()
    assert sorted(e["id"] for e in events(got)) == sorted(j["id"] for j in jobs)
    lines = _outage_lines(caplog)
    assert [(r.levelname, r.event, r.dependency) for r in lines] == [
        ("WARNING", "down", "rabbitmq"), ("INFO", "up", "rabbitmq")]
    assert lines[1].down_s >= 2.0
    assert _waited(registry, "rabbitmq") >= 2.0


async def test_the_webhook_server_and_an_idle_bounce_listener_export_and_move_the_gauges(
        make_settings, redis_url, unused_tcp_port_factory, caplog):
    """Both serve the gauges from the start; the listener, taking no mail, still sees Redis go
    and come back (its watch pings every few seconds) and says so once each way."""
    from outbox.commands import _bounce_listener
    from tests.integration.helpers import running_app

    caplog.set_level(logging.INFO)
    proxy = await TcpProxy(urlsplit(redis_url).port).start()
    settings = make_settings(redis_url=_via(redis_url, proxy.port),
                             bounce_domain="bounces.outbox.example", secret_key="k" * 32,
                             bounces_port=unused_tcp_port_factory(), http_host="127.0.0.1")
    registry = CollectorRegistry()
    try:
        async with running_app(settings, unused_tcp_port_factory()) as base, \
                aiohttp.ClientSession() as http:
            async with http.get(base + "/metrics") as response:
                exposed = await response.text()
        assert 'outbox_dependency_up{dependency="redis"} 1.0' in exposed
        assert 'outbox_dependency_up{dependency="rabbitmq"} 1.0' in exposed
        assert 'outbox_dependency_wait_seconds_total{dependency="redis"} 0.0' in exposed
        async with _bounce_listener(settings, registry):
            assert _up(registry, "redis") == 1 and _up(registry, "rabbitmq") == 1
            await proxy.cut()
            assert await _until(lambda: _up(registry, "redis") == 0, 15)
            await proxy.restore()
            assert await _until(lambda: _up(registry, "redis") == 1, 15)
    finally:
        await proxy.close()
    assert [(r.levelname, r.event) for r in _outage_lines(caplog)] == [
        ("WARNING", "down"), ("INFO", "up")]
    assert _waited(registry, "redis") > 0
