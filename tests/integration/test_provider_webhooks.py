"""The email providers' webhooks in the real server, with real RabbitMQ and Redis: signed
requests (made here as SNS, SendGrid and Mailgun sign them) become events on outbox.events;
forgeries, stale timestamps and replays are refused and change nothing. With the real worker
too: provider events end jobs it sent, and their status events carry the job's metadata."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from redis.asyncio import Redis

from sender import topology
from sender.bus import Bus, QueueFull
from suppression import keys
from suppression.store import SuppressionStore
from tests.integration.helpers import (
    collect,
    email_job,
    events,
    publish,
    recipient_events,
    redis_state,
    running_app,
    running_worker,
)
from tests.integration.sns_standin import SnsStandIn, sns_standin
from tests.unit.test_provider_mailgun import signature as mailgun_signature
from tests.unit.test_provider_mailgun import signed as mailgun_signed
from tests.unit.test_provider_postmark import record as postmark_record
from tests.unit.test_provider_sendgrid import PUBLIC as SENDGRID_PUBLIC
from tests.unit.test_provider_sendgrid import sign as sendgrid_sign
from tests.unit.test_provider_ses import (
    CERT,
    CERT_URL,
    TOPIC,
    confirmation,
    fixture,
    notification,
)
from tests.unit.test_provider_ses import sign as sns_sign
from webhooks.providers import routes as provider_routes

pytestmark = pytest.mark.integration
MAILGUN_KEY = "key-signing-test-0123456789abcdef"
PM_USER, PM_PASSWORD = "postmark", "pm-password"


@pytest.fixture
async def standin(tmp_path, unused_tcp_port_factory, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[SnsStandIn]:
    """SNS's certificate host, stood in by a real HTTPS server on loopback serving ``CERT``;
    the webhook server's fetcher trusts it and resolves SNS host names to it."""
    async with sns_standin(tmp_path, unused_tcp_port_factory()) as running:
        running.pems[urlsplit(CERT_URL).path] = CERT
        monkeypatch.setattr(provider_routes, "SnsCertificates", running.fetcher)
        yield running


@pytest.fixture
def fetched(standin: SnsStandIn) -> list[str]:
    """Certificate URLs the server fetched (from the stand-in, over HTTPS)."""
    return standin.requests


@pytest.fixture
async def server(make_settings, unused_tcp_port, fetched):
    settings = make_settings(
        ses_topic_arns=f"{TOPIC},arn:aws:sns:eu-west-1:1:other",
        sendgrid_public_key=SENDGRID_PUBLIC, mailgun_signing_key=MAILGUN_KEY,
        postmark_webhook_user=PM_USER, postmark_webhook_password=PM_PASSWORD)
    async with running_app(settings, unused_tcp_port) as base:
        yield base


async def _post(url: str, body: bytes, headers: dict[str, str] | None = None,
                content_type: str = "application/json") -> tuple[int, str]:
    async with (aiohttp.ClientSession() as session,
                session.post(url, data=body, headers={"Content-Type": content_type,
                                                      **(headers or {})}) as r):
        return r.status, await r.text()


async def _events(amqp_url: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    got = await collect(amqp_url, "outbox.events", lambda m: len(m) >= n, timeout=timeout)
    return [json.loads(m.body) for m in got]


async def _nothing(amqp_url: str) -> bool:
    return await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []


# --- SES ----------------------------------------------------------------------------------------

async def test_ses_a_signed_bounce_is_an_event(server, amqp_url, fetched):
    body = json.dumps(sns_sign(notification(fixture("ses-bounce")), "1")).encode()
    assert (await _post(f"{server}/webhooks/ses", body, content_type="text/plain"))[0] == 200
    [event] = await _events(amqp_url, 1)
    assert (event["provider"], event["type"], event["kind"], event["reason"]) == \
        ("ses", "bounced", "hard", "userunknown")
    assert (event["job_id"], event["account_id"], event["recipient"]) == \
        ("job-ses-1", "acct_7", "jane@example.com")
    assert fetched == [CERT_URL]


async def test_ses_a_certificate_that_cannot_be_fetched_is_a_503_and_nothing_published(
        server, amqp_url, standin):
    """SNS retries a delivery answered 5xx: a fetch that failed (here the certificate host
    answers 404) must not be a 403 that would drop the notification."""
    standin.pems.clear()
    body = json.dumps(sns_sign(notification(fixture("ses-bounce")))).encode()
    assert (await _post(f"{server}/webhooks/ses", body))[0] == 503
    assert standin.requests == [CERT_URL]
    assert await _nothing(amqp_url)
    standin.pems[urlsplit(CERT_URL).path] = CERT  # the host is back: SNS's retry is taken
    assert (await _post(f"{server}/webhooks/ses", body))[0] == 200
    [event] = await _events(amqp_url, 1)
    assert event["type"] == "bounced"


async def test_ses_a_forged_signature_is_refused(server, amqp_url):
    message = sns_sign(notification(fixture("ses-complaint")))
    message["Message"] = json.dumps(fixture("ses-bounce"))
    status, _ = await _post(f"{server}/webhooks/ses", json.dumps(message).encode())
    assert status == 403
    assert await _nothing(amqp_url)


async def test_ses_a_certificate_url_off_amazonaws_is_refused_without_a_fetch(
        server, amqp_url, fetched):
    message = sns_sign(notification(fixture("ses-bounce")))
    message["SigningCertURL"] = "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"
    status, _ = await _post(f"{server}/webhooks/ses", json.dumps(message).encode())
    assert status == 403
    assert fetched == []
    assert await _nothing(amqp_url)


async def test_ses_a_topic_not_allowed_is_refused(server, amqp_url, fetched):
    message = sns_sign({**notification(fixture("ses-bounce")),
                        "TopicArn": "arn:aws:sns:us-east-1:999999999999:theirs"})
    assert (await _post(f"{server}/webhooks/ses", json.dumps(message).encode()))[0] == 403
    assert fetched == []
    assert await _nothing(amqp_url)


async def test_ses_a_subscription_confirmation_is_logged_not_published(server, amqp_url, caplog):
    body = json.dumps(sns_sign(confirmation())).encode()
    status, _ = await _post(f"{server}/webhooks/ses", body, content_type="text/plain")
    assert status == 200
    assert "ConfirmSubscription" in caplog.text
    assert await _nothing(amqp_url)


# --- SendGrid -----------------------------------------------------------------------------------

def _sendgrid_body() -> bytes:
    return json.dumps([{
        "email": "example@test.com", "timestamp": int(time.time()),
        "smtp-id": "<job-sg-9@outbox.localhost>", "event": "bounce", "sg_event_id": "sg-ev-1",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "reason": "550 5.1.1 user unknown", "status": "5.1.1", "type": "bounce",
        "outbox_account": "acct_3"}]).encode() + b"\r\n"


async def test_sendgrid_a_signed_batch_is_events(server, amqp_url):
    body, ts = _sendgrid_body(), str(int(time.time()))
    headers = {"X-Twilio-Email-Event-Webhook-Signature": sendgrid_sign(body, ts),
               "X-Twilio-Email-Event-Webhook-Timestamp": ts}
    assert (await _post(f"{server}/webhooks/sendgrid", body, headers))[0] == 200
    [event] = await _events(amqp_url, 1)
    assert (event["type"], event["kind"], event["job_id"], event["account_id"]) == \
        ("bounced", "hard", "job-sg-9", "acct_3")


@pytest.mark.parametrize("forgery", ["tampered", "unsigned", "stale"])
async def test_sendgrid_a_forged_or_stale_request_is_refused(server, amqp_url, forgery):
    body = _sendgrid_body()
    ts = str(int(time.time()) - (600 if forgery == "stale" else 0))
    signature = sendgrid_sign(body, ts)
    if forgery == "tampered":
        body = body.replace(b"acct_3", b"acct_4")
    if forgery == "unsigned":
        signature = ""
    headers = {"X-Twilio-Email-Event-Webhook-Signature": signature,
               "X-Twilio-Email-Event-Webhook-Timestamp": ts}
    assert (await _post(f"{server}/webhooks/sendgrid", body, headers))[0] == 403
    assert await _nothing(amqp_url)


# --- Mailgun ------------------------------------------------------------------------------------

def _mailgun(name: str, timestamp: int | None = None, token: str = "a" * 50,
             key: str = MAILGUN_KEY) -> bytes:
    body = mailgun_signed(name, key)
    ts = str(timestamp if timestamp is not None else int(time.time()))
    body["signature"] = {"timestamp": ts, "token": token,
                         "signature": mailgun_signature(ts, token, key)}
    return json.dumps(body).encode()


async def test_mailgun_a_signed_event_is_published_once_and_a_replay_refused(server, amqp_url):
    body = _mailgun("failed_permanent")
    assert (await _post(f"{server}/webhooks/mailgun", body))[0] == 200
    status, text = await _post(f"{server}/webhooks/mailgun", body)
    assert status == 406 and "token" in text
    # the same token under another body is the replay the token check exists for
    assert (await _post(f"{server}/webhooks/mailgun", _mailgun("delivered")))[0] == 406
    events = await _events(amqp_url, 2, timeout=2)
    assert [(e["type"], e["job_id"], e["account_id"]) for e in events] == \
        [("bounced", "job-mg-2", "acct_5")]
    async with aiohttp.ClientSession() as session, session.get(f"{server}/metrics") as r:
        metrics = await r.text()
    assert 'outbox_webhook_events_total{provider="mailgun",result="replay",type="unknown"} 2.0' \
        in metrics


@pytest.mark.parametrize("forgery,status", [("old", 403), ("future", 403), ("wrong-key", 403)])
async def test_mailgun_a_stale_or_forged_event_is_refused(server, amqp_url, forgery, status):
    now = int(time.time())
    body = {"old": lambda: _mailgun("delivered", now - 301, token="b" * 50),
            "future": lambda: _mailgun("delivered", now + 120, token="c" * 50),
            "wrong-key": lambda: _mailgun("delivered", token="d" * 50, key="not-the-key"),
            }[forgery]()
    assert (await _post(f"{server}/webhooks/mailgun", body))[0] == status
    assert await _nothing(amqp_url)


@pytest.mark.parametrize("field,value", [
    ("signature", "é" * 64), ("signature", "\ud800"), ("token", "tökén-" + "g" * 40),
    ("token", "\udcff"), ("timestamp", "１７３２５３１２００"), ("timestamp", "\ud800"),
])
async def test_mailgun_a_non_ascii_signature_is_403_and_changes_nothing(
        server, amqp_url, redis_url, field, value):
    body = json.loads(_mailgun("failed_permanent", token="g" * 50))
    body["signature"][field] = value
    before = await redis_state(redis_url)
    status, _ = await _post(f"{server}/webhooks/mailgun", json.dumps(body).encode())
    assert status == 403
    assert await _nothing(amqp_url)
    assert await redis_state(redis_url) == before


async def test_mailgun_a_foreign_message_id_names_no_job(server, amqp_url):
    assert (await _post(f"{server}/webhooks/mailgun", _mailgun("opened", token="e" * 50)))[0] \
        == 200
    [event] = await _events(amqp_url, 1)
    assert (event["type"], event["job_id"]) == ("opened", None)


# --- Postmark -----------------------------------------------------------------------------------

def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_postmark_with_basic_auth_is_an_event(server, amqp_url):
    body = json.dumps(postmark_record("hard_bounce")).encode()
    assert (await _post(f"{server}/webhooks/postmark", body, _basic(PM_USER, PM_PASSWORD)))[0] \
        == 200
    [event] = await _events(amqp_url, 1)
    assert (event["type"], event["reason"], event["job_id"], event["account_id"]) == \
        ("bounced", "userunknown", "job-pm-1", "acct_9")


@pytest.mark.parametrize("headers", [{}, _basic(PM_USER, "wrong"), _basic("other", PM_PASSWORD)])
async def test_postmark_wrong_basic_auth_is_401(server, amqp_url, headers):
    body = json.dumps(postmark_record("hard_bounce")).encode()
    async with (aiohttp.ClientSession() as session,
                session.post(f"{server}/webhooks/postmark", data=body,
                             headers={"Content-Type": "application/json", **headers}) as r):
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert await _nothing(amqp_url)


async def test_a_bad_payload_is_400(server, amqp_url):
    body = b"[not json"
    headers = _basic(PM_USER, PM_PASSWORD)
    assert (await _post(f"{server}/webhooks/postmark", body, headers))[0] == 400
    assert await _nothing(amqp_url)


# --- not configured -----------------------------------------------------------------------------

async def test_an_unconfigured_provider_answers_404(make_settings, unused_tcp_port):
    async with running_app(make_settings(), unused_tcp_port) as base:
        for path in ("ses", "sendgrid", "mailgun", "postmark"):
            status, text = await _post(f"{base}/webhooks/{path}", b"{}")
            assert (status, "not configured" in text) == (404, True), path


@pytest.fixture
def small_events_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """outbox.events bounded at 2 messages (reject-publish) in this test's fresh vhost."""
    monkeypatch.setitem(topology.BOUNDS, "events", (2, 1024**3))


async def _fill_events_queue(amqp_url: str) -> int:
    """Publish fillers on outbox.events until the broker refuses one; how many it took."""
    bus = Bus(amqp_url, retry_tiers=(1,))
    await bus.connect(declare=False)
    try:
        for taken in range(10):
            try:
                await bus.publish_to_queue(topology.EVENTS_QUEUE, b'{"filler": true}')
            except QueueFull:
                return taken
    finally:
        await bus.close()
    raise AssertionError("outbox.events never refused a publish")


async def test_mailgun_an_unconfirmed_publish_is_503_and_the_retry_is_taken(
        small_events_queue, server, amqp_url, redis_url):
    """A real refusal: outbox.events is full (x-overflow reject-publish), the broker nacks
    the event. The webhook answers 503 (Mailgun retries), the token is released, nothing is
    lost; once the queue has room, Mailgun's retry is taken and its event published."""
    fillers = await _fill_events_queue(amqp_url)
    body = _mailgun("failed_permanent", token="f" * 50)
    status, text = await _post(f"{server}/webhooks/mailgun", body)
    assert status == 503, text
    redis = Redis.from_url(redis_url)
    assert not await redis.exists(keys.mailgun_token("f" * 50))  # token released
    await redis.aclose()
    queued = await collect(amqp_url, "outbox.events", lambda m: len(m) >= fillers + 1,
                           timeout=2)
    assert [json.loads(m.body) for m in queued] == [{"filler": True}] * fillers  # drained
    assert (await _post(f"{server}/webhooks/mailgun", body))[0] == 200  # the retry
    [event] = await _events(amqp_url, 1)
    assert event["job_id"] == "job-mg-2"


# --- through the worker: provider events end the jobs it sent, with their metadata ------------

@pytest.fixture
async def loop(make_settings, smtp_server, unused_tcp_port, fetched):
    """The webhook server and a worker sending to a local SMTP server, on one settings."""
    smtp_url, _ = smtp_server
    settings = make_settings(
        smtp_url=smtp_url, ses_topic_arns=TOPIC, mailgun_signing_key=MAILGUN_KEY,
        postmark_webhook_user=PM_USER, postmark_webhook_password=PM_PASSWORD)
    async with running_app(settings, unused_tcp_port) as base, running_worker(settings):
        yield base


def _postmark_for(name: str, job: dict[str, Any], **fields: Any) -> bytes:
    body = {**postmark_record(name), **fields,
            "Metadata": {"outbox_account": job["account_id"], "outbox_job": job["id"]}}
    body["Email" if "Email" in body else "Recipient"] = job["to"]
    return json.dumps(body).encode()


async def test_provider_events_end_sent_jobs_and_carry_their_metadata(loop, amqp_url,
                                                                      redis_url):
    """Four jobs with metadata, sent by the worker; then, through the real webhook server: a
    Mailgun delivery, a Postmark hard bounce and a spam complaint each reported twice (the
    record and the SubscriptionChange that suppressed the address), an SES Reject. Each job's
    status event carries its metadata; the bounce and the complaint count and suppress once;
    the Reject (never sent) counts and suppresses nothing."""
    names = ("delivered", "bounced", "complained", "failed")
    jobs = {n: email_job(id=f"job-e2e-{n}", account_id="acct_e2e", to=f"{n}@example.com",
                         metadata={"crm_message_id": 990 + i, "thread": [n, "ü"]})
            for i, n in enumerate(names)}
    await publish(amqp_url, list(jobs.values()))
    sent = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 4))
    assert {(e["id"], e["status"]) for e in sent} == {(j["id"], "sent") for j in jobs.values()}

    mailgun = mailgun_signed("delivered", MAILGUN_KEY)
    mailgun["event-data"]["user-variables"] = {"outbox_account": "acct_e2e",
                                               "outbox_job": jobs["delivered"]["id"]}
    mailgun["event-data"]["recipient"] = jobs["delivered"]["to"]
    token, ts = "h" * 50, str(int(time.time()))
    mailgun["signature"] = {"timestamp": ts, "token": token,
                            "signature": mailgun_signature(ts, token, MAILGUN_KEY)}
    assert (await _post(f"{loop}/webhooks/mailgun", json.dumps(mailgun).encode()))[0] == 200
    auth = _basic(PM_USER, PM_PASSWORD)
    for name, job, message_id in (("hard_bounce", "bounced", "pm-bounce-1"),
                                  ("subscription_change_bounce", "bounced", "pm-bounce-1"),
                                  ("spam_complaint", "complained", "pm-spam-1"),
                                  ("subscription_change_spam", "complained", "pm-spam-1")):
        body = _postmark_for(name, jobs[job], MessageID=message_id)
        assert (await _post(f"{loop}/webhooks/postmark", body, auth))[0] == 200
    reject = fixture("ses-reject")
    reject["mail"]["destination"] = [jobs["failed"]["to"]]
    reject["mail"]["headers"] = [
        h for h in reject["mail"]["headers"] if h["name"] not in ("Message-ID",
                                                                   "X-Outbox-Account")] + [
        {"name": "Message-ID", "value": f"<{jobs['failed']['id']}@outbox.localhost>"},
        {"name": "X-Outbox-Account", "value": "acct_e2e"}]
    body = json.dumps(sns_sign(notification(reject))).encode()
    assert (await _post(f"{loop}/webhooks/ses", body, content_type="text/plain"))[0] == 200

    got = await collect(amqp_url, "outbox.status",
                        lambda m: len(events(m)) >= 4 and len(recipient_events(m)) >= 1)
    later = events(got)
    # the complaint is told to the CRM once as a recipient event too
    assert [(r["change"], r["address"], r["account_id"]) for r in recipient_events(got)] == [
        ("complained", jobs["complained"]["to"], "acct_e2e")]
    by_status = {e["status"]: e for e in later}
    assert sorted(by_status) == sorted(names)
    for name in names:
        event = by_status[name]
        assert (event["id"], event["metadata"]) == (jobs[name]["id"], jobs[name]["metadata"])
    assert (by_status["failed"]["provider"], by_status["failed"]["reason"],
            by_status["failed"]["detail"]) == ("ses", "virusdetected", "Bad content")
    # the second report of the bounce and of the complaint changed nothing
    assert await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=2) == []
    client = Redis.from_url(redis_url)
    try:
        rep = await client.hgetall(keys.reputation("acct_e2e", "email"))
        assert (rep[b"S"], rep[b"H"], rep[b"C"]) == (b"4", b"1", b"1")
        store = SuppressionStore(client)
        reasons = {n: [e["reason"] for e in await store.check(jobs[n]["to"],
                                                               account_id="acct_e2e")]
                   for n in names}
    finally:
        await client.aclose()
    assert reasons == {"delivered": [], "bounced": ["hard_bounce"],
                       "complained": ["complaint"], "failed": []}
