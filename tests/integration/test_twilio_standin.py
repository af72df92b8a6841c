"""The Twilio stand-in, driven over HTTP by the real ``twilio`` client, and its status callbacks
received by a real aiohttp server and checked by ``webhooks.providers.twilio``.

Needs no RabbitMQ or Redis: everything listens on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from outbox.devsinks.twilio_api import TwilioStandIn
from webhooks.providers import twilio as twilio_provider

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "test-auth-token-5f2c"
FROM = "+15005550006"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()}

# twilio 9.x's AsyncTwilioHttpClient passes aiohttp.BasicAuth as ``auth=``, both deprecated in
# aiohttp 3.14: unavoidable from here, so exactly those two warnings, from twilio's own modules,
# are ignored (the message and the module must both match).
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:BasicAuth is deprecated:DeprecationWarning:twilio.http.async_http_client"),
    pytest.mark.filterwarnings(
        "ignore:The 'auth' parameter is deprecated:DeprecationWarning:twilio.base.client_base"),
]
SM_SID = re.compile(r"^SM[0-9a-f]{32}$")


def make_client(base_url: str, sid: str, token: str) -> Client:
    """The real twilio 9.x client, sending to ``base_url`` instead of https://api.twilio.com.

    Every REST URL of the Messages API is built by the client's ``api`` domain
    (``twilio.rest.api.ApiBase``, a ``twilio.base.domain.Domain``) as
    ``f"{domain.base_url}/2010-04-01/Accounts/{sid}/Messages.json"``, read at request time, so
    replacing ``client.api.base_url`` redirects every call (create, fetch, list) while the
    client keeps its own basic auth, headers and error parsing. ``edge`` and ``region`` are
    cleared because ``ClientBase.get_hostname`` would otherwise rewrite the host
    (``TWILIO_EDGE``/``TWILIO_REGION`` in the environment). Close it with
    ``await client.http_client.close()``.
    """
    client = Client(sid, token, http_client=AsyncTwilioHttpClient())
    client.edge = None
    client.region = None
    client.api.base_url = base_url.rstrip("/")
    return client


@dataclass
class Received:
    url: str
    signature: str
    content_type: str
    body: bytes

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


class Receiver:
    """A tiny webhook endpoint: records every POST, answers ``status``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 204
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(
            url=str(request.url),
            signature=request.headers.get("X-Twilio-Signature", ""),
            content_type=request.headers.get("Content-Type", ""),
            body=await request.read(),
        ))
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/twilio/status", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]:d}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def standin():
    server = TwilioStandIn(account_sid=SID, auth_token=TOKEN, callback_delay=0.01)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def client(standin):
    c = make_client(standin.base_url, SID, TOKEN)
    yield c
    await c.http_client.close()


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.close()


# -- creating messages ------------------------------------------------------------------------


async def test_create_returns_the_message_resource(client, standin):
    message = await client.messages.create_async(to="+85291230001", from_=FROM,
                                                 body="Your meeting starts at 15:00")
    assert SM_SID.match(message.sid)
    assert message.account_sid == SID
    assert message.to == "+85291230001"
    assert message.from_ == FROM
    assert message.body == "Your meeting starts at 15:00"
    assert message.status == "queued"
    assert message.direction == "outbound-api"
    assert message.num_segments == "1"
    assert message.num_media == "0"
    assert message.api_version == "2010-04-01"
    assert message.price is None and message.error_code is None and message.error_message is None
    assert message.messaging_service_sid is None
    assert message.uri == f"/2010-04-01/Accounts/{SID}/Messages/{message.sid}.json"
    assert isinstance(message.date_created, datetime)
    assert message.date_created.tzinfo is not None
    assert abs((datetime.now(UTC) - message.date_created).total_seconds()) < 60
    assert [m["sid"] for m in standin.messages] == [message.sid]
    assert standin.requests[0]["To"] == "+85291230001"


async def test_segments_are_counted(client):
    cases = [
        ("a" * 160, "1"), ("a" * 161, "2"), ("€" * 80, "1"), ("€" * 81, "2"),
        ("會議將於下午三時開始" * 7, "1"), ("會議將於下午三時開始" * 7 + "。", "2"),
    ]
    for body, expected in cases:
        message = await client.messages.create_async(to="+85291230001", from_=FROM, body=body)
        assert message.num_segments == expected, body


async def test_fetch_follows_the_message(client, standin):
    created = await client.messages.create_async(to="+85291230005", from_=FROM, body="hi")
    await standin.drain()
    fetched = await client.messages(created.sid).fetch_async()
    assert fetched.sid == created.sid
    assert fetched.status == "undelivered"
    assert fetched.error_code == 30005
    assert fetched.date_sent is not None
    with pytest.raises(TwilioRestException) as info:
        await client.messages("SM" + "0" * 32).fetch_async()
    assert (info.value.status, info.value.code) == (404, 20404)


@pytest.mark.parametrize(("to", "code"), [
    ("+15005550001", 21211),
    ("+15005550002", 21612),
    ("+15005550003", 21408),
    ("+15005550004", 21610),
    ("+15005550009", 21614),
    ("91234567", 21211),
])
async def test_magic_to_numbers_answer_twilio_errors(client, standin, to, code):
    with pytest.raises(TwilioRestException) as info:
        await client.messages.create_async(to=to, from_=FROM, body="hello")
    assert info.value.status == 400
    assert info.value.code == code
    assert standin.messages == []


@pytest.mark.parametrize(("from_", "code"), [
    ("+15005550001", 21212), ("+15005550007", 21606), ("+15005550008", 21611),
])
async def test_magic_from_numbers_answer_twilio_errors(client, from_, code):
    with pytest.raises(TwilioRestException) as info:
        await client.messages.create_async(to="+85291230001", from_=from_, body="hello")
    assert (info.value.status, info.value.code) == (400, code)


async def test_missing_fields(client):
    with pytest.raises(TwilioRestException) as info:
        await client.messages.create_async(to="+85291230001", from_=FROM)
    assert (info.value.status, info.value.code) == (400, 21602)
    with pytest.raises(TwilioRestException) as info:
        await client.messages.create_async(to="+85291230001", body="hello")
    assert (info.value.status, info.value.code) == (400, 21603)
    with pytest.raises(TwilioRestException) as info:
        await client.messages.create_async(to="+85291230001", from_=FROM, body="x" * 1601)
    assert (info.value.status, info.value.code) == (400, 21617)


async def test_error_json_is_twilios_format(standin):
    url = f"{standin.base_url}/2010-04-01/Accounts/{SID}/Messages.json"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data={"To": "+15005550004", "From": FROM, "Body": "x"},
                                headers=AUTH) as response:
            assert response.status == 400
            assert await response.json() == {
                "code": 21610,
                "message": "Attempt to send to unsubscribed recipient",
                "more_info": "https://www.twilio.com/docs/errors/21610",
                "status": 400,
            }
        form = {"To": "+85291230001", "From": FROM, "Body": "x"}
        async with session.post(url, data=form) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Basic")
            body = await response.json()
            assert (body["code"], body["status"]) == (20003, 401)


async def test_wrong_credentials_are_refused(standin):
    for sid, token in [(SID, "wrong"), ("AC" + "f" * 32, TOKEN)]:
        bad = make_client(standin.base_url, sid, token)
        try:
            with pytest.raises(TwilioRestException) as info:
                await bad.messages.create_async(to="+85291230001", from_=FROM, body="hello")
            assert (info.value.status, info.value.code) == (401, 20003)
        finally:
            await bad.http_client.close()
    assert standin.messages == []


async def test_fail_next_then_recover(client, standin):
    standin.fail_next(2)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as info:
            await client.messages.create_async(to="+85291230001", from_=FROM, body="hello")
        assert (info.value.status, info.value.code) == (429, 20429)
    standin.fail_next(1, status=503, code=20503)
    with pytest.raises(TwilioRestException) as info:
        await client.messages.create_async(to="+85291230001", from_=FROM, body="hello")
    assert (info.value.status, info.value.code) == (503, 20503)
    message = await client.messages.create_async(to="+85291230001", from_=FROM, body="hello")
    assert message.status == "queued"
    assert len(standin.messages) == 1


async def test_rate_limit_per_second():
    now = [1_700_000_000.0]
    server = TwilioStandIn(account_sid=SID, auth_token=TOKEN, callback_delay=0.0,
                           clock=lambda: now[0])
    base = await server.start()
    c = make_client(base, SID, TOKEN)
    try:
        server.rate_limit(3)
        for _ in range(3):
            await c.messages.create_async(to="+85291230001", from_=FROM, body="hello")
        with pytest.raises(TwilioRestException) as info:
            await c.messages.create_async(to="+85291230001", from_=FROM, body="hello")
        assert (info.value.status, info.value.code) == (429, 20429)
        now[0] += 1.0
        await c.messages.create_async(to="+85291230001", from_=FROM, body="hello")
        server.rate_limit(None)
        for _ in range(5):
            await c.messages.create_async(to="+85291230001", from_=FROM, body="hello")
        assert len(server.messages) == 9
    finally:
        await c.http_client.close()
        await server.close()


async def test_concurrent_creates(client, standin):
    created = await asyncio.gather(*(
        client.messages.create_async(to=f"+8529123{i:04d}", from_=FROM, body=f"n{i}")
        for i in range(30)
    ))
    assert len({m.sid for m in created}) == 30
    assert len(standin.messages) == 30


# -- status callbacks -------------------------------------------------------------------------


async def _send_and_collect(client, standin, receiver, to, *, query="", **kwargs):
    callback = f"{receiver.base_url}/webhooks/twilio/status{query}"
    message = await client.messages.create_async(to=to, body="Appointment reminder",
                                                 status_callback=callback, **kwargs)
    await standin.drain()
    mine = [r for r in receiver.received if r.params.get("MessageSid") == message.sid]
    return callback, message, mine


EXPECTED = {
    # To: [(MessageStatus, ErrorCode, ProviderEvent.type)]
    "+85291230001": [("sent", None, "accepted"), ("delivered", None, "delivered")],
    "+85291230005": [("sent", None, "accepted"), ("undelivered", "30005", "bounced")],
    "+85291230006": [("sent", None, "accepted"), ("undelivered", "30006", "bounced")],
    "+85291230003": [("sent", None, "accepted"), ("undelivered", "30003", "soft_bounced")],
    "+85291230007": [("failed", "30007", "complained")],
}


@pytest.mark.parametrize("to", list(EXPECTED))
async def test_status_callbacks_arrive_in_order_signed_and_parse(client, standin, receiver, to):
    callback, message, received = await _send_and_collect(client, standin, receiver, to,
                                                          query="?job=01JD6Y3M9Q", from_=FROM)
    expected = EXPECTED[to]
    assert [(r.params["MessageStatus"], r.params.get("ErrorCode")) for r in received] == [
        (status, code) for status, code, _ in expected
    ]
    for r in received:
        assert r.url == callback
        assert r.content_type.startswith("application/x-www-form-urlencoded")
        params = r.params
        assert params["MessageSid"] == params["SmsSid"] == message.sid
        assert params["SmsStatus"] == params["MessageStatus"]
        assert params["AccountSid"] == SID
        assert params["From"] == FROM and params["To"] == to
        assert params["ApiVersion"] == "2010-04-01"
        done = params["MessageStatus"] in ("delivered", "undelivered")
        assert ("RawDlrDoneDate" in params) == done
        assert twilio_provider.verify(callback, params, r.signature, TOKEN)
        # the server sees the same URL (with the port): both forms verify
        assert twilio_provider.verify(r.url, params, r.signature, TOKEN)
        assert not twilio_provider.verify(callback, params, r.signature, "another-token")
        assert not twilio_provider.verify(callback, {**params, "To": "+85291239999"},
                                          r.signature, TOKEN)
        assert not twilio_provider.verify(callback.replace("01JD6Y3M9Q", "01JD6Y3M9R"), params,
                                          r.signature, TOKEN)
        assert not twilio_provider.verify(callback, {**params, "Extra": "1"}, r.signature, TOKEN)

    events = [twilio_provider.parse(r.body, r.content_type)[0]
              for r in received]
    assert [e.type for e in events] == [t for _, _, t in expected]
    for event, r in zip(events, received, strict=True):
        assert event.provider == "twilio"
        assert event.recipient == to
        assert event.provider_message_id == message.sid
        assert event.event_id == f"{message.sid}:{r.params['MessageStatus']}"
        assert event.diagnostic == r.params.get("ErrorCode")
    final = events[-1]
    if final.type == "delivered":
        assert final.kind is None
    else:
        assert final.kind is not None and final.reason is not None

    # the stand-in's own record matches what arrived
    sent = [(p["MessageStatus"], status) for url, p, status in standin.callbacks_sent
            if p["MessageSid"] == message.sid]
    assert sent == [(s, 204) for s, _, _ in expected]
    assert standin.messages[-1]["status"] == expected[-1][0]


async def test_messaging_service_flow(client, standin, receiver):
    service = "MG" + "1" * 32
    callback, message, received = await _send_and_collect(
        client, standin, receiver, "+85291230001", messaging_service_sid=service)
    assert message.status == "accepted"
    assert message.from_ is None
    assert message.num_segments == "0"
    assert message.messaging_service_sid == service
    assert [r.params["MessageStatus"] for r in received] == ["queued", "sent", "delivered"]
    for r in received:
        assert r.params["MessagingServiceSid"] == service
        assert r.params["From"] == standin.pool_number
        assert twilio_provider.verify(callback, r.params, r.signature, TOKEN)
    assert standin.messages[-1]["num_segments"] == "1"
    assert standin.messages[-1]["from"] == standin.pool_number


async def test_no_callback_without_status_callback(client, standin, receiver):
    await client.messages.create_async(to="+85291230001", from_=FROM, body="hello")
    await standin.drain()
    assert receiver.received == [] and standin.callbacks_sent == []
    assert standin.messages[0]["status"] == "delivered"


async def test_failed_callbacks_are_recorded_and_harmless(client, standin, receiver):
    receiver.status = 500
    _, first, received = await _send_and_collect(client, standin, receiver, "+85291230001",
                                                 from_=FROM)
    assert len(received) == 2
    assert [s for _, _, s in standin.callbacks_sent] == [500, 500]

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = f"http://127.0.0.1:{dead_port}/webhooks/twilio/status"
    second = await client.messages.create_async(to="+85291230001", from_=FROM, body="x",
                                                status_callback=dead)
    await standin.drain()
    assert [(url, s) for url, p, s in standin.callbacks_sent if p["MessageSid"] == second.sid] \
        == [(dead, None), (dead, None)]

    third = await client.messages.create_async(to="+85291230001", from_=FROM, body="still up")
    assert third.status == "queued"
    assert first.sid != second.sid != third.sid


async def test_basic_auth_header_is_what_the_client_sends(standin):
    """The stand-in accepts exactly RFC 7617 basic auth of SID:TOKEN (what the client sends)."""
    url = f"{standin.base_url}/2010-04-01/Accounts/{SID}/Messages.json"
    good = AUTH["Authorization"].split()[1]
    async with aiohttp.ClientSession() as session:
        for header, expected in [(f"Basic {good}", 201), (f"Bearer {good}", 401),
                                 ("Basic !!!", 401), ("", 401)]:
            async with session.post(url, data={"To": "+85291230001", "From": FROM, "Body": "x"},
                                    headers={"Authorization": header} if header else {}) as r:
                assert r.status == expected, header
