"""Roles on the real admin API (real Redis and RabbitMQ): every route's role comes from one
table (webhooks.admin.ROUTES); a viewer is refused every write and allowed every read, a
support token every configuration; refusals are 403, logged, and change nothing in Redis;
the audit's actor is the token's name whatever the body says; reads of personal data are
audited; GET /admin/whoami tells the page what the token may do."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from config.reputation import Policy
from config.roles import ROLES, allows
from sender.bus import Bus
from sender.service import make_redis
from suppression.domains import DomainStore, Publishing
from suppression.gate import Counts, Gate
from suppression.sealed import Sealer
from suppression.store import AccountStore, SuppressionStore
from tests.integration.dns_server import Zone, dns_server
from tests.integration.helpers import collect, redis_state, running_app
from webhooks.admin import ADMIN, PUBLIC, ROUTES, SUPPORT, VIEWER, Route
from webhooks.app import make_app

pytestmark = pytest.mark.integration
TOKENS = {"vera": ("viewer", "tok-viewer-0123"), "sam": ("support", "tok-support-0123"),
          "ada": ("admin", "tok-admin-0123")}
LEGACY = "tok-legacy-0123"  # a bare token: admin, named token-3 (its position)
ACCOUNT, ADDRESS = "acct_r", "pat@example.com"
Call = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
async def redis(make_settings: Any) -> AsyncIterator[Any]:
    client = make_redis(make_settings())
    yield client
    await client.aclose()


@pytest.fixture
async def call(make_settings: Any, unused_tcp_port_factory: Any) -> AsyncIterator[Call]:
    """``await call("vera", "GET", "/admin/...", body)`` → (status, JSON)."""
    tokens = ",".join(f"{name}:{role}:{token}" for name, (role, token) in TOKENS.items())
    async with contextlib.AsyncExitStack() as stack:
        # domains.verify asks DNS: a server on loopback (NXDOMAIN for everything), never
        # the machine's resolver
        host, port = (await stack.enter_async_context(dns_server(Zone()))).split(":")
        settings = make_settings(admin_tokens=f"{tokens},{LEGACY}",
                                 dns_nameservers=((host, int(port)),))
        base = await stack.enter_async_context(running_app(settings, unused_tcp_port_factory()))
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def request(who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            token = TOKENS[who][1] if who in TOKENS else LEGACY
            async with session.request(method, base + path, headers={
                    "Authorization": f"Bearer {token}"},
                    data=None if body is None else json.dumps(body)) as answer:
                return answer.status, await answer.json()

        yield request


# --- the table -------------------------------------------------------------------------------


def test_every_admin_route_the_server_serves_is_in_the_table_with_a_role(make_settings: Any
                                                                          ) -> None:
    """No route can be added without a role: the server's /admin routes are the table's."""
    settings = make_settings(admin_tokens="x")
    app = make_app(settings, bus=Bus.from_settings(settings), redis=make_redis(settings),
                   registry=CollectorRegistry())
    served = sorted((r.method, r.resource.canonical) for r in app.router.routes()
                    if r.resource is not None and r.resource.canonical.startswith("/admin")
                    and r.method != "HEAD")
    # the canonical form of {action:unblock} is {action}
    assert served == sorted((r.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", r.path))
                            for r in ROUTES)
    assert all(r.role in (*ROLES, PUBLIC) for r in ROUTES)
    assert [r.path for r in ROUTES if r.role == PUBLIC] == ["/admin", "/admin/"]  # the page
    assert all(r.role != VIEWER for r in ROUTES if r.method != "GET")  # every write needs more
    assert len({r.action for r in ROUTES}) == len(ROUTES)


def test_the_roles_are_those_the_terms_promise() -> None:
    """viewer: reads only; support: unblock, suspend, suppression, consent; admin:
    configuration. Pinned here, so a change to the table is a change to this contract."""
    assert {r.action: r.role for r in GUARDED} == {
        "whoami": VIEWER, "channels.list": VIEWER, "accounts.list": VIEWER, "accounts.show": VIEWER,
        "accounts.evidence": VIEWER, "suppression.check": VIEWER, "consent.show": VIEWER,
        "audit.read": VIEWER, "jobs.show": VIEWER, "history": VIEWER,
        "accounts.unblock": SUPPORT, "accounts.suspend": SUPPORT,
        "accounts.unsuspend": SUPPORT, "suppression.add": SUPPORT,
        "suppression.remove": SUPPORT, "consent.set": SUPPORT,
        "dead.list": SUPPORT, "dead.replay": SUPPORT, "dead.purge": SUPPORT,
        "held.show": VIEWER, "held.release": SUPPORT, "held.discard": SUPPORT,
        "jobs.cancel": SUPPORT,
        "accounts.configure": ADMIN, "domains.list": VIEWER, "domains.show": VIEWER,
        "destinations.list": VIEWER,
        **dict.fromkeys(("domains.add", "domains.remove", "domains.verify", "domains.rotate",
                         "domains.retire", "domains.share", "domains.unshare"), ADMIN)}
    assert {r.action for r in GUARDED if r.reads} == {
        "suppression.check", "consent.show", "jobs.show", "history", "dead.list"}


# --- one request per route, each of which succeeds for a token allowed to make it ------------


async def _account(redis: Any) -> AccountStore:
    store = AccountStore(redis, Policy())
    await store.configure(ACCOUNT, actor="setup", rate=10, min_bounce_volume=5,
                          early_bounce_volume=5)
    return store


async def _blocked(redis: Any) -> None:
    await _account(redis)
    gate = Gate(redis, idempotency_ttl=3600)
    for i in range(6):
        await gate.post_send(ACCOUNT, f"j{i}", status="bounced", attempt=1,
                             reason="userunknown", counts=Counts(sends=1, hard=1),
                             address=f"gone{i}@example.com")


async def _suspended(redis: Any) -> None:
    await (await _account(redis)).support(ACCOUNT, "suspend", actor="setup", reason="r")


async def _suppressed(redis: Any) -> None:
    await _account(redis)
    await SuppressionStore(redis).add(ADDRESS, channel="email", reason="manual", actor="setup")


async def _domain(redis: Any) -> DomainStore:
    await _account(redis)
    store = DomainStore(redis, Sealer(["roles-test-secret-0123"]), Publishing("o.example"))
    await store.add(ACCOUNT, DOMAIN)
    return store


async def _rotated(redis: Any) -> None:
    """A domain whose rotation was verified: its old keys are retiring."""
    store = await _domain(redis)
    await store.rotate(ACCOUNT, DOMAIN)
    record = await store.get(ACCOUNT, DOMAIN)
    await store.record_verification(ACCOUNT, DOMAIN, {"at": 1, "dkim": [
        {"selector": k["selector"], "found": "match"} for k in record["keys"]]})


async def _scheduled(redis: Any) -> None:
    """A job of the account waiting for its send_at (an hour ahead)."""
    from suppression.schedule import Schedule

    await _account(redis)
    await Schedule(redis, idempotency_ttl=3600).add(
        ACCOUNT, "s1", due_ms=int((time.time() + 3600) * 1000), routing_key="email",
        body=b"{}")


D = f"/admin/api/accounts/{ACCOUNT}/domains"
DOMAIN = "shop.example"
#: action → (what must be true first, method, path, body): a request that succeeds for a
#: token with the route's role
REQUESTS: dict[str, tuple[Callable[[Any], Awaitable[Any]], str, str, Any]] = {
    "whoami": (_account, "GET", "/admin/whoami", None),
    "channels.list": (_account, "GET", "/admin/channels?address=%2B85291234567", None),
    "accounts.list": (_account, "GET", "/admin/accounts", None),
    "accounts.show": (_account, "GET", f"/admin/accounts/{ACCOUNT}", None),
    "accounts.evidence": (_blocked, "GET", f"/admin/accounts/{ACCOUNT}/suppressions", None),
    "accounts.configure": (_account, "PATCH", f"/admin/accounts/{ACCOUNT}", {"rate": 99}),
    "accounts.unblock": (_blocked, "POST", f"/admin/accounts/{ACCOUNT}/unblock",
                         {"reason": "list cleaned"}),
    "accounts.suspend": (_account, "POST", f"/admin/accounts/{ACCOUNT}/suspend",
                         {"reason": "phishing"}),
    "accounts.unsuspend": (_suspended, "POST", f"/admin/accounts/{ACCOUNT}/unsuspend",
                           {"reason": "resolved"}),
    "suppression.check": (_suppressed, "GET", f"/admin/suppression/{ADDRESS}", None),
    "suppression.add": (_account, "POST", "/admin/suppression",
                        {"address": ADDRESS, "channel": "email", "reason": "manual"}),
    "suppression.remove": (_suppressed, "DELETE", f"/admin/suppression/{ADDRESS}?channel=email",
                           {"reason": "asked"}),
    "consent.show": (_account, "GET", f"/admin/consent/{ACCOUNT}/{ADDRESS}?channel=email",
                     None),
    "consent.set": (_account, "POST", f"/admin/consent/{ACCOUNT}/{ADDRESS}",
                    {"channel": "email", "granted": True, "source": "form"}),
    "audit.read": (_account, "GET", f"/admin/audit/{ACCOUNT}", None),
    "jobs.show": (_blocked, "GET", f"/admin/jobs/{ACCOUNT}/j3", None),
    "jobs.cancel": (_scheduled, "POST", f"/admin/jobs/{ACCOUNT}/s1/cancel",
                    {"reason": "moved"}),
    "history": (_account, "GET", f"/admin/history/{ADDRESS}?account={ACCOUNT}", None),
    "dead.list": (_account, "GET", f"/admin/dead?account={ACCOUNT}", None),
    "destinations.list": (_account, "GET", "/admin/destinations", None),
    "held.show": (_account, "GET", f"/admin/accounts/{ACCOUNT}/held", None),
    "held.release": (_account, "POST", f"/admin/accounts/{ACCOUNT}/held/release",
                     {"reason": "receipts go", "category": "transactional"}),
    "held.discard": (_account, "POST", f"/admin/accounts/{ACCOUNT}/held/discard",
                     {"reason": "stale blast"}),
    "dead.replay": (_account, "POST", "/admin/dead/replay",
                    {"account": ACCOUNT, "reason": "cause fixed"}),
    "dead.purge": (_account, "POST", "/admin/dead/purge",
                   {"account": ACCOUNT, "reason": "junk"}),
    "domains.list": (_domain, "GET", D, None),
    "domains.add": (_account, "POST", D, {"domain": DOMAIN}),
    "domains.show": (_domain, "GET", f"{D}/{DOMAIN}", None),
    "domains.remove": (_domain, "DELETE", f"{D}/{DOMAIN}", None),
    "domains.verify": (_domain, "POST", f"{D}/{DOMAIN}/verify", None),
    "domains.rotate": (_domain, "POST", f"{D}/{DOMAIN}/rotate", None),
    "domains.retire": (_rotated, "POST", f"{D}/{DOMAIN}/retire", None),
    "domains.share": (_account, "POST", f"{D}/{DOMAIN}/share", {"reason": "one group"}),
    "domains.unshare": (_account, "POST", f"{D}/{DOMAIN}/unshare", {"reason": "sold"}),
}
GUARDED = [r for r in ROUTES if r.role != PUBLIC]


def test_every_guarded_route_has_a_request_here() -> None:
    assert set(REQUESTS) == {r.action for r in GUARDED}
    assert all(REQUESTS[r.action][1] == r.method for r in GUARDED)


def _above(role: str) -> list[Any]:
    return [pytest.param(r, id=r.action) for r in GUARDED if not allows(role, r.role)]


def _within(role: str) -> list[Any]:
    return [pytest.param(r, id=r.action) for r in GUARDED if allows(role, r.role)]


async def _refused_then_allowed(call: Call, redis: Any, redis_url: str, route: Route,
                                who: str, caplog: pytest.LogCaptureFixture) -> None:
    """``who`` is refused (403, logged, Redis unchanged); the same request by an admin
    succeeds, so it was the role that refused it."""
    ready, method, path, body = REQUESTS[route.action]
    await ready(redis)
    before = await redis_state(redis_url)
    caplog.set_level(logging.WARNING, logger="outbox.admin")
    status, answer = await call(who, method, path, body)
    assert status == 403, answer
    assert answer["error"] == (f"{route.action} needs the {route.role} role; this token "
                               f"({who}) is {TOKENS[who][0]}: nothing was changed")
    assert await redis_state(redis_url) == before
    [line] = [r for r in caplog.records if r.name == "outbox.admin"]
    assert [line.levelname, *(getattr(line, k) for k in ("actor", "role", "needed", "action"))
            ] == ["WARNING", who, TOKENS[who][0], route.role, route.action]
    assert (await call("ada", method, path, body))[0] == 200


@pytest.mark.parametrize("route", _above(VIEWER))
async def test_a_viewer_is_refused_every_write(call, redis, redis_url, route, caplog):
    await _refused_then_allowed(call, redis, redis_url, route, "vera", caplog)


@pytest.mark.parametrize("route", _above(SUPPORT))
async def test_support_is_refused_configuration(call, redis, redis_url, route, caplog):
    assert route.role == ADMIN
    await _refused_then_allowed(call, redis, redis_url, route, "sam", caplog)


@pytest.mark.parametrize("route", _within(VIEWER))
async def test_a_viewer_may_read(call, redis, route):
    ready, method, path, body = REQUESTS[route.action]
    await ready(redis)
    status, answer = await call("vera", method, path, body)
    assert status == 200, answer


@pytest.mark.parametrize("route", [r for r in _within(SUPPORT) if r.values[0].method != "GET"])
async def test_support_may_make_the_support_changes(call, redis, route):
    ready, method, path, body = REQUESTS[route.action]
    await ready(redis)
    status, answer = await call("sam", method, path, body)
    assert status == 200, answer


async def test_whoami_names_the_token_its_role_and_what_it_may_do(call):
    status, me = await call("vera", "GET", "/admin/whoami")
    assert status == 200
    assert me == {"name": "vera", "role": "viewer",
                  "allowed": [r.action for r in GUARDED if r.role == VIEWER]}
    _, me = await call("sam", "GET", "/admin/whoami")
    assert "accounts.unblock" in me["allowed"] and "suppression.remove" in me["allowed"]
    assert "accounts.configure" not in me["allowed"]
    _, me = await call("legacy", "GET", "/admin/whoami")  # a bare token: admin, by position
    assert (me["name"], me["role"], me["allowed"]) == (
        "token-3", "admin", [r.action for r in GUARDED])


# --- the actor is the token's name -----------------------------------------------------------


async def test_the_audit_names_the_tokens_owner(call, redis, amqp_url):
    await _suspended(redis)
    status, answer = await call("sam", "POST", f"/admin/accounts/{ACCOUNT}/unsuspend",
                                {"reason": "resolved, ticket 12"})
    assert status == 200, answer
    status, answer = await call("sam", "POST", "/admin/suppression", {
        "address": ADDRESS, "channel": "email", "reason": "unsubscribe", "account": ACCOUNT,
        "actor": "sam"})  # the token's own name may be repeated
    assert status == 200 and answer["actor"] == "sam"
    _, audit = await call("vera", "GET", f"/admin/audit/{ACCOUNT}")
    assert [(r["action"], r["actor"]) for r in audit[:2]] == [
        ("suppression.add", "sam"), ("unsuspend", "sam")]
    event, recipient = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 3,
                                     timeout=3)
    assert (event.routing_key, json.loads(event.body)["actor"]) == ("account.active", "sam")
    # the entry added is told to the CRM as a recipient event (who: in the audit above)
    assert (recipient.routing_key, json.loads(recipient.body)["source"]) == \
        ("recipient.email.suppressed", "admin")


@pytest.mark.parametrize("where", ["body", "query"])
async def test_an_actor_that_is_not_the_tokens_name_is_refused(call, redis, redis_url, where):
    await _suppressed(redis)
    before = await redis_state(redis_url)
    path, body = f"/admin/suppression/{ADDRESS}?channel=email", {"reason": "asked"}
    if where == "body":
        body["actor"] = "alice"
    else:
        path += "&actor=alice"
    status, answer = await call("sam", "DELETE", path, body)
    assert status == 403
    assert answer["error"] == ("actor 'alice' is not this token's name ('sam'): changes are "
                               "audited under the token's name; leave actor out")
    assert await redis_state(redis_url) == before
    status, answer = await call("sam", "POST", f"/admin/accounts/{ACCOUNT}/suspend",
                                {"reason": "r", "actor": "ada"})
    assert status == 403 and "'ada' is not this token's name" in answer["error"]
    status, answer = await call("sam", "POST", f"/admin/accounts/{ACCOUNT}/suspend",
                                {"reason": "r", "actor": 7})
    assert (status, answer) == (400, {"error": "actor must be a string"})
    assert await redis_state(redis_url) == before


# --- reads of personal data are audited ------------------------------------------------------


async def test_a_read_of_a_recipients_history_is_audited(call, redis):
    store = await _account(redis)
    status, _ = await call("vera", "GET", f"/admin/history/{ADDRESS}?account={ACCOUNT}")
    assert status == 200
    [record] = [r for r in await store.audit.read(ACCOUNT) if r["action"] == "read"]
    assert {k: record[k] for k in ("actor", "role", "what", "reason", "address", "account")} \
        == {"actor": "vera", "role": "viewer", "what": "history",
            "reason": "a recipient's history", "address": ADDRESS, "account": ACCOUNT}
    # every account's history (no account named): in the global audit stream
    assert (await call("sam", "GET", f"/admin/history/{ADDRESS}"))[0] == 200
    [record] = [r for r in await store.audit.read(None) if r["action"] == "read"]
    assert (record["actor"], record["what"], record["address"], record["account"]) == (
        "sam", "history", ADDRESS, "")


async def test_each_personal_read_is_audited_and_other_reads_are_not(call, redis):
    """One record per answered read of a route that declares ``reads``; none for the others,
    nor for a read that was refused (404)."""
    await _blocked(redis)
    await _suppressed(redis)
    await _domain(redis)
    for route in GUARDED:
        if route.method == "GET":
            _, method, path, body = REQUESTS[route.action]
            who = "vera" if route.role == VIEWER else "sam"  # dead letters: support's read
            assert (await call(who, method, path, body))[0] == 200, route.action
    assert (await call("vera", "GET", f"/admin/jobs/{ACCOUNT}/nope"))[0] == 404
    store = AccountStore(redis, Policy())
    reads = [r for r in await store.audit.read(ACCOUNT) + await store.audit.read(None)
             if r["action"] == "read"]
    assert sorted(r["what"] for r in reads) == sorted(r.action for r in GUARDED if r.reads)
    assert {r["actor"] for r in reads} == {"vera", "sam"}
    [job] = [r for r in reads if r["what"] == "jobs.show"]
    assert (job["job"], job["reason"]) == ("j3", "a job's timeline")
