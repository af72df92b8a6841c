"""Held, not lost, while blocked (issue 19 item 3), through the real worker, RabbitMQ, Redis and
an aiosmtpd relay: jobs of a blocked account are held (``held`` events, counted, listed by
``outbox accounts held``), the same id sent again is not answered with an old outcome, an
unblock is refused until it says what becomes of them; a release sends each once after every
check again (a recipient suppressed meanwhile is not sent), per category; a discard publishes
each job's final event and is audited; a job held past OUTBOX_HOLD_SECONDS ends ``expired``;
over the cap a job ends ``blocked`` (hold_full). The admin API does the same."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from sender.service import make_redis
from suppression import keys
from suppression.history import job_story
from suppression.store import Audit
from tests.integration.helpers import (
    collect,
    email_job,
    events,
    publish,
    running_app,
    running_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
TOKEN = "held-jobs-admin-token"
ACCOUNT = "acct_held"


@pytest.fixture
def settings(make_settings, smtp_server):
    smtp_url, _ = smtp_server
    return make_settings(smtp_url=smtp_url, admin_tokens=f"alice:support:{TOKEN}",
                         require_verified_senders=False)


async def blocked(settings: Any, account: str = ACCOUNT) -> None:
    """An account the worker blocked (the state post_send.lua leaves)."""
    redis = make_redis(settings)
    try:
        await redis.sadd(keys.ACCOUNTS, account)
        await redis.hset(keys.state(account), mapping={"state": "blocked",
                                                       "reason": "hard_bounce_rate"})
    finally:
        await redis.aclose()


async def statuses(amqp_url: str, wanted: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The next ``wanted`` job status events (account events left out)."""
    got = await collect(amqp_url, "outbox.status",
                        lambda m: len([e for e in events(m) if e.get("channel")]) >= wanted,
                        timeout=timeout)
    return [e for e in events(got) if e.get("channel")]


async def story(settings: Any, job_id: str, account: str = ACCOUNT) -> dict[str, Any]:
    redis = make_redis(settings)
    try:
        found = await job_story(redis, account, job_id)
        assert found is not None
        return found
    finally:
        await redis.aclose()


async def held_json(cli: Any, capsys: Any, account: str = ACCOUNT) -> dict[str, Any]:
    capsys.readouterr()
    assert await cli("accounts", "held", account, "--json") == 0
    return dict(json.loads(capsys.readouterr().out))


async def test_held_jobs_are_released_once_after_unblock_with_every_check_again(
        settings, amqp_url, smtp_server, cli, capsys):
    _, recorder = smtp_server
    await blocked(settings)
    receipt = email_job(account_id=ACCOUNT, to="ann@example.com")
    later_suppressed = email_job(account_id=ACCOUNT, to="bob@example.com")
    blast = email_job(account_id=ACCOUNT, to="cat@example.com", category="marketing")
    assert await cli("consent", "grant", ACCOUNT, "cat@example.com", "--channel", "email") == 0
    async with running_worker(settings):
        await publish(amqp_url, [receipt, later_suppressed, blast])
        held = await statuses(amqp_url, 3)
        assert {(e["id"], e["status"], e["reason"]) for e in held} == {
            (j["id"], "held", "account_blocked") for j in (receipt, later_suppressed, blast)}
        assert all(e["held_until"] and e["metadata"] for e in held)
        assert (await story(settings, receipt["id"]))["status"] == "held"
        # the same id again while held: held again (not an old outcome), counted once
        await publish(amqp_url, [receipt])
        [again] = await statuses(amqp_url, 1)
        assert (again["id"], again["status"]) == (receipt["id"], "held")
        summary = await held_json(cli, capsys)
        assert summary["held"] == 3 and summary["oldest"]
        assert {(g["channel"], g["category"], g["jobs"]) for g in summary["by"]} == {
            ("email", "transactional", 2), ("email", "marketing", 1)}
        assert {j["id"] for j in summary["jobs"]} == {receipt["id"], later_suppressed["id"],
                                                      blast["id"]}
        # suppressed while held: the release checks it again
        assert await cli("suppression", "add", "bob@example.com", "--channel", "email",
                         "--reason", "hard_bounce", "--actor", "test") == 0
        # an unblock that does not say what becomes of them is refused; nothing changed
        capsys.readouterr()
        assert await cli("accounts", "unblock", ACCOUNT, "--reason", "list cleaned",
                         "--actor", "alice") == 2
        err = capsys.readouterr().err
        assert "holds 3 jobs" in err and "--held release" in err
        assert await cli("accounts", "show", ACCOUNT, "--json") == 0
        assert json.loads(capsys.readouterr().out)["state"] == "blocked"
        # receipts released, the blast kept
        assert await cli("accounts", "unblock", ACCOUNT, "--reason", "list cleaned",
                         "--actor", "alice", "--held", "release", "--category",
                         "transactional", "--json") == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["to"], out["held"]["settled"], out["held"]["remaining"]) == ("active", 2, 1)
        settled = await statuses(amqp_url, 2)
        assert {(e["id"], e["status"], e["reason"]) for e in settled} == {
            (receipt["id"], "sent", None), (later_suppressed["id"], "suppressed", "hard_bounce")}
        assert [rcpts for _, rcpts, _ in recorder.messages] == [["ann@example.com"]]
        assert [e["status"] for e in (await story(settings, receipt["id"]))["timeline"]] == [
            "held", "released", "sent"]
        # the blast is dropped, with a reason: its final event, an audit record
        assert await cli("accounts", "held", ACCOUNT, "--discard", "--reason",
                         "stale blast", "--actor", "alice") == 0
        [dropped] = await statuses(amqp_url, 1)
        assert (dropped["id"], dropped["status"], dropped["reason"], dropped["detail"]) == (
            blast["id"], "blocked", "held_discarded", "alice: stale blast")
        assert dropped["metadata"] == blast["metadata"]
        assert (await held_json(cli, capsys))["held"] == 0
        # the released job sent again answers its outcome: never a second message
        await publish(amqp_url, [receipt])
        [done] = await statuses(amqp_url, 1)
        assert (done["status"], done["detail"]) == ("sent", "redelivered")
    assert len(recorder.messages) == 1
    redis = make_redis(settings)
    try:
        records = await Audit(redis).read(ACCOUNT, limit=10)
    finally:
        await redis.aclose()
    actions = [(r["action"], r["actor"], r["reason"], r.get("category"), r.get("jobs"))
               for r in records]
    assert actions[:3] == [("held.discard", "alice", "stale blast", "all", "1"),
                           ("held.release", "alice", "list cleaned", "transactional", "2"),
                           ("unblock", "alice", "list cleaned", None, None)]


async def test_a_job_held_past_the_hold_time_ends_expired(make_settings, smtp_server,
                                                          amqp_url, cli, capsys):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, hold_seconds=4,
                             require_verified_senders=False)
    await blocked(settings)
    job = email_job(account_id=ACCOUNT)
    async with running_worker(settings) as worker:
        gauge = worker.metrics.held_jobs.labels("email", "transactional")
        await publish(amqp_url, [job])
        [held] = await statuses(amqp_url, 1)
        assert held["status"] == "held"
        await wait_for(lambda: gauge._value.get() == 1, timeout=4)  # counted (sweep: 1 s)
        [ended] = await statuses(amqp_url, 1, timeout=20)
        assert (ended["id"], ended["status"], ended["reason"]) == (
            job["id"], "expired", "held_too_long")
        assert "OUTBOX_HOLD_SECONDS" in ended["detail"]
        # not before the hold time; within a sweep (1 s) of it, with a generous margin
        waited = (datetime.fromisoformat(ended["at"]) - datetime.fromisoformat(held["at"]))
        assert 3.9 <= waited.total_seconds() <= 10, waited
        assert worker.metrics.jobs.labels("email", "expired")._value.get() == 1
        await wait_for(lambda: gauge._value.get() == 0, timeout=4)
    shown = await story(settings, job["id"])
    assert (shown["status"], shown["reason"]) == ("expired", "held_too_long")
    assert (await held_json(cli, capsys))["held"] == 0
    assert recorder.messages == []


async def test_over_the_cap_a_job_ends_blocked_loudly(make_settings, smtp_server, amqp_url,
                                                      caplog):
    smtp_url, _ = smtp_server
    settings = make_settings(smtp_url=smtp_url, hold_max_jobs=2,
                             require_verified_senders=False)
    await blocked(settings)
    jobs = [email_job(account_id=ACCOUNT) for _ in range(3)]
    async with running_worker(settings):
        for job in jobs:  # in order: the third is the one over the cap
            await publish(amqp_url, [job])
            await statuses(amqp_url, 1)
    shown = [await story(settings, j["id"]) for j in jobs]
    assert [(s["status"], s["reason"]) for s in shown] == [
        ("held", "account_blocked"), ("held", "account_blocked"), ("blocked", "hold_full")]
    assert any(r.levelname == "ERROR" and "not held" in r.getMessage() for r in caplog.records)


async def admin(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, base + path, json=body,
            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        return response.status, await response.json()


async def test_the_admin_api_shows_and_settles_held_jobs(settings, amqp_url, smtp_server,
                                                         unused_tcp_port):
    _, recorder = smtp_server
    await blocked(settings)
    jobs = [email_job(account_id=ACCOUNT), email_job(account_id=ACCOUNT, category="marketing")]
    async with running_worker(settings), running_app(settings, unused_tcp_port) as base:
        await publish(amqp_url, jobs)
        await statuses(amqp_url, 2)
        status, listed = await admin(base, "GET", "/admin/accounts?state=blocked")
        assert status == 200
        assert [(a["account_id"], a["held"]) for a in listed] == [(ACCOUNT, 2)]
        status, summary = await admin(base, "GET", f"/admin/accounts/{ACCOUNT}/held")
        assert (status, summary["held"]) == (200, 2)
        status, body = await admin(base, "POST", f"/admin/accounts/{ACCOUNT}/unblock",
                                   {"reason": "cleaned"})
        assert status == 409 and "holds 2 jobs" in body["error"]
        status, body = await admin(base, "POST", f"/admin/accounts/{ACCOUNT}/unblock",
                                   {"reason": "cleaned", "held": "send"})
        assert status == 400 and "release or discard" in body["error"]
        status, body = await admin(base, "POST", f"/admin/accounts/{ACCOUNT}/unblock",
                                   {"reason": "cleaned", "held": "discard",
                                    "category": "marketing"})
        assert status == 200 and (body["state"], body["held"]["settled"]) == ("active", 1)
        [dropped] = await statuses(amqp_url, 1)
        assert (dropped["id"], dropped["status"]) == (jobs[1]["id"], "blocked")
        status, body = await admin(base, "POST", f"/admin/accounts/{ACCOUNT}/held/release",
                                   {"reason": "receipts go"})
        assert status == 200 and (body["settled"], body["remaining"]) == (1, 0)
        [sent] = await statuses(amqp_url, 1)
        assert (sent["id"], sent["status"]) == (jobs[0]["id"], "sent")
    assert len(recorder.messages) == 1
