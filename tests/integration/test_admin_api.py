"""The admin API on the real webhook server (real RabbitMQ and Redis): bearer tokens, an
account blocked by the real post-send script and unblocked with a reason (audited, announced
on outbox.status), suppression and consent round trips, refusals that change nothing, and the
support page, whose script is run under node against data injected through the API."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
from typing import Any

import aiohttp
import pytest

from sender.service import make_redis
from suppression.gate import Counts, Gate
from tests.integration.helpers import collect, running_app
from webhooks.admin import PAGE

pytestmark = pytest.mark.integration
TOKEN, OTHER = "admin-token-for-tests", "second-token"
EVIL = "<script>alert('x')</script><img src=x onerror=alert(1)>"


class Admin:
    """Calls to one server: ``await admin("GET", "/admin/...")`` → (status, JSON or text)."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base, self.session = base, session
        self.headers: dict[str, str] = {}

    async def __call__(self, method: str, path: str, body: Any = None, *,
                       token: str | None = TOKEN, raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        async with self.session.request(method, self.base + path, data=data,
                                        headers=headers) as response:
            self.headers = dict(response.headers)
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()


@pytest.fixture
async def serve(make_settings, unused_tcp_port_factory):
    """``await serve(admin_tokens=...)`` → an :class:`Admin` on a server of its own."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def start(**overrides: Any) -> Admin:
            base = await stack.enter_async_context(
                running_app(make_settings(**overrides), unused_tcp_port_factory()))
            return Admin(base, session)

        yield start


@pytest.fixture
async def admin(serve):
    return await serve(admin_tokens=f"{TOKEN},{OTHER}")


@pytest.fixture
async def redis(make_settings):
    client = make_redis(make_settings())
    yield client
    await client.aclose()


# --- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token", "", TOKEN + "x"])
async def test_no_token_or_a_wrong_one_is_401(admin, token):
    status, body = await admin("GET", "/admin/accounts", token=token)
    assert status == 401 and "error" in body
    assert admin.headers["WWW-Authenticate"].startswith("Bearer")


async def test_another_scheme_is_401(admin):
    async with admin.session.get(admin.base + "/admin/accounts",
                                 headers={"Authorization": f"Basic {TOKEN}"}) as response:
        assert response.status == 401


async def test_every_configured_token_works(admin):
    for token in (TOKEN, OTHER):
        assert await admin("GET", "/admin/accounts", token=token) == (200, [])


async def test_without_configured_tokens_everything_is_403(serve):
    admin = await serve()
    for method, path in [("GET", "/admin/accounts"), ("GET", "/admin/"),
                         ("POST", "/admin/accounts/a/unblock")]:
        status, body = await admin(method, path, {"reason": "r", "actor": "a"})
        assert status == 403, path
        assert "OUTBOX_ADMIN_TOKENS" in body["error"]


# --- accounts: block by the real post-send script, unblock with a reason --------------------


async def _block(admin: Admin, redis: Any, account: str) -> None:
    """Small volumes for this account, then hard bounces through Gate.post_send."""
    status, body = await admin("PATCH", f"/admin/accounts/{account}",
                               {"min_bounce_volume": 5, "early_bounce_volume": 5,
                                "actor": "setup"})
    assert status == 200, body
    gate = Gate(redis, idempotency_ttl=3600)
    moves = []
    for i in range(10):
        recorded = await gate.post_send(account, f"j{i}", status="bounced", attempt=1,
                                        reason="userunknown", counts=Counts(sends=1, hard=1),
                                        address=f"gone{i}@example.com")
        moves += [recorded.transition] if recorded.transition else []
    assert moves and moves[-1].to_state == "blocked"


async def test_a_blocked_account_is_unblocked_with_reason_and_actor(admin, redis, amqp_url,
                                                                    caplog):
    caplog.set_level(logging.INFO, logger="outbox.admin")
    await _block(admin, redis, "acct_dirty")
    status, shown = await admin("GET", "/admin/accounts/acct_dirty")
    assert (status, shown["state"]) == (200, "blocked")
    assert shown["rates"]["email"]["hard_bounces"] == 10
    assert await admin("GET", "/admin/accounts?state=blocked") == (
        200, [{"account_id": "acct_dirty", "state": "blocked"}])

    status, body = await admin("POST", "/admin/accounts/acct_dirty/unblock", {"actor": "alice"})
    assert (status, body) == (400, {"error": "reason is required"})
    status, body = await admin("POST", "/admin/accounts/acct_dirty/unblock", {"reason": " "})
    assert (status, body) == (400, {"error": "reason and actor are required"})
    assert (await admin("GET", "/admin/accounts/acct_dirty"))[1]["state"] == "blocked"

    status, body = await admin("POST", "/admin/accounts/acct_dirty/unblock",
                               {"reason": "list cleaned, ticket 4711", "actor": "alice"})
    assert status == 200, body
    assert (body["from"], body["state"], body["event_published"]) == ("blocked", "active", True)
    status, shown = await admin("GET", "/admin/accounts/acct_dirty")
    assert shown["state"] == "active" and shown["probation_until"]
    assert shown["rates"]["email"]["sends"] == 0  # probation: fresh counters

    status, audit = await admin("GET", "/admin/audit/acct_dirty?limit=2")
    assert status == 200 and len(audit) == 2
    assert (audit[0]["action"], audit[0]["from"], audit[0]["to"], audit[0]["actor"],
            audit[0]["reason"]) == ("unblock", "blocked", "active", "alice",
                                    "list cleaned, ticket 4711")
    assert (audit[1]["action"], audit[1]["to"]) == ("auto", "blocked")

    [message] = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2, timeout=3)
    event = json.loads(message.body)
    assert message.routing_key == "account.active"
    assert (event["id"], event["status"], event["actor"], event["action"], event["from"],
            event["detail"]) == (f"acct_dirty:{audit[0]['id']}", "active", "alice", "unblock",
                                 "blocked", "alice: list cleaned, ticket 4711")

    logged = [r for r in caplog.records if r.name == "outbox.admin"]
    assert any(getattr(r, "actor", None) == "alice" and getattr(r, "action", None) == "unblock"
               for r in logged)
    assert not any(TOKEN in json.dumps(r.__dict__, default=str) for r in caplog.records)


async def test_an_action_that_does_not_apply_is_409_and_changes_nothing(admin, amqp_url):
    await _configure(admin, "acct_ok")
    who = {"reason": "why not", "actor": "bob"}
    status, body = await admin("POST", "/admin/accounts/acct_ok/unblock", who)
    assert status == 409 and "active" in body["error"]
    assert (await admin("POST", "/admin/accounts/acct_ok/unsuspend", who))[0] == 409
    assert (await admin("POST", "/admin/accounts/acct_ok/suspend", who))[0] == 200
    assert (await admin("POST", "/admin/accounts/acct_ok/suspend", who))[0] == 409
    assert (await admin("POST", "/admin/accounts/acct_ok/unsuspend", who))[0] == 200
    got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 3, timeout=3)
    assert [m.routing_key for m in got] == ["account.suspended", "account.active"]
    status, audit = await admin("GET", "/admin/audit/acct_ok")
    assert [r["action"] for r in audit] == ["unsuspend", "suspend", "configure"]


async def test_unknown_accounts_are_404(admin):
    for method, path in [("GET", "/admin/accounts/nobody"), ("GET", "/admin/audit/nobody"),
                         ("POST", "/admin/accounts/nobody/suspend")]:
        status, body = await admin(method, path, {"reason": "r", "actor": "a"})
        assert status == 404 and "nobody" in body["error"], path


async def _configure(admin: Admin, account: str, **fields: Any) -> dict[str, Any]:
    status, body = await admin("PATCH", f"/admin/accounts/{account}",
                               {"rate": 50, "actor": "carol", **fields})
    assert status == 200, body
    return body


async def test_configure_sets_sender_information_and_limits(admin):
    body = await _configure(admin, "acct_c", business_name="Acme Ltd", burst=500,
                            block_bounce="0.2", consent_mode="opt_out")
    assert body["settings"] == {"rate": "50.0", "business_name": "Acme Ltd", "burst": "500",
                                "block_bounce": "0.2", "consent_mode": "opt_out"}
    _, shown = await admin("GET", "/admin/accounts/acct_c")
    assert shown["sender"]["business_name"] == "Acme Ltd"
    assert (shown["limits"]["rate"], shown["limits"]["burst"]) == (50.0, 500)
    assert shown["limits"]["thresholds"]["block_bounce"] == 0.2


@pytest.mark.parametrize("body, error", [
    ({"rate": "fast", "actor": "a"}, "rate must be a number"),
    ({"rate": True, "actor": "a"}, "rate must be a number"),
    ({"rate": -1, "actor": "a"}, "rate must be positive"),
    ({"burst": 1.5, "actor": "a"}, "burst must be a whole number"),
    ({"business_name": 7, "actor": "a"}, "business_name must be a string"),
    ({"consent_mode": "maybe", "actor": "a"}, "consent_mode must be opt_in or opt_out"),
    ({"colour": "red", "actor": "a"}, "unknown account setting(s): colour"),
    ({"rate": 5}, "actor is required"),
    ({"actor": "a"}, "nothing to configure"),
    (["rate", 5], "the body must be a JSON object"),
])
async def test_bad_settings_are_400_and_change_nothing(admin, body, error):
    await _configure(admin, "acct_v")
    status, answer = await admin("PATCH", "/admin/accounts/acct_v", body)
    assert status == 400 and error in answer["error"]
    _, shown = await admin("GET", "/admin/accounts/acct_v")
    assert shown["overrides"] == {"rate": "50.0"} and shown["sender"]["business_name"] is None


async def test_invalid_json_is_400(admin):
    for raw in (b"{not json", b"\xff\xfe", b'"a string"'):
        status, body = await admin("POST", "/admin/suppression", raw=raw)
        assert status == 400 and "JSON" in body["error"]


async def test_bad_queries_are_400(admin):
    assert (await admin("GET", "/admin/accounts?state=sleepy"))[0] == 400
    await _configure(admin, "acct_q")
    for limit in ("x", "0", "100000"):
        status, body = await admin("GET", f"/admin/audit/acct_q?limit={limit}")
        assert status == 400 and "limit" in body["error"]


# --- suppression and consent ------------------------------------------------------------


async def test_suppression_add_check_remove_global_and_per_account(admin):
    add = {"address": "Bob@Example.com", "channel": "email", "actor": "dave"}
    status, entry = await admin("POST", "/admin/suppression", {**add, "reason": "hard_bounce"})
    assert status == 200 and (entry["scope"], entry["address"]) == ("global", "bob@example.com")
    status, entry = await admin("POST", "/admin/suppression",
                                {**add, "reason": "unsubscribe", "account": "acct_s"})
    assert status == 200 and (entry["scope"], entry["account_id"]) == ("account", "acct_s")

    _, found = await admin("GET", "/admin/suppression/bob@example.com?account=acct_s")
    assert found["suppressed"] and sorted(e["reason"] for e in found["entries"]) == [
        "hard_bounce", "unsubscribe"]
    _, found = await admin("GET", "/admin/suppression/bob@example.com?account=acct_t"
                                  "&channel=email")
    assert [e["scope"] for e in found["entries"]] == ["global"]  # choices stay per account

    status, body = await admin("DELETE", "/admin/suppression/bob@example.com"
                                         "?channel=email&account=acct_s&reason=asked%20back"
                                         "&actor=dave")
    assert status == 200 and [e["reason"] for e in body["removed"]] == ["unsubscribe"]
    status, body = await admin("DELETE", "/admin/suppression/bob@example.com?channel=email",
                               {"reason": "mailbox exists again", "actor": "dave"})
    assert status == 200 and [e["scope"] for e in body["removed"]] == ["global"]
    assert await admin("GET", "/admin/suppression/bob@example.com?account=acct_s") == (
        200, {"address": "bob@example.com", "suppressed": False, "entries": []})
    status, _ = await admin("DELETE", "/admin/suppression/bob@example.com?channel=email",
                            {"reason": "again", "actor": "dave"})
    assert status == 404

    _, audit = await admin("GET", "/admin/audit/acct_s")
    assert [(r["action"], r["actor"], r["reason"]) for r in audit] == [
        ("suppression.remove", "dave", "asked back"), ("suppression.add", "dave", "unsubscribe")]


@pytest.mark.parametrize("body, error", [
    ({"address": "x@example.com", "channel": "email", "reason": "unsubscribe", "actor": "a"},
     "give --account"),
    ({"address": "x@example.com", "channel": "fax", "reason": "manual", "actor": "a"},
     "channel must be email or sms"),
    ({"address": "not an address", "channel": "email", "reason": "manual", "actor": "a"}, ""),
    ({"address": "x@example.com", "channel": "email", "reason": "bored", "actor": "a"},
     "reason must be one of"),
    ({"address": "x@example.com", "channel": "email", "reason": "manual", "actor": "a",
      "expires": "soon"}, "expires must be a whole number"),
    ({"address": "x@example.com", "channel": "email", "reason": "manual"}, "actor is required"),
])
async def test_bad_suppression_entries_are_400_and_change_nothing(admin, body, error):
    status, answer = await admin("POST", "/admin/suppression", body)
    assert status == 400 and error in answer["error"]
    _, found = await admin("GET", "/admin/suppression/x@example.com?account=acct_1")
    assert found["suppressed"] is False


async def test_delete_needs_channel_reason_and_actor(admin):
    await admin("POST", "/admin/suppression", {"address": "y@example.com", "channel": "email",
                                               "reason": "manual", "actor": "a"})
    status, body = await admin("DELETE", "/admin/suppression/y@example.com")
    assert (status, body) == (400, {"error": "channel, reason and actor are required"})
    assert (await admin("GET", "/admin/suppression/y@example.com"))[1]["suppressed"]


async def test_consent_grant_revoke_show(admin):
    path = "/admin/consent/acct_m/+85291234567"
    _, record = await admin("GET", path + "?channel=sms")
    assert record["status"] == "none"
    status, record = await admin("POST", path, {"channel": "sms", "granted": True,
                                                "source": "signup form",
                                                "evidence": "form 1234", "actor": "erin"})
    assert (status, record["status"], record["grant_evidence"]) == (200, "granted", "form 1234")
    status, record = await admin("POST", path, {"channel": "sms", "granted": False,
                                                "source": "phone call", "actor": "erin"})
    assert (status, record["status"]) == (200, "revoked")
    _, record = await admin("GET", path + "?channel=sms")
    assert (record["status"], record["grant_evidence"], record["revoke_source"]) == (
        "revoked", "form 1234", "phone call")
    assert (await admin("GET", path))[0] == 400  # no channel
    status, body = await admin("POST", path, {"channel": "sms", "granted": "yes", "actor": "e"})
    assert (status, body) == (400, {"error": "granted must be true or false"})
    assert (await admin("GET", path + "?channel=sms"))[1]["status"] == "revoked"


# --- the page -------------------------------------------------------------------------------


async def test_the_page_is_self_contained_and_builds_no_html_from_data(admin):
    status, page = await admin("GET", "/admin/", token=None)
    assert status == 200 and page == PAGE
    assert 'id="token"' in page and 'id="account"' in page and 'value="unblock"' in page
    assert "Unblock 解除封鎖" in page
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", page)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no external assets
    csp = admin.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp


async def test_user_text_from_the_api_is_rendered_as_text(admin):
    """Inject markup through the API, fetch the account, and render it with the page's own
    script under node with a stand-in DOM that fails on any HTML sink."""
    await _configure(admin, "acct_x", business_name=EVIL)
    status, _ = await admin("POST", "/admin/accounts/acct_x/suspend",
                            {"reason": EVIL, "actor": EVIL})
    assert status == 200
    _, info = await admin("GET", "/admin/accounts/acct_x")
    assert admin.headers["Content-Type"].startswith("application/json")
    assert admin.headers["X-Content-Type-Options"] == "nosniff"
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    rendered = _render_with_node(info)
    assert set(rendered["created"]) <= {"tr", "th", "td"}
    assert EVIL in rendered["texts"]  # the reason and actor, as plain text


_FAKE_DOM = """
const created = [];
function node(tag) {
  const n = {tag, children: [], textContent: "", className: "", hidden: true, value: "",
             append(...c) { this.children.push(...c); },
             replaceChildren(...c) { this.children = c; },
             addEventListener() {}};
  for (const sink of ["innerHTML", "outerHTML"]) {
    Object.defineProperty(n, sink, {set() { throw new Error(sink + " used"); }});
  }
  n.insertAdjacentHTML = () => { throw new Error("insertAdjacentHTML used"); };
  return n;
}
const byId = {};
globalThis.document = {
  getElementById: (id) => byId[id] || (byId[id] = node("#" + id)),
  createElement: (tag) => { created.push(tag); return node(tag); },
  write: () => { throw new Error("document.write used"); },
};
"""

_RENDER = """
show(INFO);
const texts = [];
(function walk(n) { texts.push(n.textContent); n.children.forEach(walk); })(byId.transitions);
console.log(JSON.stringify({created: [...new Set(created)], texts}));
"""


def _render_with_node(info: dict[str, Any]) -> dict[str, Any]:
    script = re.search(r"<script>(.*)</script>", PAGE, re.S).group(1)  # type: ignore[union-attr]
    program = _FAKE_DOM + script + f"const INFO = {json.dumps(info)};" + _RENDER
    done = subprocess.run(["node", "-"], input=program, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
