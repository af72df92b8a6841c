"""The worker's pre-send verdicts end to end: rate-limit parking, global suppression,
suspension, notification preferences."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.helpers import (
    cli_runner,
    collect,
    email_job,
    events,
    publish,
    running_worker,
)

pytestmark = pytest.mark.integration


async def test_rate_limited_jobs_are_parked_not_counted_and_all_sent(
        make_settings, smtp_server, amqp_url, redis_url, monkeypatch):
    smtp_url, recorder = smtp_server
    run = cli_runner(monkeypatch, amqp_url, redis_url)
    assert await run("accounts", "configure", "acct_slow", "--rate", "10", "--burst", "5") == 0
    jobs = [email_job(account_id="acct_slow") for _ in range(25)]
    async with running_worker(make_settings(smtp_url=smtp_url)) as worker:
        await publish(amqp_url, jobs)
        got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 25, timeout=30)
        parked = worker.metrics.jobs.labels("email", "rate_limited")._value.get()
    sent = events(got)
    assert Counter(e["status"] for e in sent) == {"sent": 25}  # no deferred events
    assert {e["attempt"] for e in sent} == {1}  # a park is not an attempt
    assert parked > 0
    assert len({e["id"] for e in sent}) == 25  # each job once: no copies
    assert len(recorder.messages) == 25


async def test_suppressed_suspended_and_switched_off(make_settings, smtp_server, amqp_url,
                                                     redis_url, monkeypatch):
    smtp_url, recorder = smtp_server
    run = cli_runner(monkeypatch, amqp_url, redis_url)
    assert await run("suppression", "add", "gone@example.com", "--channel", "email",
                     "--reason", "hard_bounce", "--actor", "test") == 0
    assert await run("accounts", "configure", "acct_p", "--rate", "50") == 0  # known to Outbox
    assert await run("prefs", "set", "acct_p", "pat@example.com", "--topic", "meeting",
                     "--channel", "email", "--off") == 0
    assert await run("accounts", "configure", "acct_s", "--rate", "50") == 0
    assert await run("accounts", "suspend", "acct_s", "--reason", "fraud check",
                     "--actor", "alice") == 0
    jobs = [email_job(account_id="acct_x", to="Gone@example.com"),
            email_job(account_id="acct_p", to="pat@example.com", category="notification",
                      topic="meeting"),
            email_job(account_id="acct_p", to="pat@example.com", category="notification",
                      topic="task"),
            email_job(account_id="acct_s")]
    async with running_worker(make_settings(smtp_url=smtp_url)):
        await publish(amqp_url, jobs)
        got = await collect(amqp_url, "outbox.status",
                            lambda m: sum(e["id"] in {j["id"] for j in jobs}
                                          for e in events(m)) >= 4, timeout=15)
    by_id = {e["id"]: e for e in events(got)}
    assert [(by_id[j["id"]]["status"], by_id[j["id"]]["reason"]) for j in jobs] == [
        ("suppressed", "hard_bounce"), ("suppressed", "preference"), ("sent", None),
        ("held", "account_suspended")]
    assert [rcpts for _, rcpts, _ in recorder.messages] == [["pat@example.com"]]
    suspended = [m for m in got if m.routing_key == "account.suspended"]
    assert len(suspended) == 1
