"""A second SMS path on real RabbitMQ and Redis: two Twilio stand-ins (two accounts, each with
its own SID and auth token, driven through the real ``twilio`` client), the worker and the
webhook server.

While the first account's API cannot be reached (its server stopped: connection refused) or
answers 5xx, SMS go through the fallback account, once each; its status callbacks, signed
with the fallback's own token, are verified and become the jobs' events; a job with its own
``from`` (a number of the first account) is deferred, not sent from another account's number;
after the probe interval the first path is tried again and takes its traffic back. The gauge
``outbox_relay_up`` follows each change."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from prometheus_client import generate_latest

from outbox.devsinks.twilio_api import TwilioStandIn
from tests.integration.helpers import collect, events, publish, running_app, running_worker

pytestmark = pytest.mark.integration
SID_A, TOKEN_A, FROM_A = "AC" + "a" * 32, "token-first", "+15005550006"
SID_B, TOKEN_B, MG_B = "AC" + "b" * 32, "token-fallback", "MG" + "b" * 32
PROBE = 2.0  # seconds the first path stays marked down


def sms(job_id: str, n: int, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": job_id, "account_id": "acct_fo", "channel": "sms",
            "category": "transactional", "to": f"+8529124{n + 1000:04d}",
            "body": f"Your code is {n}", **fields}


def by_id(messages: list[Any]) -> dict[str, list[dict[str, Any]]]:
    seen: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events(messages):
        seen[e["id"]].append(e)
    return seen


def gauge(worker: Any, sid: str, sender: str) -> str:
    text = generate_latest(worker.metrics.registry).decode()
    [line] = [ln for ln in text.splitlines()
              if ln.startswith(f'outbox_relay_up{{relay="twilio:{sid}:{sender}"}}')]
    return line.rsplit(" ", 1)[1]


@pytest.fixture
async def two_accounts(make_settings, unused_tcp_port_factory):
    first = TwilioStandIn(account_sid=SID_A, auth_token=TOKEN_A, callback_delay=0.02)
    second = TwilioStandIn(account_sid=SID_B, auth_token=TOKEN_B, callback_delay=0.02)
    first_port = unused_tcp_port_factory()
    base_a = await first.start(port=first_port)
    base_b = await second.start()
    web_port = unused_tcp_port_factory()
    settings = make_settings(
        twilio_account_sid=SID_A, twilio_auth_token=TOKEN_A, twilio_from=FROM_A,
        twilio_api_base=base_a, twilio_fallback_account_sid=SID_B,
        twilio_fallback_auth_token=TOKEN_B, twilio_fallback_messaging_service_sid=MG_B,
        twilio_fallback_api_base=base_b, twilio_probe_interval=PROBE,
        public_url=f"http://127.0.0.1:{web_port}")
    async with running_app(settings, web_port):
        yield settings, first, second, first_port
    await first.close()
    await second.close()


async def until(check: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def test_the_fallback_account_takes_the_sms_while_the_first_is_down(two_accounts,
                                                                         amqp_url):
    settings, first, second, first_port = two_accounts
    async with running_worker(settings) as worker:
        assert gauge(worker, SID_A, FROM_A) == "1.0"
        await publish(amqp_url, [sms("fo-1", 1)])
        await until(lambda: len(first.messages) == 1)
        await first.drain()  # its callbacks sent

        await first.close()  # the first account's API is gone: connection refused
        await publish(amqp_url, [sms(f"fo-{n}", n) for n in range(2, 6)])
        await until(lambda: len(second.messages) == 4)
        assert gauge(worker, SID_A, FROM_A) == "0.0"
        got = await collect(amqp_url, "outbox.status", lambda m: (
            sum(e["status"] == "delivered" for e in events(m)) >= 5), timeout=30)
        # a job sending from the first account's own number is not moved to another account
        await publish(amqp_url, [sms("fo-own", 9, **{"from": FROM_A})])
        got += await collect(amqp_url, "outbox.status", lambda m: any(
            e["id"] == "fo-own" and e["status"] == "deferred" for e in events(m)), timeout=30)

        await first.start(port=first_port)  # back; tried again after the probe interval
        await asyncio.sleep(PROBE)
        await publish(amqp_url, [sms("fo-back", 10)])
        await until(lambda: any(m["to"] == "+85291241010" for m in first.messages))
        more = await collect(amqp_url, "outbox.status", lambda m: (
            any(e["id"] == "fo-back" and e["status"] == "delivered" for e in events(m))
            and any(e["id"] == "fo-own" and e["status"] == "delivered"
                    for e in events(m))), timeout=40)
        assert gauge(worker, SID_A, FROM_A) == "1.0"

    statuses = by_id(got + more)
    for n in range(1, 6):
        assert [e["status"] for e in statuses[f"fo-{n}"]] == ["sent", "delivered"], n
    # the fallback's own callbacks (signed with its token) became the jobs' events
    fallback_sids = {m["sid"] for m in second.messages}
    assert {e["provider_message_id"] for n in range(2, 6)
            for e in statuses[f"fo-{n}"]} == fallback_sids
    assert all(m["messaging_service_sid"] == MG_B and m["account_sid"] == SID_B
               for m in second.messages)
    # deferred while its account was down, sent from its own number when it came back
    own = [e["status"] for e in statuses["fo-own"]]
    assert own[0] == "deferred" and own[-2:] == ["sent", "delivered"], own
    assert [m["from"] for m in first.messages if m["to"] == "+85291241009"] == [FROM_A]
    # each job created once, across both accounts
    created = [m["to"] for m in first.messages + second.messages]
    assert len(created) == len(set(created)) == 7


async def test_a_5xx_moves_the_sms_to_the_fallback_and_a_4xx_does_not(two_accounts, amqp_url):
    settings, first, second, _ = two_accounts
    first.fail_next(1, status=503, code=20503)
    async with running_worker(settings):
        await publish(amqp_url, [sms("five-1", 21)])
        await until(lambda: len(second.messages) == 1)
        await asyncio.sleep(PROBE)  # the first path is tried again
        first.fail_next(1, status=400, code=21211)  # Twilio's answer about the number
        await publish(amqp_url, [sms("four-1", 22)])
        got = await collect(amqp_url, "outbox.status", lambda m: (
            any(e["id"] == "four-1" for e in events(m))
            and any(e["id"] == "five-1" and e["status"] == "delivered"
                    for e in events(m))), timeout=30)
    statuses = by_id(got)
    assert [e["status"] for e in statuses["five-1"]] == ["sent", "delivered"]
    assert [e["status"] for e in statuses["four-1"]] == ["rejected"]
    assert len(second.messages) == 1  # the refused number was not tried on the fallback
