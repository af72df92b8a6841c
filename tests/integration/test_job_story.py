"""A job's story against real RabbitMQ, Redis and SMTP: jobs sent by the real worker, provider
events applied by it, read back with ``outbox jobs show`` / ``jobs history`` (the CLI in this
process) and the admin API; ``outbox events`` tails outbox.status through its own queue."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import aiohttp
import pytest

from sender.bus import Bus
from sender.provider_events import ProviderEvent
from sender.service import make_redis
from sender.topology import EVENTS_QUEUE
from suppression.history import job_story
from suppression.store import SuppressionStore
from tests.integration.helpers import (
    email_job,
    publish,
    running_app,
    running_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
TOKEN = "story-admin-token"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")



@pytest.fixture
async def redis(make_settings):
    client = make_redis(make_settings())
    yield client
    await client.aclose()


async def status_of(redis: Any, account: str, job_id: str) -> str | None:
    story = await job_story(redis, account, job_id)
    return story["status"] if story else None


async def reach(redis: Any, account: str, job_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while await status_of(redis, account, job_id) != status:
        assert time.monotonic() < deadline, (job_id, await job_story(redis, account, job_id))
        await asyncio.sleep(0.05)


async def provider_event(amqp_url: str, job: dict[str, Any], type_: str, **fields: Any) -> None:
    """What the webhook server publishes for a verified provider report."""
    event = ProviderEvent(provider="ses", type=type_, channel="email", recipient=job["to"],
                          provider_message_id=f"ses-{job['id']}", message_id=None,
                          job_id=job["id"], account_id=job["account_id"],
                          at="2026-11-25T10:00:00Z", event_id=uuid.uuid4().hex,
                          **{"kind": None, "reason": type_, "diagnostic": None, **fields})
    bus = Bus(amqp_url, retry_tiers=(1, 2))
    await bus.connect()
    try:
        await bus.publish_to_queue(EVENTS_QUEUE, event.to_json())
    finally:
        await bus.close()


def out(capsys: Any) -> str:
    return capsys.readouterr().out


async def api(base: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            base + path, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        return response.status, await response.json()


async def test_sent_then_delivered_or_bounced_in_the_cli_and_the_api(
        make_settings, smtp_server, amqp_url, redis, cli, capsys, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, admin_tokens=TOKEN)
    kept = email_job(account_id="acct_story", to="kept@example.com")
    lost = email_job(account_id="acct_story", to="lost@example.com")
    await publish(amqp_url, [kept, lost])
    async with running_worker(settings):
        await reach(redis, "acct_story", kept["id"], "sent")
        await reach(redis, "acct_story", lost["id"], "sent")
        await provider_event(amqp_url, kept, "delivered", diagnostic="smtp; 250 2.0.0 ok")
        await provider_event(amqp_url, lost, "bounced", kind="hard", reason="userunknown",
                             diagnostic="smtp; 550 5.1.1 user unknown")
        await reach(redis, "acct_story", kept["id"], "delivered")
        await reach(redis, "acct_story", lost["id"], "bounced")
    assert len(recorder.messages) == 2

    assert await cli("jobs", "show", "acct_story", kept["id"], "--json") == 0
    story = json.loads(out(capsys))
    assert story["status"] == "delivered"
    steps = story["timeline"]
    assert [(s["status"], s["attempt"], s["provider"]) for s in steps] == [
        ("sent", 1, "smtp"), ("delivered", 1, "ses")]
    assert steps[1]["detail"] == "smtp; 250 2.0.0 ok"
    assert steps[0]["provider_message_id"] and all(ISO.match(s["at"]) for s in steps)

    assert await cli("jobs", "show", "acct_story", lost["id"]) == 0
    text = out(capsys).splitlines()
    assert text[0].startswith(f"job {lost['id']} of account acct_story: bounced (userunknown)")
    assert text[1].split()[:2] == ["AT", "STATUS"]  # a table with headers
    assert [line.split()[1] for line in text[2:]] == ["sent", "bounced"]

    assert await cli("jobs", "show", "acct_story", "no-such-job") == 1
    assert "no record of job 'no-such-job'" in capsys.readouterr().err
    assert await cli("jobs", "show", "acct_nobody", "no-such-job") == 1
    assert "unknown account 'acct_nobody'" in capsys.readouterr().err

    async with running_app(settings, unused_tcp_port) as base:
        status, body = await api(base, f"/admin/jobs/acct_story/{lost['id']}")
        assert status == 200 and body["status"] == "bounced"
        assert [s["status"] for s in body["timeline"]] == ["sent", "bounced"]
        assert body["timeline"][1]["reason"] == "userunknown"
        status, body = await api(base, "/admin/jobs/acct_story/no-such-job")
        assert status == 404 and "no record" in body["error"]
        status, body = await api(base, "/admin/jobs/acct_nobody/x")
        assert status == 404 and "unknown account" in body["error"]
        async with aiohttp.ClientSession() as session, session.get(
                f"{base}/admin/jobs/acct_story/{lost['id']}") as unauthorised:
            assert unauthorised.status == 401


async def test_a_deferred_then_sent_job_shows_both_attempts(make_settings, smtp_server,
                                                             amqp_url, redis, cli, capsys):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, retry_tiers=(1,))
    job = email_job(account_id="acct_story", to="busy@example.com")
    recorder.replies["busy@example.com"] = "452 4.2.2 Mailbox full, try later"
    await publish(amqp_url, [job])
    async with running_worker(settings):
        await reach(redis, "acct_story", job["id"], "deferred")
        del recorder.replies["busy@example.com"]
        await reach(redis, "acct_story", job["id"], "sent")
    assert await cli("jobs", "show", "acct_story", job["id"], "--json") == 0
    steps = json.loads(out(capsys))["timeline"]
    assert [(s["status"], s["attempt"], s["reason"]) for s in steps] == [
        ("deferred", 1, "mailboxfull"), ("sent", 2, None)]
    assert "452" in steps[0]["detail"]


async def test_refused_jobs_show_their_refusal(make_settings, smtp_server, amqp_url, redis,
                                               cli, capsys):
    smtp_url, recorder = smtp_server
    store = SuppressionStore(redis)
    await store.add("gone@example.com", channel="email", reason="hard_bounce")  # global
    await store.add("left@example.com", channel="email", reason="unsubscribe",
                    account_id="acct_story")
    gone = email_job(account_id="acct_story", to="gone@example.com")
    left = email_job(account_id="acct_story", to="left@example.com")
    await publish(amqp_url, [gone, left])
    async with running_worker(make_settings(smtp_url=smtp_url)):
        await reach(redis, "acct_story", gone["id"], "suppressed")
        await reach(redis, "acct_story", left["id"], "suppressed")
    assert recorder.messages == []
    for job, reason in ((gone, "hard_bounce"), (left, "unsubscribe")):
        assert await cli("jobs", "show", "acct_story", job["id"], "--json") == 0
        steps = json.loads(out(capsys))["timeline"]
        assert [(s["status"], s["reason"]) for s in steps] == [("suppressed", reason)]


async def test_history_lists_a_recipients_jobs_newest_first(
        make_settings, smtp_server, amqp_url, redis, cli, capsys, unused_tcp_port):
    smtp_url, _ = smtp_server
    settings = make_settings(smtp_url=smtp_url, admin_tokens=TOKEN)
    mine = [email_job(account_id="acct_h", to="Pat@Example.com") for _ in range(3)]
    theirs = email_job(account_id="acct_h2", to="pat@example.com")
    async with running_worker(settings):
        for job in [*mine, theirs]:  # one at a time: first seen in this order
            await publish(amqp_url, [job])
            await reach(redis, job["account_id"], job["id"], "sent")
    assert await cli("jobs", "history", "PAT@example.com", "--account", "acct_h",
                     "--json") == 0
    rows = json.loads(out(capsys))
    assert [r["id"] for r in rows] == [j["id"] for j in reversed(mine)]
    assert {(r["status"], r["address"]) for r in rows} == {("sent", "pat@example.com")}
    assert await cli("jobs", "history", "pat@example.com", "--limit", "2", "--json") == 0
    assert [(r["account_id"], r["id"]) for r in json.loads(out(capsys))] == [
        ("acct_h2", theirs["id"]), ("acct_h", mine[2]["id"])]
    assert await cli("jobs", "history", "pat@example.com") == 0
    lines = out(capsys).splitlines()
    assert lines[0].split()[:3] == ["FIRST", "SEEN", "ACCOUNT"] and len(lines) == 5

    assert await cli("jobs", "history", "nobody@example.com") == 1
    assert "no recent jobs for nobody@example.com" in capsys.readouterr().err
    # an unknown account: exit 1, as the admin API's 404
    assert await cli("jobs", "history", "pat@example.com", "--account", "acct_none") == 1
    assert await cli("jobs", "history", "not an address") == 2

    async with running_app(settings, unused_tcp_port) as base:
        status, body = await api(base, "/admin/history/Pat@example.com?account=acct_h&limit=2")
        assert status == 200
        assert [r["id"] for r in body["jobs"]] == [mine[2]["id"], mine[1]["id"]]
        status, body = await api(base, "/admin/history/pat@example.com")
        assert status == 200 and len(body["jobs"]) == 4
        status, body = await api(base, "/admin/history/pat@example.com?account=acct_none")
        assert status == 404
        status, body = await api(base, "/admin/history/a%20b")
        assert status == 400


async def test_events_receives_what_is_processed_while_it_runs_filtered(
        make_settings, smtp_server, amqp_url, redis, cli, capsys):
    smtp_url, recorder = smtp_server
    recorder.replies["bad@example.com"] = "550 5.1.1 User unknown"
    settings = make_settings(smtp_url=smtp_url)
    noise = [email_job(account_id="acct_other"),  # another account
             email_job(account_id="acct_e", category="marketing")]  # no_consent: not asked
    wanted = [email_job(account_id="acct_e"), email_job(account_id="acct_e",
                                                        to="bad@example.com")]
    await SuppressionStore(redis).add("x@example.com", channel="email", reason="manual",
                                      account_id="acct_e")  # the account exists
    async with running_worker(settings):
        tail = asyncio.ensure_future(cli("events", "--json", "--account", "acct_e",
                                         "--status", "sent,bounced", "--count", "2",
                                         "--wait", "60"))
        seen = {"out": "", "err": ""}

        def listening() -> bool:
            got = capsys.readouterr()
            seen["out"] += got.out
            seen["err"] += got.err
            return "listening to outbox.status" in seen["err"]

        await wait_for(listening)
        await publish(amqp_url, noise)
        await reach(redis, "acct_other", noise[0]["id"], "sent")
        await reach(redis, "acct_e", noise[1]["id"], "no_consent")
        await publish(amqp_url, wanted)
        assert await asyncio.wait_for(tail, 30) == 0
    got = [json.loads(line) for line in (seen["out"] + out(capsys)).splitlines()]
    assert sorted((e["id"], e["status"]) for e in got) == sorted(
        [(wanted[0]["id"], "sent"), (wanted[1]["id"], "bounced")])
    assert all(e["account_id"] == "acct_e" and ISO.match(e["at"]) for e in got)
    assert all(e["metadata"] == w["metadata"] for e, w in zip(
        sorted(got, key=lambda e: e["id"]), sorted(wanted, key=lambda j: j["id"]), strict=True))

    # readable lines; nothing in the window is exit 1, bad input exit 2
    assert await cli("events", "--wait", "0.5", "--account", "acct_e") == 1
    assert "no status events in 0.5 s" in capsys.readouterr().err
    assert await cli("events", "--account", "acct_nobody", "--wait", "0.5") == 1
    assert await cli("events", "--status", "sent,teleported", "--wait", "0.5") == 2


async def test_events_prints_readable_lines(make_settings, smtp_server, amqp_url, redis, cli,
                                            capsys):
    smtp_url, _ = smtp_server
    job = email_job(account_id="acct_r")
    async with running_worker(make_settings(smtp_url=smtp_url)):
        tail = asyncio.ensure_future(cli("events", "--count", "1", "--wait", "60"))
        await wait_for(lambda: "listening" in capsys.readouterr().err)
        await publish(amqp_url, [job])
        assert await asyncio.wait_for(tail, 30) == 0
    [line] = out(capsys).splitlines()
    assert ISO.match(line.split()[0])
    assert f"email.sent  acct_r  {job['id']}  attempt=1" in line
    assert "provider=smtp" in line
