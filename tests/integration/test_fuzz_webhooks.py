"""Hostile webhook bodies against the real webhook server: 10,000 requests, each ends in
exactly one place.

Every request carries a unique marker (``FZ<n>``) wherever the provider's payload has room for
an id. A request that is not correctly signed must be refused (4xx) and leave nothing behind;
a correctly signed one with hostile content is either refused (4xx) or taken (2xx) with its
events on ``outbox.events``; no request gets a 5xx; no event appears that no taken request
explains; and the webhook side never writes a suppression (only the worker applies events).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from tests.integration.helpers import collect, running_app, served_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DATA = Path(__file__).resolve().parents[1] / "data" / "providers"
SID, TOKEN = "AC" + "7" * 32, "fuzz-auth-token-0123456789"
MAILGUN_KEY = "key-fuzz-0123456789abcdef"
PM_USER, PM_PASSWORD = "postmark", "fuzz-password-0123456789"
BATCHES, PER_BATCH = 200, 50  # 10,000 requests
_seq = itertools.count()

# ------------------------------------------------------------------------------ strategies
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12)
_hostile_text = st.one_of(
    st.text(max_size=60), st.sampled_from([
        "", " ", "\x00", "\r\nBcc: x@evil.example", "STOP", "stop ", "取消", "START",
        "a" * 5000, "+85291234567", "victim@example.com", "../../etc/passwd", "%00", "é",
        "\u200b", "NaN", "-1", "undelivered", "failed", "30007", "21610", "delivered"]))
_twilio_keys = st.sampled_from(
    ["MessageSid", "MessageStatus", "ErrorCode", "To", "From", "Body", "AccountSid",
     "SmsStatus", "OptOutType", "ErrorMessage", "Timestamp", "ApiVersion"]) | st.text(max_size=10)
#: what an attacker can put in a header value (no CR/LF: the HTTP client refuses those)
_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2ff,
                                             blacklist_categories=("Cc",)), max_size=90)
_mailgun = json.loads((DATA / "mailgun-events.json").read_text())
_postmark = json.loads((DATA / "postmark-records.json").read_text())


@st.composite
def _request(draw: st.DrawFn) -> dict[str, Any]:
    """One hostile request: a route, a body and whether it is correctly signed."""
    n = next(_seq)
    marker = f"FZ{n:06d}"
    kind = draw(st.sampled_from(
        ["twilio_status", "twilio_inbound", "twilio_forged", "mailgun_signed",
         "mailgun_forged", "postmark_auth", "postmark_noauth", "sendgrid", "ses",
         "unsubscribe", "raw"]))
    req: dict[str, Any] = {"n": n, "marker": marker, "kind": kind, "signed": False,
                           "headers": {}}
    if kind.startswith("twilio"):
        path = "/webhooks/twilio/inbound" if kind == "twilio_inbound" else \
            "/webhooks/twilio/status"
        if draw(st.booleans()):
            path += f"?j=job-{marker}&a=acct_{n % 3}"
        fields = [("MessageSid", "SM" + marker), ("MessageStatus", draw(_hostile_text)),
                  ("To", draw(_hostile_text)), ("From", draw(_hostile_text)),
                  ("Body", draw(_hostile_text))]
        fields += draw(st.lists(st.tuples(_twilio_keys, _hostile_text), max_size=5))
        if draw(st.booleans()):  # a repeated field, in front
            fields.insert(0, (draw(_twilio_keys), draw(_hostile_text)))
        body = urlencode(fields).encode()
        req.update(path=path, body=body,
                   content_type="application/x-www-form-urlencoded")
        req["fields"] = fields
        req["signed"] = kind != "twilio_forged"
    elif kind.startswith("mailgun"):
        event = copy.deepcopy(_mailgun[draw(st.sampled_from(sorted(_mailgun)))])
        data = event["event-data"]
        data["id"] = marker
        for key in draw(st.lists(st.sampled_from(sorted(set(data) - {"id"})), max_size=3)):
            data[key] = draw(_json)  # any field hostile, but the marker kept
        sig = event["signature"]
        sig["timestamp"], sig["token"] = str(int(time.time())), f"{n:050d}"
        sig["signature"] = hmac.new(MAILGUN_KEY.encode(),
                                    f"{sig['timestamp']}{sig['token']}".encode(),
                                    hashlib.sha256).hexdigest()
        if kind == "mailgun_forged":
            sig["signature"] = draw(st.sampled_from(
                ["", "0" * 64, sig["signature"][::-1], "é" * 64, sig["signature"][:-1]]))
        req.update(path="/webhooks/mailgun", body=json.dumps(event).encode(),
                   content_type="application/json", signed=kind == "mailgun_signed")
    elif kind.startswith("postmark"):
        record = copy.deepcopy(_postmark[draw(st.sampled_from(sorted(_postmark)))])
        record["MessageID"] = marker
        for key in draw(st.lists(st.sampled_from(sorted(set(record) - {"MessageID"})),
                                 max_size=3)):
            record[key] = draw(_json)
        body = json.dumps(record).encode() if draw(st.integers(0, 9)) else draw(st.binary())
        req.update(path="/webhooks/postmark", body=body, content_type="application/json",
                   signed=kind == "postmark_auth")
        if kind == "postmark_auth":
            req["headers"]["Authorization"] = "Basic " + base64.b64encode(
                f"{PM_USER}:{PM_PASSWORD}".encode()).decode()
        elif draw(st.booleans()):
            req["headers"]["Authorization"] = "Basic " + base64.b64encode(
                f"{PM_USER}:{draw(_header_text)}".encode("utf-8", "replace")).decode()
    elif kind in ("sendgrid", "ses"):
        body = json.dumps(draw(_json)).encode() if draw(st.booleans()) else draw(st.binary())
        req.update(path=f"/webhooks/{kind}", body=body, content_type="application/json")
        if kind == "sendgrid":
            req["headers"].update({
                "X-Twilio-Email-Event-Webhook-Signature": draw(_header_text),
                "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()))})
    elif kind == "unsubscribe":
        token = draw(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789-_.", min_size=1, max_size=120))
        req.update(path=f"/u/{token}", body=b"List-Unsubscribe=One-Click",
                   content_type="application/x-www-form-urlencoded")
    else:
        req.update(path=draw(st.sampled_from(
            ["/webhooks/twilio/status", "/webhooks/twilio/inbound", "/webhooks/mailgun",
             "/webhooks/postmark", "/webhooks/ses", "/webhooks/sendgrid"])),
            body=draw(st.binary(max_size=2000)),
            content_type=draw(st.sampled_from(["application/x-www-form-urlencoded",
                                                "application/json", "text/plain", ""])))
    return req


def _sign_twilio(public: str, req: dict[str, Any]) -> None:
    """X-Twilio-Signature as Twilio computes it (the twilio package's validator)."""
    params = MultiDict(req["fields"])
    req["headers"]["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(
        public + req["path"], params)


# ------------------------------------------------------------------------------------ test
@pytest.fixture
def fuzz_server(make_settings, unused_tcp_port):
    """The real webhook server, in a thread of its own (the test drives it synchronously so
    hypothesis can generate and shrink batches of requests)."""
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings_ = make_settings(
        twilio_account_sid=SID, twilio_auth_token=TOKEN, twilio_from="+15005550006",
        public_url=public, mailgun_signing_key=MAILGUN_KEY, postmark_webhook_user=PM_USER,
        postmark_webhook_password=PM_PASSWORD,
        sendgrid_public_key=base64.b64encode(b"not-a-key").decode(),
        ses_topic_arns=("arn:aws:sns:ap-east-1:123456789012:outbox",),
        secret_key="fuzz-secret-key-0123456789")
    with served_in_thread(lambda: running_app(settings_, unused_tcp_port)):
        yield settings_, public


async def _post_all(public: str, batch: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as session:
        async def one(req: dict[str, Any]) -> None:
            headers = dict(req["headers"])
            if req["content_type"]:
                headers["Content-Type"] = req["content_type"]
            async with session.post(public + req["path"], data=req["body"],
                                    headers=headers) as resp:
                await resp.read()
                req["status"] = resp.status
        await asyncio.gather(*(one(r) for r in batch))


def _prepare(public: str, req: dict[str, Any]) -> None:
    if req["kind"] in ("twilio_status", "twilio_inbound"):
        _sign_twilio(public, req)
    elif req["kind"] == "twilio_forged":
        _sign_twilio(public, req)
        fields = [("MessageStatus", "undelivered"), ("ErrorCode", "30007"),
                  *req["fields"]]  # captured, then rewritten with fields in front
        req["body"] = urlencode(fields).encode()


# the server's thread (its AMQP and Redis clients) may use `random` while a batch is drawn
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_hostile_webhook_bodies_each_end_in_one_place(fuzz_server, amqp_url, redis_url):
    _, public = fuzz_server
    sent: list[dict[str, Any]] = []

    @settings(max_examples=BATCHES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(_request(), min_size=PER_BATCH, max_size=PER_BATCH))
    def send(batch: list[dict[str, Any]]) -> None:
        for req in batch:
            _prepare(public, req)
        asyncio.run(_post_all(public, batch))
        five_hundreds = [(r["kind"], r["status"], r["body"][:200]) for r in batch
                         if r["status"] >= 500]
        assert not five_hundreds, five_hundreds
        forged_taken = [(r["kind"], r["path"], r["body"][:200]) for r in batch
                        if not r["signed"] and r["status"] < 400]
        assert not forged_taken, forged_taken
        sent.extend(batch)

    send()
    assert len(sent) == BATCHES * PER_BATCH
    taken = {r["marker"] for r in sent if r["status"] < 300}
    evented = [r for r in sent if r["status"] < 300
               and r["kind"] in ("twilio_status", "mailgun_signed")]
    # until every taken callback's event is in (a count is not enough: inbound STOPs and the
    # other providers' events count too, and under load the last ones came after it)
    wanted, seen, read = {r["marker"] for r in evented}, set(), [0]

    def all_in(messages: list[Any]) -> bool:
        seen.update(_marker(m.body) for m in messages[read[0]:])
        read[0] = len(messages)
        return wanted <= seen

    got = asyncio.run(collect(amqp_url, "outbox.events", all_in, timeout=120))  # loaded
    got += asyncio.run(collect(amqp_url, "outbox.events", lambda m: False, timeout=1))
    markers = [_marker(m.body) for m in got]
    assert None not in markers, [m.body[:400] for m in got if _marker(m.body) is None][:3]
    assert set(markers) <= taken, "an event from a refused request"
    assert len(markers) == len(set(markers)), "one request, two events"
    assert {r["marker"] for r in evented} <= set(markers), "a taken callback left no event"

    async def suppressions() -> list[bytes]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return [k async for k in client.scan_iter(match="outbox:*supp*")]
        finally:
            await client.aclose()

    assert asyncio.run(suppressions()) == [], "the webhook side wrote a suppression"
    by_status = Counter(r["status"] for r in sent)
    forged = sum(1 for r in sent if not r["signed"])
    print(f"\n{len(sent)} requests ({forged} not correctly signed, all refused): "
          f"answers {dict(sorted(by_status.items()))}, {len(markers)} events, each explained")


def _marker(body: bytes) -> str | None:
    text = body.decode("utf-8", "replace")
    index = text.find("FZ")
    while index >= 0:
        candidate = text[index:index + 8]
        if len(candidate) == 8 and candidate[2:].isdigit():
            return candidate
        index = text.find("FZ", index + 2)
    return None
