"""The reply to the end of DATA, through the real worker, RabbitMQ, Redis and aiosmtpd relays
that store each message as soon as it has arrived and answer later, or never.

* A relay answering the end of DATA after 35 s (past the old 30 s SMTP timeout; the test's
  ``OUTBOX_SMTP_TIMEOUT`` is 5 s) gets each of 5 messages exactly once and the jobs end
  ``sent``: that reply is waited for ``OUTBOX_SMTP_DATA_TIMEOUT`` (default 10 minutes).
* A relay that stores a message and hangs up before answering (an unknown outcome) has it
  sent again only the way a crash does: the delivery is returned with its claim kept and the
  redelivery takes the claim over. No ``deferred`` event, no retry tier, attempt 1; the relay
  has it twice (that one was on the wire), and the job ends ``sent``.
* A relay that never answers in time (``OUTBOX_SMTP_DATA_TIMEOUT=1``) gets each message at
  most UNKNOWN_DELIVERIES times; then the job ends ``failed`` ("outcome unknown").
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from redis.asyncio import Redis

from sender.pipeline import UNKNOWN_DELIVERIES
from suppression.gate import Gate
from tests.integration.helpers import collect, email_job, events, publish, running_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
_MID = re.compile(rb"^Message-ID: <([^@>]+)@", re.MULTILINE | re.IGNORECASE)


class StoringRelay:
    """Stores each message the moment it has arrived (counted by job id), then: waits
    ``delay`` seconds and answers 250, or hangs up without a reply (the first ``drop``
    times it sees a given job)."""

    def __init__(self, delay: float = 0.0, drop: int = 0) -> None:
        self.delay = delay
        self.drop = drop
        self.received: Counter[str] = Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        match = _MID.search(envelope.original_content)
        job_id = match.group(1).decode() if match else "?"
        self.received[job_id] += 1
        if self.received[job_id] <= self.drop:
            server.transport.abort()  # stored, never answered
            return "451 4.3.0 never seen by the client"
        await asyncio.sleep(self.delay)
        return f"250 2.0.0 Ok: queued as {job_id}"


@asynccontextmanager
async def serving(relay: StoringRelay) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay, hostname="slow-mx"),
                                      host="127.0.0.1", port=0)
    try:
        yield f"smtp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _statuses(amqp_url: str, n: int, timeout: float) -> list[dict[str, Any]]:
    return events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= n,
                                timeout=timeout))


async def _job_states(settings: Any, jobs: list[dict[str, Any]]) -> list[dict[str, str]]:
    client = Redis.from_url(settings.redis_url.get_secret_value())
    try:
        gate = Gate(client, idempotency_ttl=60)
        return [await gate.job_state(j["account_id"], j["id"]) for j in jobs]
    finally:
        await client.aclose()


async def test_a_relay_answering_the_end_of_data_after_35_s_gets_each_message_once(
        make_settings, amqp_url):
    relay = StoringRelay(delay=35.0)
    async with serving(relay) as url:
        settings = make_settings(smtp_url=url)  # OUTBOX_SMTP_TIMEOUT 5 s, data: the default
        assert settings.smtp_timeout < 35 < settings.smtp_data_timeout
        jobs = [email_job(to=f"slow{i}@example.com") for i in range(5)]
        started = time.monotonic()
        async with running_worker(settings):
            await publish(amqp_url, jobs)
            got = await _statuses(amqp_url, len(jobs), timeout=120)
            took = time.monotonic() - started
        states = await _job_states(settings, jobs)
    assert sorted((e["id"], e["status"]) for e in got) == sorted((j["id"], "sent") for j in jobs)
    assert relay.received == Counter({j["id"]: 1 for j in jobs})
    assert [s["st"] for s in states] == ["sent"] * len(jobs)
    assert took >= 35
    print(f"\n5 jobs, the relay answering each end of DATA after 35 s: all sent in {took:.1f} s, "
          f"the relay received {sum(relay.received.values())} messages")


async def test_a_relay_hanging_up_after_the_message_has_it_again_only_as_after_a_crash(
        make_settings, amqp_url):
    relay = StoringRelay(drop=1)
    async with serving(relay) as url:
        settings = make_settings(smtp_url=url)
        jobs = [email_job(to=f"drop{i}@example.com") for i in range(5)]
        async with running_worker(settings):
            await publish(amqp_url, jobs)
            got = await _statuses(amqp_url, len(jobs), timeout=60)
            later = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=2)
        states = await _job_states(settings, jobs)
    assert later == []  # no deferred, nothing else: one status a job
    assert sorted((e["id"], e["status"], e["attempt"]) for e in got) == \
        sorted((j["id"], "sent", 1) for j in jobs)
    assert relay.received == Counter({j["id"]: 2 for j in jobs})  # on the wire at the drop
    assert [(s["st"], s["a"]) for s in states] == [("sent", "1")] * len(jobs)


async def test_a_relay_that_never_answers_in_time_ends_the_job_failed_after_few_tries(
        make_settings, amqp_url):
    relay = StoringRelay(delay=3.0)
    async with serving(relay) as url:
        settings = make_settings(smtp_url=url, smtp_data_timeout=1.0)
        job = email_job(to="never@example.com")
        async with running_worker(settings):
            await publish(amqp_url, [job])
            [failed] = await _statuses(amqp_url, 1, timeout=60)
    assert (failed["id"], failed["status"], failed["reason"]) == (job["id"], "failed",
                                                                  "networkerror")
    assert "outcome unknown on 3 deliveries" in failed["detail"]
    assert relay.received == Counter({job["id"]: UNKNOWN_DELIVERIES})
