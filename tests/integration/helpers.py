"""Helpers for integration tests: jobs, an in-process worker, reading queues, the CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
from prometheus_client import CollectorRegistry

from config import Settings
from sender.bus import Bus
from sender.service import make_redis, started_worker

ROOT = Path(__file__).resolve().parents[2]
_seq = itertools.count()
T = TypeVar("T")


def email_job(**fields: Any) -> dict[str, Any]:
    """A valid transactional email job; fields override."""
    n = next(_seq)
    job = {
        "v": 1, "id": f"job-{uuid.uuid4().hex[:10]}-{n}", "account_id": "acct_1",
        "channel": "email", "category": "transactional", "topic": None,
        "to": f"user{n}@example.com", "from": "Acme <sales@acme.example>",
        "reply_to": None, "subject": f"Receipt {n}", "text": f"Thank you {n}",
        "html": f"<p>Thank you {n}</p>", "headers": {}, "metadata": {"n": n},
        "not_after": None,
    }
    job.update(fields)
    return job


def running_worker(settings: Settings) -> Any:
    """A started worker in this loop; stopped and closed on exit (the service's own)."""
    return started_worker(settings)


async def publish(amqp_url: str, jobs: list[dict[str, Any] | bytes],
                  routing_key: str | None = None) -> None:
    """Publish raw jobs to outbox.jobs (declaring the topology), unvalidated."""
    bus = Bus(amqp_url, retry_tiers=(1, 2))
    await bus.connect()
    try:
        for job in jobs:
            body = job if isinstance(job, bytes) else json.dumps(job).encode()
            key = routing_key or (job.get("channel", "email") if isinstance(job, dict)
                                  else "email")
            await bus.publish("outbox.jobs", key, body)
    finally:
        await bus.close()


async def collect(amqp_url: str, queue: str, until: Callable[[list[Any]], bool],
                  timeout: float = 30.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Consume ``queue`` (acking) until ``until(messages)`` or ``timeout``; return them."""
    connection = await aio_pika.connect(amqp_url)
    got: list[Any] = []
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=True)
        deadline = time.monotonic() + timeout
        while not until(got) and time.monotonic() < deadline:
            message = await q.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            got.append(message)
    finally:
        await connection.close()
    return got


def events(messages: list[Any]) -> list[dict[str, Any]]:
    """Decode status events (of jobs and accounts; recipient events are left out:
    :func:`recipient_events`)."""
    return [e for e in map(json.loads, (m.body for m in messages))
            if e.get("type") != "recipient"]


def recipient_events(messages: list[Any]) -> list[dict[str, Any]]:
    """Decode the recipient events (``recipient.<channel>.<change>``) among ``messages``."""
    return [e for e in map(json.loads, (m.body for m in messages))
            if e.get("type") == "recipient"]


async def queue_depth(amqp_url: str, queue: str) -> int:
    """How many messages ``queue`` holds now (a passive declare: it must exist)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


def outbox_env(settings: Settings, **env: str) -> dict[str, str]:
    """This process's environment without its ``OUTBOX_*`` variables, pointed at the test's
    services (``settings``' Redis and AMQP URLs, no metrics port), with ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    return {**clean, "OUTBOX_REDIS_URL": settings.redis_url.get_secret_value(),
            "OUTBOX_AMQP_URL": settings.amqp_url.get_secret_value(),
            "OUTBOX_METRICS_PORT": "0", **env}


def run_outbox(settings: Settings, *argv: str, stdin: str | None = None, timeout: float = 60,
               **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m outbox ARGV`` from the checkout (its code) on the test's services
    (:func:`outbox_env`); ``stdin`` is its input (none: /dev/null)."""
    given: dict[str, Any] = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
    return subprocess.run([sys.executable, "-m", "outbox", *argv], env=outbox_env(settings, **env),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False, **given)


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll until ``predicate()``; fail the test with a timeout otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def cli_runner(monkeypatch: Any, amqp_url: str, redis_url: str, *, cluster: bool = False
               ) -> Callable[..., Awaitable[int]]:
    """``await run("accounts", "show", ...)``: ``outbox.cli.main`` in this process (in a
    thread: the CLI runs its own loop), with OUTBOX_* pointed at the test vhost and Redis
    (``cluster``: a node of the test Redis Cluster, OUTBOX_REDIS_CLUSTER=true)."""
    import os

    from outbox import cli

    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OUTBOX_AMQP_URL", amqp_url)
    monkeypatch.setenv("OUTBOX_REDIS_URL", redis_url)
    if cluster:
        monkeypatch.setenv("OUTBOX_REDIS_CLUSTER", "true")

    async def run(*argv: str) -> int:
        import logging

        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            return await asyncio.to_thread(cli.main, ["--log-level", "WARNING", *argv])
        finally:  # the CLI configures logging for its run; give the tests theirs back
            root.handlers[:] = handlers
            root.setLevel(level)

    return run


@asynccontextmanager
async def running_app(settings: Settings, port: int) -> AsyncIterator[str]:
    """The webhook server (``make_app``) with its own bus and Redis on 127.0.0.1:``port``;
    yields its base URL."""
    from aiohttp import web

    from webhooks.app import make_app, make_runner

    bus = Bus.from_settings(settings)
    await bus.connect()
    redis = make_redis(settings)
    runner = make_runner(make_app(settings, bus=bus, redis=redis,
                                  registry=CollectorRegistry()), settings)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await bus.close()
        await redis.aclose()


async def redis_state(url: str) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key of the Redis db at ``url`` with its ``DUMP`` and whether it expires: two
    equal snapshots mean nothing in that db changed in between."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return {key: (await client.dump(key), await client.pttl(key) >= 0)
                async for key in client.scan_iter(count=1000)}
    finally:
        await client.aclose()


@contextmanager
def served_in_thread(start: Callable[[], AbstractAsyncContextManager[T]],
                     timeout: float = 60.0) -> Iterator[T]:
    """Enter ``start()`` in an event loop of a thread of its own and yield what it yields, so
    a synchronous test (hypothesis drawing and shrinking batches) can drive real servers;
    leaving exits it there. A failure to start or to stop fails the test."""
    entered: list[T] = []
    failure: list[BaseException] = []
    ready, done = threading.Event(), threading.Event()

    async def serve() -> None:
        async with start() as value:
            entered.append(value)
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.05)

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by the test
            failure.append(exc)
        ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(timeout) and not failure, failure
    try:
        yield entered[0]
    finally:
        done.set()
        thread.join(timeout)
    assert not failure, failure
