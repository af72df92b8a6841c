"""Sending domains through the admin API on the real webhook server (real RabbitMQ, Redis and
the loopback DNS server): the same operations as ``outbox domains``, behind the admin token."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiohttp
import pytest

from sender.service import make_redis
from suppression.reputation import Policy
from suppression.store import AccountStore
from tests.integration.dns_server import Zone, dns_server
from tests.integration.helpers import running_app

pytestmark = pytest.mark.integration
TOKEN = "admin-token-for-domain-tests"  # ops's: admin
VIEWER = "viewer-token-for-domain-tests"  # vera's: viewer
BASE = "/admin/api/accounts/acct_api/domains"


@pytest.fixture
async def api(make_settings, unused_tcp_port):
    """``await call(method, path, body)`` → (status, JSON), and the zone the DNS serves."""
    zone = Zone()
    async with contextlib.AsyncExitStack() as stack:
        nameserver = await stack.enter_async_context(dns_server(zone))
        host, port = nameserver.split(":")
        settings = make_settings(admin_tokens=f"ops:admin:{TOKEN},vera:viewer:{VIEWER}",
                                 dns_nameservers=((host, int(port)),))
        redis = make_redis(settings)
        await AccountStore(redis, Policy()).configure("acct_api", business_name="Api Ltd")
        await redis.aclose()
        base = await stack.enter_async_context(running_app(settings, unused_tcp_port))
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def call(method: str, path: str, body: Any = None,
                       token: str = TOKEN) -> tuple[int, Any]:
            async with session.request(method, base + path, headers={
                    "Authorization": f"Bearer {token}"},
                    data=json.dumps(body) if body is not None else None) as response:
                return response.status, await response.json()

        yield call, zone


async def test_add_verify_rotate_and_remove_through_the_api(api):
    call, zone = api
    status, added = await call("POST", BASE, {"domain": "API.example"})
    assert status == 200 and added["domain"] == "api.example"
    assert set(added) == {"account", "domain", "selector", "records"}
    for r in added["records"]:
        zone.set(r["name"], r["type"], r["value"])
    status, found = await call("POST", f"{BASE}/api.example/verify")
    assert status == 200 and found["verified"] is True and found["bulk_sender"]["met"]
    status, listed = await call("GET", BASE)
    assert status == 200 and [d["domain"] for d in listed] == ["api.example"]
    assert "sealed" not in json.dumps(listed) and "PRIVATE" not in json.dumps(listed)
    status, rotated = await call("POST", f"{BASE}/api.example/rotate")
    assert status == 200 and [k["state"] for k in rotated["keys"]] == ["active", "pending"]
    status, gone = await call("DELETE", f"{BASE}/api.example")
    assert (status, gone["removed"]) == (200, True)
    assert (await call("GET", f"{BASE}/api.example"))[0] == 404


async def test_refusals(api):
    call, _ = api
    assert (await call("GET", BASE, token="wrong"))[0] == 401
    assert (await call("GET", "/admin/api/accounts/acct_ghost/domains"))[0] == 404
    status, body = await call("POST", BASE, {"domain": "localhost"})
    assert status == 400 and "not a domain" in body["error"]
    status, body = await call("POST", BASE, {})
    assert status == 400 and "domain" in body["error"]
    assert (await call("POST", f"{BASE}/none.example/verify"))[0] == 404
    status, body = await call("GET", "/admin/api/accounts/a%7D%3Ax/domains")
    assert status == 400 and "account" in body["error"]  # the id rule
    status, _ = await call("POST", BASE, {"domain": "x.example", "actor": "mallory"})
    assert status == 403  # the actor is the token's name
    assert (await call("GET", BASE, token=VIEWER))[0] == 200  # a viewer reads
    status, body = await call("POST", BASE, {"domain": "x.example"}, token=VIEWER)
    assert status == 403 and "domains.add" in body["error"]  # and changes nothing
    assert (await call("GET", BASE))[1] == []
