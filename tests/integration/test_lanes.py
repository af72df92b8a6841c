"""Priority lanes on a real broker, Redis and SMTP relay: the client and ``outbox enqueue`` put
marketing on ``<channel>.bulk`` and the rest on ``<channel>``; a marketing job on the plain key
is still sent; a job of another channel is dead-lettered from either lane; and during a blast
the transactional jobs go first, the blast holding at most its share of the worker's slots
while they are pending and every slot when they are done."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiosmtpd.smtp import SMTP

from sender.client import Outbox
from suppression.store import ConsentStore
from tests.integration.helpers import (
    collect,
    email_job,
    events,
    publish,
    running_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
ACCOUNT = "acct_lanes"



async def _marketing_account(cli, redis_url: str, recipients: list[str]) -> None:
    assert await cli("accounts", "configure", ACCOUNT, "--business-name", "Lanes Ltd",
                     "--address", "1 Queen's Road Central, Hong Kong",
                     "--contact-email", "hello@lanes.example",
                     "--contact-phone", "+852 2123 4567") == 0
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = ConsentStore(client)
        for rcpt in recipients:
            await store.grant(ACCOUNT, rcpt, channel="email", source="test")
    finally:
        await client.aclose()


def _ids(messages: list[Any]) -> set[str]:
    return {json.loads(m.body)["id"] for m in messages}


async def test_client_and_enqueue_route_by_category(amqp_url, cli, tmp_path):
    offer = email_job(account_id=ACCOUNT, category="marketing")
    receipt = email_job(account_id=ACCOUNT)
    notice = email_job(account_id=ACCOUNT, category="notification", topic="task")
    raw_offer = email_job(account_id=ACCOUNT, category="marketing")
    async with Outbox(amqp_url) as outbox:
        await outbox.publish(offer)
    lines = tmp_path / "jobs.jsonl"
    lines.write_text("\n".join(json.dumps(j) for j in (receipt, notice)) + "\n")
    assert await cli("enqueue", str(lines)) == 0
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps(raw_offer) + "\n")
    assert await cli("enqueue", "--no-validate", str(raw)) == 0

    bulk = await collect(amqp_url, "outbox.email.bulk", lambda m: len(m) >= 2, timeout=10)
    priority = await collect(amqp_url, "outbox.email", lambda m: len(m) >= 2, timeout=10)
    assert _ids(bulk) == {offer["id"], raw_offer["id"]}
    assert {m.routing_key for m in bulk} == {"email.bulk"}
    assert _ids(priority) == {receipt["id"], notice["id"]}
    assert {m.routing_key for m in priority} == {"email"}


async def test_marketing_on_the_plain_key_is_sent_and_another_channels_job_is_dead_lettered(
        make_settings, smtp_server, amqp_url, redis_url, cli):
    smtp_url, recorder = smtp_server
    await _marketing_account(cli, redis_url, ["amy@example.com"])
    offer = email_job(account_id=ACCOUNT, category="marketing", to="amy@example.com")
    stray = {"v": 1, "id": "stray-sms-1", "account_id": ACCOUNT, "channel": "sms",
             "category": "transactional", "to": "+85291234567", "body": "hi"}
    async with running_worker(make_settings(smtp_url=smtp_url)):
        await publish(amqp_url, [offer], routing_key="email")  # the priority lane
        await publish(amqp_url, [stray], routing_key="email.bulk")
        got = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2))
        dead = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
    by_id = {e["id"]: e for e in got}
    assert by_id[offer["id"]]["status"] == "sent"
    assert len(recorder.by_rcpt("amy@example.com")) == 1
    assert by_id[stray["id"]]["status"] == "rejected"
    [message] = dead
    assert json.loads(message.body)["id"] == stray["id"]
    reason = str(message.headers.get("x-outbox-reason"))
    assert "on the email queue" in reason and "routing key 'sms'" in reason
    assert not recorder.by_rcpt("+85291234567")


class LaneRelay:
    """An SMTP relay that tells the lanes apart by recipient (``tx...`` or ``fan...``),
    counts each lane's messages in DATA, and holds every DATA reply until :meth:`go`, then
    answers each after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.now: Counter[str] = Counter()
        #: (lane, bulk in DATA, transactional in DATA) at each DATA start, this one included
        self.starts: list[tuple[str, int, int]] = []
        self.done: list[str] = []  # lanes, in the order their replies went out
        self.rcpts: Counter[str] = Counter()
        self._go = asyncio.Event()

    def go(self) -> None:
        self._go.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        rcpt = envelope.rcpt_tos[0]
        lane = "tx" if rcpt.startswith("tx") else "bulk"
        self.rcpts[rcpt] += 1
        self.now[lane] += 1
        self.starts.append((lane, self.now["bulk"], self.now["tx"]))
        try:
            await self._go.wait()
            await asyncio.sleep(self.delay)
        finally:
            self.now[lane] -= 1
        self.done.append(lane)
        return "250 2.0.0 Ok: queued"


async def test_transactional_jobs_overtake_a_blast_which_keeps_to_its_share(
        make_settings, amqp_url, redis_url, cli):
    slots, share, blast, urgent = 8, 0.5, 300, 10
    cap = int(slots * share)
    fans = [f"fan{i}@example.com" for i in range(blast)]
    await _marketing_account(cli, redis_url, fans)
    relay = LaneRelay(delay=0.03)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay, hostname="lanes-mx"),
                                      host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings(smtp_url=f"smtp://127.0.0.1:{port}", concurrency=slots,
                             prefetch=2 * slots, bulk_share=share, smtp_pool_size=slots)
    try:
        async with running_worker(settings) as worker:
            async with Outbox(amqp_url) as outbox:
                offers = [email_job(account_id=ACCOUNT, category="marketing", to=fan)
                          for fan in fans]
                assert (await outbox.publish_many(offers)).ok
                # no priority work: the blast takes every slot (all held in DATA)
                await wait_for(lambda: relay.now["bulk"] == slots, timeout=20)
                await asyncio.sleep(0.3)
                assert relay.now["bulk"] == slots and worker.slots.busy["bulk"] == slots
                receipts = [email_job(account_id=ACCOUNT, to=f"tx{i}@example.com")
                            for i in range(urgent)]
                assert (await outbox.publish_many(receipts)).ok
            await wait_for(lambda: worker.slots.priority_pending, timeout=10)
            await asyncio.sleep(0.3)  # every receipt has reached the worker and waits
            assert worker.slots.waiting("priority") == urgent
            relay.go()
            await wait_for(lambda: len(relay.done) == blast + urgent, timeout=60)
            statuses = events(await collect(amqp_url, "outbox.status",
                                            lambda m: len(m) >= blast + urgent))
    finally:
        server.close()
        await server.wait_closed()

    # every job sent once
    assert Counter(e["status"] for e in statuses) == {"sent": blast + urgent}
    assert set(relay.rcpts.values()) == {1} and len(relay.rcpts) == blast + urgent
    # the receipts went before the blast: the last one is done among the first replies
    last_tx = max(i for i, lane in enumerate(relay.done) if lane == "tx")
    assert last_tx < slots + urgent + cap, relay.done[:40]
    # while a receipt was in DATA, no bulk message started beyond the bulk lane's share
    assert max(b for lane, b, tx in relay.starts if lane == "bulk" and tx) <= cap
    # and once they were done, the blast took every slot again
    last_tx_start = max(i for i, (lane, _, _) in enumerate(relay.starts) if lane == "tx")
    assert max(b for _, b, _ in relay.starts[last_tx_start:]) == slots
