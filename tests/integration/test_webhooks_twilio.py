"""Twilio callbacks, signed by the stand-in as Twilio signs them, into the real webhook server:
verified, parsed, named to their job, and put on outbox.events; forgeries change nothing."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from outbox.devsinks.twilio_api import TwilioStandIn
from sender.channels.twilio import TwilioChannel, TwilioConfig
from sender.models import SmsJob
from tests.integration.helpers import collect, redis_state, running_app

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


# --- a captured, genuinely signed request, rewritten by whoever captured it ----------------------

FORM = "application/x-www-form-urlencoded"
STATUS_SID, INBOUND_SID = "SM" + "c" * 32, "SM" + "d" * 32
# an unreachable handset (30003: a soft bounce); 30007 would count as a complaint
CAPTURED_STATUS = {"AccountSid": SID, "ApiVersion": "2010-04-01", "ErrorCode": "30003",
                   "From": "+15005550006", "MessageSid": STATUS_SID,
                   "MessageStatus": "undelivered", "SmsSid": STATUS_SID,
                   "SmsStatus": "undelivered", "To": "+85291230001"}
CAPTURED_INBOUND = {"AccountSid": SID, "Body": "STOP", "From": "+85291230002",
                    "MessageSid": INBOUND_SID, "NumMedia": "0", "To": "+15005550006"}
COMPLAINT = b"ErrorCode=30007&MessageStatus=failed"  # names the capture already has


async def _post_raw(url: str, body: bytes, signature: str) -> int:
    """The attacker's request: these bytes, this signature, Twilio's content type."""
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers={
                "X-Twilio-Signature": signature, "Content-Type": FORM}) as response:
            return response.status


def _captured(url: str, fields: dict[str, str]) -> tuple[bytes, str]:
    """A callback as Twilio posts it: the form and the signature Twilio computes for it."""
    return urlencode(fields).encode(), RequestValidator(TOKEN).compute_signature(url, fields)


def _multi_signature(url: str, pairs: list[tuple[str, str]]) -> str:
    """Twilio's signature over a form with a repeated name (every value, values sorted)."""
    from multidict import MultiDict

    return RequestValidator(TOKEN).compute_signature(url, MultiDict(pairs))


STATUS_REWRITES: dict[str, Any] = {
    "fields added in front": lambda body, url: (COMPLAINT + b"&" + body, url, 400),
    "fields added behind": lambda body, url: (body + b"&" + COMPLAINT, url, 400),
    "the form twice": lambda body, url: (body + b"&" + body, url, 400),
    "one field repeated": lambda body, url: (body + b"&To=%2B85291230001", url, 400),
    "a new field behind": lambda body, url: (body + b"&ErrorMessage=Blocked", url, 403),
    "a new field in front": lambda body, url: (b"OptOutType=STOP&" + body, url, 403),
    "a value changed": lambda body, url: (body.replace(b"=30003", b"=30007"), url, 403),
    "job renamed": lambda body, url: (body, url.replace("j=job-c1", "j=job-other"), 403),
    "account renamed": lambda body, url: (body, url.replace("a=acct_9", "a=acct_rival"), 403),
    "account added": lambda body, url: (body, url + "&a=acct_rival", 403),
    "query reordered": lambda body, url: (body, url.replace("j=job-c1&a=acct_9",
                                                            "a=acct_9&j=job-c1"), 403),
}


@pytest.mark.parametrize("rewrite", list(STATUS_REWRITES))
async def test_a_rewritten_status_callback_is_refused_and_changes_nothing(
        server, amqp_url, redis_url, caplog, rewrite):
    settings, public = server
    url = f"{public}/webhooks/twilio/status?j=job-c1&a=acct_9"
    body, signature = _captured(url, CAPTURED_STATUS)
    forged_body, forged_url, status = STATUS_REWRITES[rewrite](body, url)
    before = await redis_state(redis_url)
    assert await _post_raw(forged_url, forged_body, signature) == status
    assert await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []
    assert await redis_state(redis_url) == before
    assert "twilio webhook refused" in caplog.text
    result = "bad_payload" if status == 400 else "bad_signature"
    async with aiohttp.ClientSession() as session, session.get(f"{public}/metrics") as r:
        assert f'outbox_webhook_events_total{{provider="twilio",result="{result}",' \
               f'type="unknown"}} 1.0' in await r.text()
    # the capture itself was good: as posted, it is taken, and means what Twilio said
    assert await _post_raw(url, body, signature) == 204
    [got] = await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1)
    event = json.loads(got.body)
    assert (event["type"], event["job_id"], event["account_id"], event["recipient"]) == \
        ("soft_bounced", "job-c1", "acct_9", "+85291230001")


@pytest.mark.parametrize("order", [("undelivered", "failed"), ("failed", "undelivered")])
async def test_a_repeated_field_is_refused_even_under_a_valid_signature(
        server, amqp_url, redis_url, order):
    # Twilio's signature sorts a repeated name's values, so it cannot tell these two bodies
    # apart while a parser reading one value would: neither is taken.
    settings, public = server
    url = f"{public}/webhooks/twilio/status?j=job-c1&a=acct_9"
    pairs = [(k, v) for k, v in CAPTURED_STATUS.items() if k != "MessageStatus"]
    signature = _multi_signature(url, [*pairs, ("MessageStatus", "undelivered"),
                                       ("MessageStatus", "failed")])
    body = urlencode([*pairs, ("MessageStatus", order[0]), ("MessageStatus", order[1])]).encode()
    before = await redis_state(redis_url)
    assert await _post_raw(url, body, signature) == 400
    assert await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []
    assert await redis_state(redis_url) == before


INBOUND_REWRITES: dict[str, Any] = {
    "another sender in front": lambda body: (b"From=%2B85291239999&" + body, 400),
    "another sender behind": lambda body: (body + b"&From=%2B85291239999", 400),
    "the body twice": lambda body: (body + b"&" + body, 400),
    "a keyword in front": lambda body: (b"OptOutType=STOP&" + body, 403),
}


@pytest.mark.parametrize("rewrite", list(INBOUND_REWRITES))
async def test_a_rewritten_inbound_stop_opts_nobody_out(server, amqp_url, redis_url, rewrite):
    settings, public = server
    url = f"{public}/webhooks/twilio/inbound?a=acct_9"
    body, signature = _captured(url, CAPTURED_INBOUND)
    forged, status = INBOUND_REWRITES[rewrite](body)
    before = await redis_state(redis_url)
    assert await _post_raw(url, forged, signature) == status
    assert await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []
    assert await redis_state(redis_url) == before
    assert await _post_raw(url, body, signature) == 200
    [got] = await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1)
    assert json.loads(got.body)["recipient"] == "+85291230002"


@pytest.mark.parametrize(("body", "content_type"), [
    (b"MessageSid=SM1&MessageStatus=delivered&\xff", FORM),
    (b"MessageSid=SM1&MessageStatus=delivered", "application/json"),
    (b"MessageSid=SM1&MessageStatus=delivered", FORM + "; charset=iso-8859-1"),
    (b"MessageSid=SM1&&MessageStatus=delivered", FORM),
])
async def test_a_body_that_is_not_a_strict_form_is_400(server, amqp_url, body, content_type):
    settings, public = server
    url = f"{public}/webhooks/twilio/status?j=job-c1&a=acct_9"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers={
                "X-Twilio-Signature": "x", "Content-Type": content_type}) as response:
            assert response.status == 400
    assert await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []
