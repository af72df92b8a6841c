"""The admin API on the real webhook server (real RabbitMQ and Redis): bearer tokens, an
account blocked by the real post-send script and unblocked with a reason (audited, announced
on outbox.status), the evidence behind its bounces, suppression and consent round trips,
refusals that change nothing, and how the support page is served (the page itself is driven
in Chromium by test_admin_page.py)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from sender.service import make_redis
from suppression.gate import Counts, Gate
from tests.integration.helpers import collect, running_app
from tests.throwaway_channel import declared
from webhooks.admin import PAGE

pytestmark = pytest.mark.integration
TOKEN, OTHER = "admin-token-for-tests", "second-token"


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
    return await serve(admin_tokens=f"alice:admin:{TOKEN},{OTHER}")


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
        status, body = await admin(method, path, {"reason": "r"})
        assert status == 403, path
        assert "OUTBOX_ADMIN_TOKENS" in body["error"]


# --- accounts: block by the real post-send script, unblock with a reason --------------------


async def _block(admin: Admin, redis: Any, account: str) -> None:
    """Small volumes for this account, then hard bounces through Gate.post_send."""
    status, body = await admin("PATCH", f"/admin/accounts/{account}",
                               {"min_bounce_volume": 5, "early_bounce_volume": 5})
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
    assert (status, body) == (400, {"error": "reason is required"})
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


async def test_an_accounts_bounces_come_with_their_evidence(admin, redis):
    """The global entries its bounces taught (``learnt_from`` it) and its own entries, newest
    first; another account's entries are not listed."""
    await _block(admin, redis, "acct_dirty")
    await admin("POST", "/admin/suppression", {"address": "me@example.com", "channel": "email",
                                               "reason": "unsubscribe", "account": "acct_dirty"})
    await admin("POST", "/admin/suppression", {"address": "other@example.com",
                                               "channel": "email", "reason": "unsubscribe",
                                               "account": "acct_other"})
    await Gate(redis, idempotency_ttl=3600).post_send(
        "acct_other", "o1", status="bounced", attempt=1, reason="mailbox full",
        counts=Counts(sends=1, hard=1), address="theirs@example.com")
    status, found = await admin("GET", "/admin/accounts/acct_dirty/suppressions")
    assert status == 200 and len(found) == 11
    assert [e["at"] for e in found] == sorted((e["at"] for e in found), reverse=True)
    bounced = {e["address"]: e for e in found if e["scope"] == "global"}
    assert set(bounced) == {f"gone{i}@example.com" for i in range(10)}
    assert (bounced["gone3@example.com"]["source"], bounced["gone3@example.com"]["detail"],
            bounced["gone3@example.com"]["learnt_from"]) == ("job:j3", "userunknown",
                                                             "acct_dirty")
    [own] = [e for e in found if e["scope"] == "account"]
    assert (own["address"], own["reason"], own["account_id"]) == (
        "me@example.com", "unsubscribe", "acct_dirty")
    status, found = await admin("GET", "/admin/accounts/acct_dirty/suppressions?limit=3")
    assert status == 200 and len(found) == 3
    assert (await admin("GET", "/admin/accounts/acct_dirty/suppressions?limit=0"))[0] == 400
    status, body = await admin("GET", "/admin/accounts/nobody/suppressions")
    assert status == 404 and "nobody" in body["error"]
    assert (await admin("GET", "/admin/accounts/acct_dirty/suppressions", token=None))[0] == 401

    _, checked = await admin("GET", "/admin/suppression/gone3@example.com?account=acct_dirty")
    assert [(e["scope"], e["learnt_from"]) for e in checked["entries"]] == [
        ("global", "acct_dirty")]


async def test_an_action_that_does_not_apply_is_409_and_changes_nothing(admin, amqp_url):
    await _configure(admin, "acct_ok")
    who = {"reason": "why not"}
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
        status, body = await admin(method, path, {"reason": "r"})
        assert status == 404 and "nobody" in body["error"], path


async def _configure(admin: Admin, account: str, **fields: Any) -> dict[str, Any]:
    status, body = await admin("PATCH", f"/admin/accounts/{account}",
                               {"rate": 50, **fields})
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


async def test_configure_sets_the_sending_limits(admin):
    body = await _configure(admin, "acct_lim", cap_marketing_sms=2, daily_quota="1000",
                            quiet_marketing_sms="drop", quiet_notification_sms="wait",
                            warning_bounce=0.03, topic_caps="promo:sms=1, promo:email=3")
    assert body["settings"] == {"rate": "50.0", "cap_marketing_sms": "2",
                                "daily_quota": "1000", "quiet_marketing_sms": "drop",
                                "quiet_notification_sms": "wait", "warning_bounce": "0.03",
                                "topic_caps": "promo:email=3,promo:sms=1"}
    _, shown = await admin("GET", "/admin/accounts/acct_lim")
    limits = shown["limits"]
    assert limits["frequency_caps"] == {
        "caps": {"marketing_sms": 2}, "topics": {"promo:email": 3, "promo:sms": 1},
        "period": 604800, "mode": "end"}
    assert (limits["daily_quota"], limits["quota_used_today"]) == (1000, 0)
    assert limits["thresholds"]["warning_bounce"] == 0.03
    assert limits["quiet_hours"] == {"from": "22:00", "to": "08:00", "drop": ["marketing_sms"],
                                     "wait": ["notification_sms"]}


@pytest.mark.parametrize("body, error", [
    ({"topic_caps": "promo:fax=1"}, "topic_caps: 'promo:fax=1' is not 'topic:channel=N'"),
    ({"topic_caps": "promo:sms=0"}, "N must be at least 1"),
    ({"topic_caps": 3}, "topic_caps must be text"),
    ({"rate": "fast"}, "rate must be a number"),
    ({"rate": True}, "rate must be a number"),
    ({"rate": -1}, "rate must be positive"),
    ({"burst": 1.5}, "burst must be a whole number"),
    ({"business_name": 7}, "business_name must be a string"),
    ({"consent_mode": "maybe"}, "consent_mode must be opt_in or opt_out"),
    ({"colour": "red"}, "unknown account setting(s): colour"),
    ({"cap_marketing_sms": -2}, "cap_marketing_sms must be at least 0"),
    ({"daily_quota": 2.5}, "daily_quota must be a whole number"),
    ({"cap_period": 59}, "cap_period must be at least 60"),
    ({"quiet_marketing_sms": "later"}, "quiet_marketing_sms must be off, drop or wait"),
    ({"quiet_start": 1440}, "quiet_start must be at most 1439"),
    ({"warning_bounce": 2}, "warning_bounce is a fraction"),
    ({"actor": "alice"}, "nothing to configure"),
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
    for account in ("acct_s", "acct_t"):  # known accounts: an unknown one is 404
        await _configure(admin, account, rate=5)
    add = {"address": "Bob@Example.com", "channel": "email", "actor": "alice"}
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
                                         "&actor=alice")
    assert status == 200 and [e["reason"] for e in body["removed"]] == ["unsubscribe"]
    status, body = await admin("DELETE", "/admin/suppression/bob@example.com?channel=email",
                               {"reason": "mailbox exists again", "actor": "alice"})
    assert status == 200 and [e["scope"] for e in body["removed"]] == ["global"]
    assert await admin("GET", "/admin/suppression/bob@example.com?account=acct_s") == (
        200, {"address": "bob@example.com", "suppressed": False, "entries": []})
    status, _ = await admin("DELETE", "/admin/suppression/bob@example.com?channel=email",
                            {"reason": "again", "actor": "alice"})
    assert status == 404

    _, audit = await admin("GET", "/admin/audit/acct_s")
    read = ("read", "alice", "an address's suppression")  # reads of personal data too
    assert [(r["action"], r["actor"], r["reason"]) for r in audit] == [
        read, ("suppression.remove", "alice", "asked back"), read,
        ("suppression.add", "alice", "unsubscribe"), ("configure", "alice", "rate=5.0")]


@pytest.mark.parametrize("body, error", [
    ({"address": "x@example.com", "channel": "email", "reason": "unsubscribe"},
     "give --account"),
    ({"address": "x@example.com", "channel": "fax", "reason": "manual"},
     "channel must be email or sms"),
    ({"address": "not an address", "channel": "email", "reason": "manual"}, ""),
    ({"address": "x@example.com", "channel": "email", "reason": "bored"},
     "reason must be one of"),
    ({"address": "x@example.com", "channel": "email", "reason": "manual",
      "expires": "soon"}, "expires must be a whole number"),
    ({"address": "x@example.com", "channel": "email"}, "reason is required"),
])
async def test_bad_suppression_entries_are_400_and_change_nothing(admin, body, error):
    await _configure(admin, "acct_1", rate=5)
    status, answer = await admin("POST", "/admin/suppression", body)
    assert status == 400 and error in answer["error"]
    _, found = await admin("GET", "/admin/suppression/x@example.com?account=acct_1")
    assert found["suppressed"] is False


async def test_delete_needs_channel_and_reason(admin):
    await admin("POST", "/admin/suppression", {"address": "y@example.com", "channel": "email",
                                               "reason": "manual"})
    status, body = await admin("DELETE", "/admin/suppression/y@example.com")
    assert (status, body) == (400, {"error": "channel and reason are required"})
    assert (await admin("GET", "/admin/suppression/y@example.com"))[1]["suppressed"]


async def test_consent_grant_revoke_show(admin):
    await _configure(admin, "acct_m", rate=5)
    path = "/admin/consent/acct_m/+85291234567"
    _, record = await admin("GET", path + "?channel=sms")
    assert record["status"] == "none"
    status, record = await admin("POST", path, {"channel": "sms", "granted": True,
                                                "source": "signup form",
                                                "evidence": "form 1234"})
    assert (status, record["status"], record["grant_evidence"]) == (200, "granted", "form 1234")
    status, record = await admin("POST", path, {"channel": "sms", "granted": False,
                                                "source": "phone call"})
    assert (status, record["status"]) == (200, "revoked")
    _, record = await admin("GET", path + "?channel=sms")
    assert (record["status"], record["grant_evidence"], record["revoke_source"]) == (
        "revoked", "form 1234", "phone call")
    assert (await admin("GET", path))[0] == 400  # no channel
    status, body = await admin("POST", path, {"channel": "sms", "granted": "yes"})
    assert (status, body) == (400, {"error": "granted must be true or false"})
    assert (await admin("GET", path + "?channel=sms"))[1]["status"] == "revoked"


# --- channels: the page's list, from the registry ------------------------------------------


async def test_the_channels_are_the_registrys_and_an_address_gets_its_candidates(admin):
    status, body = await admin("GET", "/admin/channels")
    assert status == 200 and "candidates" not in body
    assert body["channels"][0] == {
        "name": "email", "address": "e-mail address", "opt_out": "unsubscribe",
        "lanes": {"priority": {"queue": "outbox.email", "routing_key": "email"},
                  "bulk": {"queue": "outbox.email.bulk", "routing_key": "email.bulk"}}}
    assert [c["name"] for c in body["channels"]] == ["email", "sms"]
    for address, expected in [("ana@example.com", ["email"]), ("+852 9123 4567", ["sms"]),
                              ("push:abc123", ["sms"])]:  # no push channel: read as a phone
        _, body = await admin("GET", "/admin/channels?address=" + quote(address))
        assert body["candidates"] == expected, address
    assert (await admin("GET", "/admin/channels", token=None))[0] == 401


async def test_a_third_channel_is_on_the_list_without_a_hand_edit(admin):
    with declared():
        _, body = await admin("GET", "/admin/channels?address=push%3Aabc123")
    assert [c["name"] for c in body["channels"]] == ["email", "sms", "push"]
    assert body["channels"][2]["lanes"]["bulk"] == {"queue": "outbox.push.bulk",
                                                    "routing_key": "push.bulk"}
    assert body["candidates"] == ["push"]


# --- the page -------------------------------------------------------------------------------


async def test_the_page_is_self_contained_and_builds_no_html_from_data(admin):
    status, page = await admin("GET", "/admin/", token=None)
    assert status == 200 and page == PAGE
    for view in ("accounts", "account", "recipient", "job"):
        assert f'id="view-{view}"' in page
    assert 'id="token"' in page and 'id="whoami"' in page and "Unblock 解除封鎖" in page
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", page)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no external assets
    csp = admin.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    script = re.search(r"<script>(.*)</script>", page, re.S)
    assert script and "sha256-" + base64.b64encode(
        hashlib.sha256(script.group(1).encode()).digest()).decode() in csp
    assert not re.search(r"\bon[a-z]+\s*=", page.replace(script.group(1), ""))  # no handlers
