"""Reply-driven shaping on real servers (RabbitMQ, Redis, an aiosmtpd relay): a relay that
answers ``421 4.7.28`` for gmail.com slows that destination only, which recovers once the
relay stops refusing, every job sent exactly once; a destination that keeps refusing is
paused with an ops event and resumes by itself (docs/operations.md, "Reply-driven shaping")."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sender.client import Outbox
from sender.service import started_worker
from tests.conftest import Recorder, RecordingHandler
from tests.integration.helpers import cli_runner, collect, email_job, events, wait_for
from tests.integration.test_relay_failover import RecordingRelay

pytestmark = [pytest.mark.integration, pytest.mark.smtp]

GMAIL_421 = ("421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of unsolicited "
             "mail originating from your IP address. To protect our users from spam, mail "
             "sent from your IP address has been temporarily rate limited. - gsmtp")


class _Refusing(RecordingHandler):
    """Answers ``GMAIL_421`` to RCPT for gmail.com while its relay is ``refusing``; counts the
    attempts per domain with their times."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.refusing = True
        self.attempts: dict[str, list[float]] = {}

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        domain = address.rpartition("@")[2]
        self.attempts.setdefault(domain, []).append(time.monotonic())
        if self.refusing and domain == "gmail.com":
            return GMAIL_421
        return await super().handle_RCPT(server, session, envelope, address, options)


class ScriptedRelay(RecordingRelay):
    """A relay (tests/integration/test_relay_failover.py's) that refuses gmail.com with
    ``GMAIL_421`` while ``refusing``."""

    def __init__(self) -> None:
        recorder = Recorder()
        self.script = _Refusing(recorder)
        super().__init__(self.script)
        self.recorder = recorder

    @property
    def refusing(self) -> bool:
        return self.script.refusing

    @refusing.setter
    def refusing(self, value: bool) -> None:
        self.script.refusing = value

    @property
    def attempts(self) -> dict[str, list[float]]:
        return self.script.attempts


def _state(registry: CollectorRegistry, relay: str, state: str) -> float | None:
    return registry.get_sample_value("outbox_destination_state", {
        "destination": "google", "relay": relay, "state": state})


async def test_a_421_for_one_domain_slows_that_domain_only_and_it_recovers(
        make_settings, amqp_url):
    relay = await ScriptedRelay().start()
    settings = make_settings(smtp_url=relay.url, shaping_rate=20, shaping_decrease=0.5,
                             shaping_min_rate=2, shaping_hold=1, shaping_step=5,
                             shaping_step_period=0.5, shaping_pause_after=100)
    gmail = [email_job(to=f"user{i}@gmail.com") for i in range(60)]
    other = [email_job(to=f"user{i}@example.com") for i in range(100)]
    registry = CollectorRegistry()
    try:
        async with Outbox(amqp_url) as outbox:  # all waiting before the worker starts
            for job in (j for pair in zip(gmail, other, strict=False) for j in pair):
                await outbox.enqueue(job)
            for job in other[len(gmail):]:
                await outbox.enqueue(job)
        async with started_worker(settings, registry=registry):
            await wait_for(lambda: _state(registry, relay.name, "slowed") == 1, timeout=20)
            first = relay.attempts["gmail.com"][0]
            # the other domain flows at full speed meanwhile: all sent, gmail still refused
            await wait_for(lambda: len(relay.attempts.get("example.com", [])) >= len(other),
                           timeout=20)
            await asyncio.sleep(max(0.0, first + 5.0 - time.monotonic()))
            relay.refusing = False
            stopped = time.monotonic()
            # every example.com job went through while gmail.com was still being refused, and
            # unpaced: 100 at gmail's cut rate (10/s) would have taken 10 s or more (measured:
            # 1-2 s on a busy 2-core machine)
            sent_other = relay.attempts["example.com"]
            assert max(sent_other) < stopped and max(sent_other) - min(sent_other) < 7.0
            # after the first wave (the sends in flight before the first 421 came back),
            # gmail was tried at most at its cut rate: 10/s (nominal 20/s), far below the
            # ~40/s the 1-2 s retry tiers would give 60 refused jobs unshaped
            window = [t for t in relay.attempts["gmail.com"] if first + 1.5 <= t < stopped]
            per_second = len(window) / (stopped - first - 1.5)
            assert per_second <= 20 * 0.5 + 2, (per_second, len(window))
            got = await collect(amqp_url, "outbox.status",
                                lambda m: sum(e["status"] == "sent" for e in events(m))
                                >= len(gmail) + len(other), timeout=90)
            statuses = events(got)
            # exactly once: every job's message reached the relay once
            delivered = relay.job_ids()
            assert sorted(delivered) == sorted(j["id"] for j in gmail + other)
            sent = [e for e in statuses if e["status"] == "sent"]
            assert sorted(e["id"] for e in sent) == sorted(j["id"] for j in gmail + other)
            # gmail's refusals were deferrals (never failed); the other domain had none
            assert not [e for e in statuses if e["status"] in ("failed", "bounced")]
            deferred = [e for e in statuses if e["status"] == "deferred"]
            assert deferred and {e["id"] for e in deferred} <= {j["id"] for j in gmail}
            assert all("4.7.28" in e["detail"] for e in deferred)
            # and the destination recovers step by step back to normal
            await wait_for(lambda: _state(registry, relay.name, "normal") == 1, timeout=20)
            assert registry.get_sample_value("outbox_destination_cuts_total", {
                "destination": "google", "relay": relay.name}) >= 1
    finally:
        await relay.stop()


async def test_a_destination_that_keeps_refusing_is_paused_then_resumes(
        make_settings, amqp_url):
    relay = await ScriptedRelay().start()
    settings = make_settings(smtp_url=relay.url, shaping_rate=20, shaping_min_rate=2,
                             shaping_hold=0.5, shaping_step=10, shaping_step_period=0.5,
                             shaping_pause_after=2, shaping_window=60, shaping_pause=3)
    gmail = [email_job(to=f"user{i}@gmail.com") for i in range(20)]
    registry = CollectorRegistry()
    try:
        async with started_worker(settings, registry=registry):
            async with Outbox(amqp_url) as outbox:
                for job in gmail:
                    await outbox.enqueue(job)
            await wait_for(lambda: _state(registry, relay.name, "paused") == 1, timeout=30)
            paused_at = time.monotonic()
            relay.refusing = False
            await asyncio.sleep(1.5)
            # nothing went to gmail while paused (beyond sends already on their way)
            during = [t for t in relay.attempts["gmail.com"] if paused_at + 0.5 <= t]
            assert during == []
            got = await collect(amqp_url, "outbox.status",
                                lambda m: sum(e.get("status") == "sent" for e in events(m))
                                >= len(gmail), timeout=60)
            ops = [json.loads(m.body) for m in got if m.routing_key == "destination.paused"]
            assert len(ops) == 1
            assert ops[0]["type"] == "destination" and ops[0]["destination"] == "google"
            assert ops[0]["relay"] == relay.name and ops[0]["state"] == "paused"
            assert ops[0]["reason"] == "google-unsolicited-rate" and ops[0]["until"]
            assert sorted(relay.job_ids()) == sorted(j["id"] for j in gmail)
            # (sends admitted before the pause may still arrive in its first half second)
            resumed = min(t for t in relay.attempts["gmail.com"] if t > paused_at + 0.5)
            assert resumed - paused_at >= 2.0  # the 3 s pause, less the refresh lag
    finally:
        await relay.stop()


@pytest.mark.backends
async def test_outbox_destinations_lists_why_and_until_when_and_clears(
        monkeypatch, amqp_url, backend_redis_url, names, capsys):
    from sender.connect import redis_client
    from suppression.destinations import DestinationStore, Params

    url, cluster = backend_redis_url
    name = f"google@relay-{names.suffix}:25"
    redis = redis_client(url, cluster=cluster)
    try:
        await DestinationStore(redis, Params()).refused(name, time.time(), reply=GMAIL_421,
                                                        rule="google-unsolicited-rate")
    finally:
        await redis.aclose()
    run = cli_runner(monkeypatch, amqp_url, url, cluster=cluster)
    capsys.readouterr()
    assert await run("destinations", "--json") == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["relay"] == name[7:]]
    assert len(rows) == 1
    row = rows[0]
    assert (row["destination"], row["state"], row["rate"]) == ("google", "slowed", 25.0)
    assert row["rule"] == "google-unsolicited-rate" and row["reply"].startswith("421 4.7.28")
    assert row["until"].endswith("Z") and row["since"].endswith("Z")
    assert await run("destinations") == 0
    text = capsys.readouterr().out
    assert "google" in text and "slowed" in text and "4.7.28" in text
    assert await run("destinations", "clear", name) == 0
    assert await run("destinations", "clear", name) == 1
    for bad in ("google", "google@relay 25", "google@relay\n:25"):  # argparse: exit 2
        with pytest.raises(SystemExit) as refused:
            await run("destinations", "clear", bad)
        assert refused.value.code == 2
    assert "is not a destination: DESTINATION@RELAY" in capsys.readouterr().err
    capsys.readouterr()
    assert await run("destinations", "--json") == 0
    assert not [r for r in json.loads(capsys.readouterr().out) if r["relay"] == name[7:]]


async def test_the_admin_api_and_page_list_the_slowed_destinations(make_settings, redis_url, names,
                                                          unused_tcp_port):
    import aiohttp

    from sender.connect import redis_client
    from suppression.destinations import DestinationStore, Params
    from tests.integration.helpers import running_app

    name = f"yahoo@relay-{names.suffix}:25"
    redis = redis_client(redis_url)
    try:
        await DestinationStore(redis, Params()).refused(
            name, time.time(), reply="421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily "
            "deferred due to unexpected volume or user complaints", rule="yahoo-deferred")
    finally:
        await redis.aclose()
    settings = make_settings(admin_tokens="vera:viewer:tok-viewer-0123")
    async with running_app(settings, unused_tcp_port) as base, aiohttp.ClientSession() as s:
        async with s.get(base + "/admin/destinations",
                         headers={"Authorization": "Bearer tok-viewer-0123"}) as response:
            assert response.status == 200
            rows = await response.json()
        async with s.get(base + "/admin/destinations") as response:
            assert response.status == 401
        await _page_shows(base, name.partition("@")[2])
    [row] = [r for r in rows if r["relay"] == name.partition("@")[2]]
    assert (row["destination"], row["state"], row["rule"]) == ("yahoo", "slowed",
                                                               "yahoo-deferred")
    assert "[TSS04]" in row["reply"] and row["until"].endswith("Z")


async def _page_shows(base: str, relay: str) -> None:
    """The support page's Destinations view (Debian's chromium, as test_admin_page.py)
    lists the destination with its state and the reply, with no script error."""
    from playwright.async_api import async_playwright, expect

    from tests.integration.test_admin_page import ARGS, CHROMIUM

    errors: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(base + "/admin/#/destinations")
            await page.fill("#token", "tok-viewer-0123")
            await page.press("#token", "Enter")
            row = page.locator("#destinations tr", has_text=relay)
            await expect(row).to_contain_text("slowed")
            await expect(row).to_contain_text("[TSS04]")
            await expect(row).to_contain_text("yahoo")
        finally:
            await browser.close()
    assert not errors, errors


async def test_the_shaping_refresh_ends_with_the_worker(make_settings, smtp_server, amqp_url):
    """The worker's e-mail channel is wrapped with shaping; stopping the worker closes the
    wrapper, which ends the background refresh its first job started (closing the unwrapped
    channel left it pending past the worker, and its coroutine was later collected by
    another test, outside any loop)."""
    url, recorder = smtp_server
    job = email_job()
    async with Outbox(amqp_url) as outbox:
        await outbox.enqueue(job)
    async with started_worker(make_settings(smtp_url=url)):
        await wait_for(lambda: len(recorder.messages) == 1)
        assert [t for t in asyncio.all_tasks() if t.get_name() == "outbox shaping"]
    assert [t for t in asyncio.all_tasks() if t.get_name() == "outbox shaping"
            and not t.done()] == []
