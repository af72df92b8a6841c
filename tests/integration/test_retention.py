"""Retention per kind of record (OUTBOX_IDEMPOTENCY_TTL, OUTBOX_RETENTION_TIMELINES,
OUTBOX_RETENTION_HISTORY) against real RabbitMQ, Redis and SMTP: jobs sent and refused by the
real worker, each kind of key's TTL read on the Redis; 0 writes nothing of the kind; a bad
value stops ``outbox worker`` at start with one line naming the setting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from sender.service import make_redis
from suppression import keys
from suppression.history import job_story, recipient_history
from suppression.store import SuppressionStore
from tests.integration.helpers import email_job, publish, running_worker

pytestmark = pytest.mark.integration
ACCOUNT = "acct_keep"


@pytest.fixture
async def redis(make_settings):
    client = make_redis(make_settings())
    yield client
    await client.aclose()


async def reach(redis: Any, job_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        story = await job_story(redis, ACCOUNT, job_id)
        if story and story["status"] == status:
            return
        assert time.monotonic() < deadline, story
        await asyncio.sleep(0.05)


async def run_two_jobs(settings: Any, amqp_url: str, redis: Any) -> tuple[dict[str, Any],
                                                                        dict[str, Any]]:
    """One job sent, one refused (an unsubscribe of the account): the refusal's entry is
    the kind that goes to the timeline list."""
    sent = email_job(account_id=ACCOUNT, to="kept@example.com")
    refused = email_job(account_id=ACCOUNT, to="left@example.com")
    await SuppressionStore(redis).add("left@example.com", channel="email",
                                      reason="unsubscribe", account_id=ACCOUNT)
    await publish(amqp_url, [sent, refused])
    async with running_worker(settings):
        await reach(redis, sent["id"], "sent")
        await reach(redis, refused["id"], "suppressed")
    return sent, refused


def near(ttl: int, expected: int) -> bool:
    """A TTL read a moment after it was set (a margin of a minute for a slow machine)."""
    return expected - 60 <= ttl <= expected


async def test_each_kind_of_record_expires_after_its_own_retention(make_settings, smtp_server,
                                                                   amqp_url, redis):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, idempotency_ttl=7 * 3600,
                             retention_timelines=5 * 3600, retention_history=2 * 3600)
    sent, refused = await run_two_jobs(settings, amqp_url, redis)
    assert len(recorder.messages) == 1
    ttls = {
        "job": await redis.ttl(keys.job(ACCOUNT, sent["id"])),
        "refused job": await redis.ttl(keys.job(ACCOUNT, refused["id"])),
        "timeline": await redis.ttl(keys.timeline(ACCOUNT, refused["id"])),
        "history": await redis.ttl(keys.history(ACCOUNT, "email", "kept@example.com")),
        "global history": await redis.ttl(keys.global_history("email", "kept@example.com")),
    }
    expected = {"job": 7 * 3600, "refused job": 7 * 3600, "timeline": 5 * 3600,
                "history": 2 * 3600, "global history": 2 * 3600}
    assert all(near(ttls[k], expected[k]) for k in expected), ttls
    # the sent job's one entry is in its record: no timeline key of its own
    assert await redis.exists(keys.timeline(ACCOUNT, sent["id"])) == 0
    story = await job_story(redis, ACCOUNT, refused["id"])
    assert story is not None
    assert [(e["status"], e["reason"]) for e in story["timeline"]] == [
        ("suppressed", "unsubscribe")]


async def test_defaults_keep_everything_as_long_as_the_job_record(make_settings, smtp_server,
                                                                  amqp_url, redis):
    smtp_url, _ = smtp_server
    settings = make_settings(smtp_url=smtp_url, idempotency_ttl=4 * 3600)
    assert settings.timeline_ttl == settings.history_ttl == 4 * 3600
    sent, refused = await run_two_jobs(settings, amqp_url, redis)
    for key in (keys.job(ACCOUNT, sent["id"]), keys.job(ACCOUNT, refused["id"]),
                keys.history(ACCOUNT, "email", "left@example.com"),
                keys.global_history("email", "left@example.com")):
        assert near(await redis.ttl(key), 4 * 3600), key
    # a timeline kept as long as the record: its short entries are in the record
    assert await redis.exists(keys.timeline(ACCOUNT, refused["id"])) == 0
    story = await job_story(redis, ACCOUNT, refused["id"])
    assert story is not None
    assert [(e["status"], e["reason"]) for e in story["timeline"]] == [
        ("suppressed", "unsubscribe")]


async def test_zero_writes_no_timeline_list_and_no_history(make_settings, smtp_server,
                                                          amqp_url, redis):
    smtp_url, _ = smtp_server
    settings = make_settings(smtp_url=smtp_url, retention_timelines=0, retention_history=0)
    sent, refused = await run_two_jobs(settings, amqp_url, redis)
    for key in (keys.timeline(ACCOUNT, refused["id"]),
                keys.history(ACCOUNT, "email", "kept@example.com"),
                keys.global_history("email", "kept@example.com"),
                keys.global_history("email", "left@example.com")):
        assert await redis.exists(key) == 0, key
    assert await recipient_history(redis, "kept@example.com") == []
    # the job records still say what happened (and the sent job's entry with them)
    story = await job_story(redis, ACCOUNT, sent["id"])
    assert story is not None and [e["status"] for e in story["timeline"]] == ["sent"]
    refused_story = await job_story(redis, ACCOUNT, refused["id"])
    assert refused_story is not None and refused_story["status"] == "suppressed"
    assert refused_story["reason"] == "unsubscribe"


BAD = [
    ({"OUTBOX_RETENTION_HISTORY": "-1"}, "OUTBOX_RETENTION_HISTORY"),
    ({"OUTBOX_RETENTION_HISTORY": "600"}, "OUTBOX_RETENTION_HISTORY (600 s) must be 0"),
    ({"OUTBOX_RETENTION_TIMELINES": "3 days"}, "OUTBOX_RETENTION_TIMELINES"),
    ({"OUTBOX_RETENTION_TIMELINES": "400000"},
     "OUTBOX_RETENTION_TIMELINES (400000 s) must not exceed OUTBOX_IDEMPOTENCY_TTL (259200 s)"),
    ({"OUTBOX_IDEMPOTENCY_TTL": "7200", "OUTBOX_RETENTION_HISTORY": "7201"},
     "OUTBOX_RETENTION_HISTORY (7201 s) must not exceed OUTBOX_IDEMPOTENCY_TTL (7200 s)"),
]


@pytest.mark.parametrize(("settings", "says"), BAD, ids=[str(s) for s, _ in BAD])
def test_a_bad_retention_stops_the_worker_at_start(settings: dict[str, str], says: str,
                                                   amqp_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update({"OUTBOX_AMQP_URL": amqp_url, "OUTBOX_METRICS_PORT": "0", **settings})
    done = subprocess.run([sys.executable, "-m", "outbox", "worker"], env=env,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr
