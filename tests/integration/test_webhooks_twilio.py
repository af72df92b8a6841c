"""Twilio callbacks, signed by the stand-in as Twilio signs them, into the real webhook server:
verified, parsed, named to their job, and put on outbox.events; forgeries change nothing."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from outbox.devsinks.twilio_api import TwilioStandIn
from sender.channels.twilio import TwilioChannel, TwilioConfig
from sender.models import SmsJob
from tests.integration.helpers import collect, running_app

pytestmark = pytest.mark.integration
SID, TOKEN = "AC" + "2" * 32, "auth-token-for-tests"


@pytest.fixture
async def server(make_settings, unused_tcp_port):
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings = make_settings(twilio_account_sid=SID, twilio_auth_token=TOKEN,
                             twilio_from="+15005550006", public_url=public)
    async with running_app(settings, unused_tcp_port):
        yield settings, public


def _job(to: str, job_id: str) -> SmsJob:
    return SmsJob.model_validate({"v": 1, "id": job_id, "account_id": "acct_9",
                                  "channel": "sms", "category": "notification",
                                  "topic": "task", "to": to, "body": "Task due"})


async def _send_through_standin(public: str, to: str, job_id: str) -> TwilioStandIn:
    api = TwilioStandIn(account_sid=SID, auth_token=TOKEN, callback_delay=0.01)
    base = await api.start()
    channel = TwilioChannel(TwilioConfig(SID, TOKEN, base, "+15005550006", None,
                                         f"{public}/webhooks/twilio/status"))
    await channel.send(_job(to, job_id))
    await api.drain()
    await channel.close()
    await api.close()
    return api


async def test_signed_callbacks_become_events_for_their_job(server, amqp_url):
    settings, public = server
    api = await _send_through_standin(public, "+85291230001", "job-d1")
    assert [status for _, _, status in api.callbacks_sent] == [204, 204]
    got = await collect(amqp_url, "outbox.events", lambda m: len(m) >= 2)
    events = [json.loads(m.body) for m in got]
    assert [e["type"] for e in events] == ["accepted", "delivered"]
    assert {(e["job_id"], e["account_id"], e["provider"]) for e in events} == \
        {("job-d1", "acct_9", "twilio")}


async def test_an_undeliverable_number_is_a_bounce_event(server, amqp_url):
    settings, public = server
    await _send_through_standin(public, "+85291230005", "job-b1")
    got = await collect(amqp_url, "outbox.events", lambda m: len(m) >= 2)
    last = json.loads(got[-1].body)
    assert (last["type"], last["kind"], last["reason"]) == ("bounced", "hard", "userunknown")


async def _post(url: str, params: dict[str, str], signature: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=params,
                                headers={"X-Twilio-Signature": signature}) as response:
            return response.status


@pytest.mark.parametrize("forgery", ["wrong-token", "tampered", "missing"])
async def test_a_forged_callback_is_refused_and_changes_nothing(server, amqp_url, forgery):
    settings, public = server
    url = f"{public}/webhooks/twilio/status?j=job-f&a=acct_9"
    params = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered",
              "To": "+85291234567", "From": "+15005550006", "AccountSid": SID}
    key = "not-the-token" if forgery == "wrong-token" else TOKEN
    signature = RequestValidator(key).compute_signature(url, params)
    if forgery == "tampered":
        params = {**params, "MessageStatus": "undelivered", "ErrorCode": "30005"}
    if forgery == "missing":
        signature = ""
    assert await _post(url, params, signature) == 403
    assert await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []


async def test_inbound_stop_is_an_opt_out_event(server, amqp_url):
    settings, public = server
    url = f"{public}/webhooks/twilio/inbound?a=acct_9"
    params: dict[str, Any] = {"MessageSid": "SM" + "b" * 32, "From": "+85291234567",
                              "To": "+15005550006", "Body": " stop ", "AccountSid": SID}
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    assert await _post(url, params, signature) == 200
    [got] = await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1)
    event = json.loads(got.body)
    assert (event["type"], event["recipient"], event["account_id"]) == \
        ("unsubscribed", "+85291234567", "acct_9")
