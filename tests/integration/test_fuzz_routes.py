"""Every route of the webhook server against malformed bodies: no 5xx, no traceback.

The routes are read from the application's own router (``make_app(...).router``), so a route
added later is fuzzed without touching this file (a path parameter this file has no sample
for fails the test, naming it). Each route gets, once without credentials and once with the
credentials that get a body past authentication (the admin bearer token, Postmark's basic
auth): the hand-picked hostile bodies of :data:`HOSTILE` (deep nesting, huge numbers, invalid
UTF-8, wrong content types, empty, truncated multipart, 1 MiB of junk, a body over the limit,
a gzip bomb, bad gzip), three malformed transfers on a raw socket (a body cut short, broken
chunking, a header line over the limit), then hypothesis-generated bodies. Every answer must
be below 500 and the server must log no traceback.

The SES route is configured but no generated body carries an SNS certificate URL the server
would fetch (the fetch would leave this machine).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import os
import re
import socket
from collections import Counter
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sender.bus import Bus
from sender.service import make_redis
from suppression.tokens import Unsubscribe, make_token
from tests.integration.helpers import running_app, served_in_thread
from webhooks.app import make_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRET = "fuzz-secret-key-0123456789"
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
PM_USER, PM_PASSWORD = "postmark", "fuzz-password-0123456789"
GENERATED = 100  # hypothesis bodies per route (one batch = one body for every route)
MIB = 1024 * 1024

#: a value for each path parameter (a route with another name fails the test: add it here)
SAMPLES = {
    "token": make_token(SECRET, Unsubscribe("acct_fuzz", "email", "bob@example.com", "job-1")),
    "account": "acct_fuzz", "address": "bob@example.com", "recipient": "bob@example.com",
    "job": "job-1", "domain": "mail.example.com",
}

_MULTIPART = "multipart/form-data; boundary=XyZ"
#: (name, body, content type) sent to every route
HOSTILE: list[tuple[str, bytes, str]] = [
    ("empty", b"", ""),
    ("empty json", b"", "application/json"),
    ("deep array", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ("deep array, plain text", b"[" * 100_000 + b"]" * 100_000, "text/plain"),
    ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json"),
    ("deep, unclosed", b"[" * 200_000, "application/json"),
    ("65 levels", b"[" * 65 + b"]" * 65, "application/json"),
    ("deep in an SNS envelope", json.dumps({
        "Type": "Notification", "TopicArn": "arn:aws:sns:ap-east-1:123456789012:outbox",
        "Message": "[" * 50_000 + "]" * 50_000}).encode(), "text/plain; charset=UTF-8"),
    ("deep mailgun signature", b'{"signature":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
     "application/json"),
    ("huge integer", b"9" * 100_000, "application/json"),
    ("huge integer in an object", b'{"event-data": {"timestamp": ' + b"9" * 5000 + b"}}",
     "application/json"),
    ("infinite number", b'{"a": 1e999, "b": -1e999}', "application/json"),
    ("NaN", b'{"a": NaN}', "application/json"),
    ("invalid utf-8", b'{"a": "\xff\xfe\xed\xa0\x80"}', "application/json"),
    ("invalid utf-8 form", b"Body=\xff\xfe&From=%ff%fe", "application/x-www-form-urlencoded"),
    ("lone surrogate escape", b'{"a": "\\ud800"}', "application/json"),
    ("utf-16 json", json.dumps({"a": "b"}).encode("utf-16"), "application/json"),
    ("unknown charset", b"List-Unsubscribe=One-Click", "text/plain; charset=no-such-charset"),
    ("latin-1 form", b"Body=caf\xe9", "application/x-www-form-urlencoded; charset=latin-1"),
    ("10,000 fields", urlencode([(f"f{i}", "x") for i in range(10_000)]).encode(),
     "application/x-www-form-urlencoded"),
    ("repeated fields", b"To=a&To=b&To=c", "application/x-www-form-urlencoded"),
    ("json as form", b'{"a": 1}', "application/x-www-form-urlencoded"),
    ("form as json", b"a=1&b=2", "application/json"),
    ("json array", b"[1, 2, 3]", "application/json"),
    ("json string", b'"hello"', "application/json"),
    ("json null", b"null", "application/json"),
    ("NUL bytes", b"\x00" * 1000, "application/octet-stream"),
    ("truncated multipart", b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nval",
     _MULTIPART),
    ("multipart without boundary", b"--XyZ\r\n\r\n", "multipart/form-data"),
    ("bad content type", b"{}", "application/json; charset=\""),
    ("1 MiB of junk", os.urandom(MIB - 1024), "application/json"),
    ("1 MiB of junk, form", os.urandom(MIB - 1024), "application/x-www-form-urlencoded"),
    ("over the limit", b"a" * (MIB + 1), "text/plain"),
]
#: (name, body, extra headers): content encodings the server decompresses
ENCODED: list[tuple[str, bytes, dict[str, str]]] = [
    ("gzip bomb", gzip.compress(b"\x00" * (64 * MIB)), {"Content-Encoding": "gzip"}),
    ("bad gzip", b"\x1f\x8b\x08\x00junk" * 100, {"Content-Encoding": "gzip"}),
    ("bad deflate", b"not deflate at all" * 10, {"Content-Encoding": "deflate"}),
]


def route_paths(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route of ``app``, path parameters filled from SAMPLES."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info()
        if "path" in info:
            out.append((route.method, info["path"]))
            continue
        pattern: re.Pattern[str] = info["pattern"]
        values = {name: _sample(name, pattern) for name in pattern.groupindex}
        path = info["formatter"].format(**{k: quote(v, safe="@") for k, v in values.items()})
        assert pattern.fullmatch(path.replace("%40", "@")), (route.method, path)
        out.append((route.method, path))
    return out


def _sample(name: str, pattern: re.Pattern[str]) -> str:
    """The sample of a path parameter; for ``{name:a|b}`` its first alternative."""
    group = re.search(rf"\(\?P<{name}>([^()]*)\)", pattern.pattern)
    regex = group.group(1) if group else ""
    if regex and re.fullmatch(r"[\w-]+(\|[\w-]+)*", regex):
        return regex.split("|")[0]
    assert name in SAMPLES, f"no sample value for path parameter {{{name}}}: add it"
    return SAMPLES[name]


def _auth_headers(path: str) -> dict[str, str]:
    """The credentials that get a body past authentication on ``path``, if any."""
    if path.startswith("/admin"):
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if path == "/webhooks/postmark":
        basic = base64.b64encode(f"{PM_USER}:{PM_PASSWORD}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    return {}


# ------------------------------------------------------------------------ generated bodies
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20)
_bodies = st.one_of(
    st.binary(max_size=4096),
    _json.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.tuples(st.integers(1, 3000), st.integers(0, 3000)).map(
        lambda t: b"[" * t[0] + b"]" * t[1]),
    st.integers(1, 20_000).map(lambda n: b"-" + b"9" * n),
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),
    st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=20).map(
        lambda pairs: urlencode(pairs).encode()),
    st.binary(max_size=200).map(lambda b: b"--XyZ\r\nContent-Disposition: form-data; "
                                          b"name=\"f\"\r\n\r\n" + b),
)
_types = st.sampled_from([
    "", "application/json", "application/json; charset=utf-16", "text/plain",
    "text/plain; charset=bogus", "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=latin-1", _MULTIPART, "multipart/form-data",
    "text/html", "application/octet-stream", "*/*", "application/json; charset=\""])


# -------------------------------------------------------------------------------- client
async def _send_all(base: str, requests: list[dict[str, Any]]) -> None:
    """Send each request (at most 16 at once) and keep its status on it."""
    gate = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async def one(req: dict[str, Any]) -> None:
            headers = dict(req.get("headers") or {})
            if req["content_type"]:
                headers["Content-Type"] = req["content_type"]
            async with gate, session.request(req["method"], base + req["path"],
                                             data=req["body"], headers=headers,
                                             skip_auto_headers=["Content-Type"]) as resp:
                await resp.read()
                req["status"] = resp.status
        await asyncio.gather(*(one(r) for r in requests))


def _raw(port: int, method: str, path: str, head: str, body: bytes) -> int | None:
    """One request written on a raw socket (a malformed transfer no client would send),
    then half-closed; the status of the answer, None when the server only closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else None


RAW = [
    ("body cut short", "Content-Type: application/json\r\nContent-Length: 1000\r\n",
     b'{"a": [1, 2'),
    ("broken chunking", "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
     b"ZZ\r\n{}\r\n0\r\n\r\n"),
    ("header over the limit", "X-Long: " + "a" * 20_000 + "\r\n", b""),
]


# ---------------------------------------------------------------------------------- test
@pytest.fixture
def server(make_settings, unused_tcp_port):
    """The real webhook server (every provider configured, an admin token) in a thread of
    its own, and the (method, path) of every route of its application."""
    settings_ = make_settings(
        twilio_account_sid="AC" + "7" * 32, twilio_auth_token="fuzz-auth-token-0123456789",
        twilio_from="+15005550006", public_url=f"http://127.0.0.1:{unused_tcp_port}",
        mailgun_signing_key="key-fuzz-0123456789abcdef", postmark_webhook_user=PM_USER,
        postmark_webhook_password=PM_PASSWORD,
        sendgrid_public_key=base64.b64encode(b"not-a-key").decode(),
        ses_topic_arns=("arn:aws:sns:ap-east-1:123456789012:outbox",),
        secret_key=SECRET, admin_tokens=ADMIN_TOKEN)
    app = make_app(settings_, bus=Bus.from_settings(settings_), redis=make_redis(settings_),
                   registry=CollectorRegistry())
    routes = route_paths(app)
    with served_in_thread(lambda: running_app(settings_, unused_tcp_port)) as base:
        yield base, unused_tcp_port, routes


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records
            if r.exc_info or r.levelno >= logging.ERROR]


# the server's thread (its AMQP and Redis clients) may use `random` while a batch is drawn
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_no_route_answers_5xx_to_a_malformed_body(server, caplog):
    base, port, routes = server
    caplog.set_level(logging.WARNING)
    assert len(routes) >= 30 and ("POST", "/webhooks/ses") in routes, routes
    sent: list[dict[str, Any]] = []

    hand = [{"method": m, "path": p, "name": name, "body": body, "content_type": ctype,
             "headers": auth}
            for m, p in routes for auth in ({}, _auth_headers(p))
            for name, body, ctype in HOSTILE]
    hand += [{"method": m, "path": p, "name": name, "body": body,
              "content_type": "application/json", "headers": {**auth, **extra}}
             for m, p in routes for auth in ({}, _auth_headers(p))
             for name, body, extra in ENCODED]
    asyncio.run(_send_all(base, hand))
    sent += hand
    for method, path in routes:
        for name, head, body in RAW:
            sent.append({"method": method, "path": path, "name": name,
                         "status": _raw(port, method, path, head, body)})

    @settings(max_examples=GENERATED, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(st.tuples(_bodies, _types, st.booleans()),
                          min_size=len(routes), max_size=len(routes)))
    def generated(batch: list[tuple[bytes, str, bool]]) -> None:
        requests = [{"method": m, "path": p, "name": "generated", "body": body,
                     "content_type": ctype, "headers": _auth_headers(p) if auth else {}}
                    for (m, p), (body, ctype, auth) in zip(routes, batch, strict=True)]
        asyncio.run(_send_all(base, requests))
        five = [(r["method"], r["path"], r["status"], r["body"][:120]) for r in requests
                if r["status"] >= 500]
        assert not five, five
        sent.extend(requests)

    generated()
    five_hundreds = [(r["method"], r["path"], r["name"], r["status"]) for r in sent
                     if r["status"] is not None and r["status"] >= 500]
    assert not five_hundreds, five_hundreds[:20]
    assert not _tracebacks(caplog), _tracebacks(caplog)[:5]
    per_route = Counter((r["method"], r["path"]) for r in sent)
    assert min(per_route.values()) == max(per_route.values())
    statuses = Counter(r["status"] for r in sent)
    print(f"\n{len(sent)} requests over {len(routes)} routes, "
          f"{min(per_route.values())} bodies per route ({len(HOSTILE) + len(ENCODED)} "
          f"hand-picked x 2 credentials, {len(RAW)} raw transfers, {GENERATED} generated): "
          f"answers {dict(sorted(statuses.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))}")
