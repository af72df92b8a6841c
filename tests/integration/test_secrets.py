"""OUTBOX_SECRET_KEY: a rotated-out key's links keep working while it is listed and stop when
it is not; a link forged with the development key does nothing to a server with real keys; and
the public servers refuse to start with the development key (through the real CLI)."""

from __future__ import annotations

import json

import aiohttp
import pytest
import redis.asyncio as aioredis

from config.settings import DEV_SECRET_KEY
from outbox import commands
from suppression.store import SuppressionStore
from suppression.tokens import Unsubscribe, make_token
from tests.integration.helpers import cli_runner, collect, redis_state, running_app

pytestmark = pytest.mark.integration
NEW, OLD, RETIRED = "new-key-" + "n" * 24, "old-key-" + "o" * 24, "retired-" + "r" * 24
ACCOUNT, RECIPIENT = "acct_rot", "amy@example.com"


def _link(public: str, key: str, job: str = "job-rot-1") -> str:
    return f"{public}/u/{make_token(key, Unsubscribe(ACCOUNT, 'email', RECIPIENT, job))}"


async def _suppressed(redis_url: str) -> list[dict[str, object]]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await SuppressionStore(client).check(RECIPIENT, account_id=ACCOUNT,
                                                    channel="email")
    finally:
        await client.aclose()


async def _post(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.post(
            url, data="List-Unsubscribe=One-Click") as response:
        return response.status


async def test_a_link_signed_with_a_listed_old_key_still_unsubscribes(
        make_settings, unused_tcp_port, redis_url, amqp_url):
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings = make_settings(public_url=public, secret_key=f"{NEW},{OLD}")
    async with running_app(settings, unused_tcp_port):
        assert await _post(_link(public, OLD)) == 200
        [entry] = await _suppressed(redis_url)
        assert entry["reason"] == "unsubscribe"
        [got] = await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1)
        assert (json.loads(got.body)["type"], json.loads(got.body)["job_id"]) == \
            ("unsubscribed", "job-rot-1")
        assert await _post(_link(public, NEW, "job-rot-2")) == 200


@pytest.mark.parametrize("key", [RETIRED, DEV_SECRET_KEY])
async def test_a_link_signed_with_an_unlisted_key_is_404_and_changes_nothing(
        make_settings, unused_tcp_port, redis_url, amqp_url, key):
    # RETIRED: taken off the list at rotation. DEV_SECRET_KEY: the attacker read the source
    # and forged a link for someone else; the server runs with real keys.
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings = make_settings(public_url=public, secret_key=f"{NEW},{OLD}")
    async with running_app(settings, unused_tcp_port):
        before = await redis_state(redis_url)
        link = _link(public, key)
        async with aiohttp.ClientSession() as session:
            async with session.get(link) as page:
                assert page.status == 404
            async with session.post(link, data="List-Unsubscribe=One-Click") as done:
                assert done.status == 404
        assert await redis_state(redis_url) == before
        assert await _suppressed(redis_url) == []
        assert await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []


# --- start-up refusal, through the CLI ---------------------------------------------------------

@pytest.fixture
def cli(monkeypatch, amqp_url, redis_url):
    """``(run, started)``: the in-process CLI, and what it started — a long-running command
    that passes its checks records that it would start (``run_async``) instead of serving."""
    started: list[str] = []

    def run_async(factory: object) -> int:
        started.append("started")
        return 0

    monkeypatch.setattr(commands, "run_async", run_async)
    return cli_runner(monkeypatch, amqp_url, redis_url), started


@pytest.mark.parametrize("command", [["webhooks"], ["run"], ["run", "--dev"]])
@pytest.mark.parametrize("keys", [DEV_SECRET_KEY, f"{NEW},{DEV_SECRET_KEY}"])
async def test_a_public_server_with_the_development_key_refuses_to_start(
        cli, monkeypatch, capsys, command, keys):
    run, started = cli
    monkeypatch.setenv("OUTBOX_PUBLIC_URL", "https://outbox.example.com")
    monkeypatch.setenv("OUTBOX_SECRET_KEY", keys)
    assert await run(*command) == 2
    assert started == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("outbox: OUTBOX_SECRET_KEY") and "https://outbox.example.com" in err


@pytest.mark.parametrize("public", ["http://127.0.0.1:8080", "http://127.8.9.10",
                                    "http://localhost:8080", "http://[::1]:8080"])
@pytest.mark.parametrize("command", [["webhooks"], ["run"]])
async def test_the_development_key_is_allowed_on_loopback(cli, monkeypatch, capsys, public,
                                                          command):
    run, started = cli
    monkeypatch.setenv("OUTBOX_PUBLIC_URL", public)
    assert await run(*command) == 0
    assert started == ["started"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [["webhooks"], ["run"], ["worker"]])
async def test_a_real_key_is_allowed_in_public(cli, monkeypatch, capsys, command):
    run, started = cli
    monkeypatch.setenv("OUTBOX_PUBLIC_URL", "https://outbox.example.com")
    monkeypatch.setenv("OUTBOX_SECRET_KEY", f"{NEW},{OLD}")
    assert await run(*command) == 0
    assert started == ["started"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("public", ["https://outbox.example.com", "http://10.0.0.5:8080",
                                    "http://[::ffff:127.0.0.1]:8080", "http://localhost.evil.io"])
async def test_the_worker_warns_with_the_development_key_in_public(cli, monkeypatch, capsys,
                                                                   public):
    run, started = cli
    monkeypatch.setenv("OUTBOX_PUBLIC_URL", public)
    assert await run("worker") == 0
    assert started == ["started"]
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and "OUTBOX_SECRET_KEY" in record["msg"]


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8080", True), ("http://127.255.0.1", True), ("http://[::1]", True),
    ("http://LOCALHOST:1", True), ("https://example.com", False), ("http://0.0.0.0", False),
    ("http://[::ffff:127.0.0.1]", False), ("http://128.0.0.1", False),
    ("http://localhost.example.com", False),
])
def test_is_loopback_url(url, loopback):
    assert commands.is_loopback_url(url) is loopback
