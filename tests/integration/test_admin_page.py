"""The support page in a real browser: Debian's ``chromium`` driven by Playwright against the
real webhook server, real Redis and RabbitMQ (and the worker for a recipient's history).

Support finds a blocked account in the list, sees why (the transition's reason and detail,
the bounces and their evidence), unblocks it with a reason; looks a recipient up, sees its
suppression entry with its evidence and removes it with a reason; reads a recipient's recent
jobs and a job's timeline. Every change is checked in Redis too. Markup injected through the
API stays text. No skip: without /usr/bin/chromium these tests fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from config.reputation import Policy
from sender.service import make_redis
from suppression import keys
from suppression.gate import Counts, Gate
from suppression.store import AccountStore, ConsentStore, SuppressionStore
from tests.integration.helpers import collect, email_job, publish, running_app, running_worker

pytestmark = pytest.mark.integration
TOKEN = "page-token-for-tests"  # alice's: support
VIEWER_TOKEN = "page-viewer-token-for-tests"  # vera's: viewer
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = "<img src=x onerror=alert(1)><script>alert('x')</script>"
SHOT = Path(__file__).resolve().parents[2] / "var" / "admin-page.png"
VIEWER_SHOT = SHOT.with_name("admin-page-viewer.png")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is required (apt-get install chromium)"
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def site(make_settings: Any, unused_tcp_port_factory: Any) -> AsyncIterator[str]:
    tokens = f"alice:support:{TOKEN},vera:viewer:{VIEWER_TOKEN}"
    async with running_app(make_settings(admin_tokens=tokens), unused_tcp_port_factory()) as base:
        yield base


@pytest.fixture
async def redis(make_settings: Any) -> AsyncIterator[Any]:
    client = make_redis(make_settings())
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def opened(browser: Browser, site: str, token: str = TOKEN) -> AsyncIterator[Page]:
    """The page with the token entered (its holder's name and role shown); fails the test on
    any dialog or script error (an injected ``alert`` would be one)."""
    page = await browser.new_page()
    problems: list[str] = []
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    await page.goto(site + "/admin/")
    # before the first action: a hint beside the token field, no error banner
    await expect(page.locator("#token-hint")).to_be_visible()
    await expect(page.locator("#token-hint")).to_contain_text("token")
    await expect(page.locator("#message")).to_have_text("")
    assert await page.get_attribute("#message", "class") != "error"
    await page.fill("#token", token)
    await page.press("#token", "Enter")
    await expect(page.locator("#whoami")).to_have_text(
        "alice (support)" if token == TOKEN else "vera (viewer)")
    try:
        yield page
    finally:
        await page.close()
    assert not problems, problems


async def block(redis: Any, account: str, *, bounces: int = 10) -> None:
    """Block ``account`` the way production does: hard bounces through Gate.post_send (the
    real script), each suppressing its address with the job as evidence."""
    store = AccountStore(redis, Policy())
    await store.configure(account, actor="setup", min_bounce_volume=5, early_bounce_volume=5)
    gate = Gate(redis, idempotency_ttl=3600)
    for i in range(bounces):
        await gate.post_send(account, f"j{i}", status="bounced", attempt=1,
                             reason="smtp; 550 5.1.1 user unknown", counts=Counts(sends=1, hard=1),
                             address=f"gone{i}@example.com")
    assert (await store.show(account))["state"] == "blocked"


def cells(page: Page, table: str) -> Any:
    return page.locator(f"#{table} tr")


async def test_support_finds_a_blocked_account_sees_why_and_unblocks_it(browser, site, redis,
                                                                        amqp_url):
    await block(redis, "acct_dirty")
    store = AccountStore(redis, Policy())
    await store.configure("acct_a_fine", actor="setup", rate=10)
    async with opened(browser, site) as page:
        # the list: every account, with its state and its rates against the thresholds
        accounts = page.locator("#accounts")
        await expect(accounts).to_contain_text("acct_a_fine")
        # the ones that need support come first
        await expect(cells(page, "accounts").nth(1)).to_contain_text("acct_dirty")
        await page.select_option("#state-filter", "blocked")
        await page.click("#accounts-form button")
        await expect(accounts).not_to_contain_text("acct_a_fine")
        dirty = page.locator("#accounts tr", has_text="acct_dirty")
        await expect(dirty).to_contain_text("blocked")
        await expect(dirty).to_contain_text("100.00 % (10/10")  # bounce rate, count, sends
        await expect(dirty.locator(".level-2")).to_have_count(1)  # over the block threshold

        # the account: why, the bounces and their evidence, only the action that applies
        await dirty.locator("a").click()
        await expect(page.locator("#state")).to_have_text("blocked")
        await expect(page.locator("#why")).to_contain_text("auto by system")
        await expect(page.locator("#why")).to_contain_text(
            "hard_bounce_rate — email: 5 sends, 5 hard bounces")
        await expect(page.locator("#actions button")).to_have_text(["Unblock 解除封鎖"])
        await expect(cells(page, "bounces")).to_have_count(11)  # header and 10 bounces
        await expect(page.locator("#bounces")).to_contain_text("550 5.1.1 user unknown")
        evidence = page.locator("#account-entries tr", has_text="gone3@example.com")
        await expect(evidence).to_contain_text("hard_bounce")
        await expect(evidence).to_contain_text("job:j3")
        await expect(evidence).to_contain_text("550 5.1.1 user unknown")
        await expect(cells(page, "account-entries")).to_have_count(11)

        # no reason: the browser refuses the form, nothing changes
        await page.click("#actions button")
        assert await page.locator("#reason").evaluate("e => !e.validity.valid")
        assert (await store.show("acct_dirty"))["state"] == "blocked"

        # the change is made in the token's name (alice), not in a name typed in the page
        await page.fill("#reason", "list cleaned, ticket 4711")
        await page.click("#actions button")
        await expect(page.locator("#message")).to_have_text("acct_dirty: blocked → active")
        await expect(page.locator("#state")).to_have_text("active")
        await expect(page.locator("#actions button")).to_have_text(["Suspend 暫停"])
        newest = cells(page, "audit").nth(1)
        for text in ("unblock", "blocked → active", "alice", "list cleaned, ticket 4711"):
            await expect(newest).to_contain_text(text)
        SHOT.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(SHOT), full_page=True)
        # the Chinese labels render: a CJK font the browser finds (fonts-noto-cjk, Makefile
        # DEBS), not boxes; the screenshot is looked at by whoever changes the page
        assert SHOT.stat().st_size > 0
        fc_list = await asyncio.create_subprocess_exec(
            "fc-list", ":lang=zh-tw", "family", stdout=asyncio.subprocess.PIPE)
        found = (await fc_list.communicate())[0].decode()
        assert "Noto Sans CJK" in found or "Noto Serif CJK" in found, found

    shown = await store.show("acct_dirty")
    assert shown["state"] == "active" and shown["probation_until"]
    [record] = await store.audit.read("acct_dirty", limit=1)
    assert (record["action"], record["from"], record["to"], record["actor"],
            record["reason"]) == ("unblock", "blocked", "active", "alice",
                                  "list cleaned, ticket 4711")
    got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2, timeout=3)
    assert [m.routing_key for m in got] == ["account.active"]  # announced once


async def test_support_removes_a_suppression_entry_with_a_reason(browser, site, redis):
    await block(redis, "acct_dirty", bounces=6)
    consent = ConsentStore(redis)
    await consent.grant("acct_dirty", "gone2@example.com", channel="email",
                        source="signup form", evidence="form 1234", actor="crm")
    async with opened(browser, site) as page:
        await page.fill("#recipient", "Gone2@Example.com")
        await page.fill("#recipient-account", "acct_dirty")
        await page.click("#recipient-form button")
        entry = page.locator("#entries tr", has_text="hard_bounce")
        for text in ("global", "job:j2", "550 5.1.1 user unknown", "system", "acct_dirty"):
            await expect(entry).to_contain_text(text)
        await expect(page.locator("#consent")).to_contain_text("form 1234")
        await expect(page.locator("#consent")).to_contain_text("granted")

        # no reason: refused by the browser, the entry stays
        await entry.locator("button").click()
        assert await entry.locator("input").evaluate("e => !e.validity.valid")
        assert await redis.exists(keys.global_suppression("email", "gone2@example.com"))

        await entry.locator("input").fill("mailbox exists again, ticket 99")
        await entry.locator("button").click()
        await expect(page.locator("#message")).to_contain_text("Removed")
        await expect(page.locator("#entries")).to_contain_text("No entries")
        await expect(page.locator("#suppressed")).to_have_text("Not suppressed 未抑制")

    assert not await redis.exists(keys.global_suppression("email", "gone2@example.com"))
    assert await redis.exists(keys.global_suppression("email", "gone3@example.com"))
    assert await SuppressionStore(redis).check("gone2@example.com", account_id="acct_dirty") \
        == []
    [record] = await SuppressionStore(redis).audit.read(None, limit=1)
    assert (record["action"], record["address"], record["actor"], record["reason"],
            record["removed"]) == ("suppression.remove", "gone2@example.com", "alice",
                                   "mailbox exists again, ticket 99", "hard_bounce")


async def test_support_reads_a_recipients_history_and_a_jobs_timeline(
        browser, site, redis, make_settings, smtp_server, amqp_url):
    """Against ``GET /admin/history/ADDRESS?account=ID`` (``[{account_id, job_id, channel,
    status, at}]``) and ``GET /admin/jobs/ACCOUNT/ID`` (the timeline: ``[{status, at, reason,
    detail, provider, provider_message_id, attempt}]``)."""
    smtp_url, _ = smtp_server
    job = email_job(account_id="acct_h", to="carol@example.com")
    await publish(amqp_url, [job])
    async with running_worker(make_settings(smtp_url=smtp_url)):
        await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=20)
    async with opened(browser, site) as page:
        await page.fill("#recipient", "carol@example.com")
        await page.fill("#recipient-account", "acct_h")
        await page.click("#recipient-form button")
        # a selector, not a wait_for_function string: the page's CSP forbids eval, which
        # Playwright needs to poll a string predicate that is not true at once
        await page.wait_for_selector("#history tr, #history-note:not(:empty)")
        assert await page.text_content("#history-note") == ""  # the API answered
        listed = page.locator("#history tr", has_text=job["id"])
        await expect(listed).to_contain_text("sent")
        await expect(listed).to_contain_text("acct_h")
        # the When column: every row's first cell a time (the API's first_seen)
        cells = await page.locator("#history tr td:first-child").all_text_contents()
        assert cells and all(cells), cells
        for cell in cells:
            datetime.fromisoformat(cell.replace("Z", "+00:00"))
        await listed.get_by_role("link", name=job["id"]).click()
        await expect(page.locator("#job-title")).to_contain_text(job["id"])
        sent = page.locator("#timeline tr", has_text="sent")
        await expect(sent).to_contain_text("smtp")
        await expect(sent).to_contain_text(
            re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"))
        await expect(page.locator("#job-fields tr", has_text="channel")).to_contain_text("email")
        await expect(page.locator("#job-fields tr", has_text="recipient")).to_contain_text(
            "carol@example.com")
        await _assert_attempt_agrees(page)
        # lookup by job id: the form leads to the same job view
        await page.goto(site + "/admin/#/accounts")
        await page.fill("#job-account", "acct_h")
        await page.fill("#job-id", job["id"])
        await page.click("#job-form button")
        await expect(page.locator("#job-title")).to_have_text(job["id"] + " · acct_h")
        await expect(page.locator("#timeline tr", has_text="sent")).to_contain_text("smtp")
        await _assert_attempt_agrees(page)
        assert await page.text_content("#message") == ""


async def _assert_attempt_agrees(page: Page) -> None:
    """The job view's attempt is its timeline's last entry's (the Attempt column, last)."""
    field = page.locator("#job-fields tr", has_text="attempt").locator("td").nth(1)
    last = page.locator("#timeline tr").last.locator("td").last
    shown, listed = (await field.text_content(), await last.text_content())
    assert shown and shown == listed, (shown, listed)


async def test_markup_from_the_api_stays_text(browser, site, redis):
    """Reasons, actors, sources and sender information with markup: shown as text, no script
    runs (``opened`` fails on any dialog), no element is made from them. (Ids cannot hold
    markup: suppression/ids.py refuses them everywhere, test_account_ids.py.)"""
    store = AccountStore(redis, Policy())
    account = "acct_x"
    await store.configure(account, actor=EVIL, business_name=EVIL)
    await store.support(account, "suspend", actor=EVIL, reason=EVIL)
    await SuppressionStore(redis).add("victim@example.com", channel="email", reason="manual",
                                      account_id=account, source=EVIL, actor=EVIL)
    async with opened(browser, site) as page:
        await page.get_by_role("link", name=account).click()
        await expect(page.locator("#why")).to_contain_text(EVIL)
        await expect(page.locator("#audit")).to_contain_text(EVIL)
        await expect(page.locator("#account-entries")).to_contain_text(EVIL)
        await page.get_by_role("link", name="victim@example.com").click()
        await expect(page.locator("#entries")).to_contain_text(EVIL)
        assert await page.locator("img, b, section script").count() == 0


async def test_history_and_timeline_render_the_contracts_shapes(browser, site, redis):
    """The page against the job's story contract alone (the two answers stubbed in the
    browser, with markup in every text field): the real server's answers are tested above."""
    await AccountStore(redis, Policy()).configure("acct_h", actor="t", rate=5)  # a known one
    history = [{"account_id": "acct_h", "job_id": "job-1", "channel": "email",
                "status": "bounced", "at": 1767225600}]
    timeline = [{"status": "queued", "at": "2026-01-01T00:00:00.000Z", "reason": None,
                 "detail": None, "provider": None, "provider_message_id": None, "attempt": 0},
                {"status": "bounced", "at": 1767225601, "reason": "userunknown",
                 "detail": EVIL, "provider": "smtp", "provider_message_id": "Q<9>",
                 "attempt": 1}]
    answers = {"/admin/history/": history, "/admin/jobs/": timeline}

    async def stub(route: Any) -> None:
        path = route.request.url.split("/", 3)[3]
        [body] = [v for k, v in answers.items() if ("/" + path).startswith(k)]
        assert route.request.headers["authorization"] == f"Bearer {TOKEN}"
        await route.fulfill(status=200, content_type="application/json", json=body)

    async with opened(browser, site) as page:
        await page.route(re.compile(r".*/admin/(history|jobs)/.*"), stub)
        # a link to the view (same document: the token stays in its field)
        await page.goto(site + "/admin/#/recipient/carol%40example.com?account=acct_h")
        listed = page.locator("#history tr", has_text="job-1")
        for text in ("2026-01-01T00:00:00Z", "acct_h", "email", "bounced"):
            await expect(listed).to_contain_text(text)
        await listed.get_by_role("link", name="job-1").click()
        await expect(page.locator("#job-title")).to_have_text("job-1 · acct_h")
        rows = page.locator("#timeline tr")
        await expect(rows).to_have_count(3)
        await expect(rows.nth(1)).to_contain_text("2026-01-01T00:00:00Z")
        for text in ("2026-01-01T00:00:01Z", "userunknown", EVIL, "smtp", "Q<9>", "1"):
            await expect(rows.nth(2)).to_contain_text(text)
        assert await page.locator("i, img").count() == 0


async def test_a_viewer_sees_no_write_buttons_and_its_reads_are_audited(browser, site, redis):
    """A viewer token: a blocked account without its Unblock button, a suppression entry
    without its Remove form; what it looked up is in the audit under the token's name."""
    await block(redis, "acct_dirty", bounces=6)
    async with opened(browser, site, VIEWER_TOKEN) as page:
        await page.get_by_role("link", name="acct_dirty").click()
        await expect(page.locator("#state")).to_have_text("blocked")
        await expect(cells(page, "bounces")).to_have_count(7)  # everything else is shown
        assert await page.locator("#act").is_hidden()
        assert await page.locator("#view-account button").count() == 0
        assert await page.locator("#view-account input:visible").count() == 0  # no reason
        await page.screenshot(path=str(VIEWER_SHOT), full_page=True)

        await page.fill("#recipient", "gone2@example.com")
        await page.fill("#recipient-account", "acct_dirty")
        await page.click("#recipient-form button")
        entry = page.locator("#entries tr", has_text="hard_bounce")
        await expect(entry).to_contain_text("job:j2")
        await expect(page.locator("#entries")).not_to_contain_text("Remove")
        assert await page.locator("#view-recipient button, #view-recipient input").count() == 0
        await expect(page.locator("#history")).to_contain_text("No recent jobs")
        await page.screenshot(path=str(VIEWER_SHOT.with_stem(VIEWER_SHOT.stem + "-recipient")),
                              full_page=True)

    reads = [r for r in await AccountStore(redis, Policy()).audit.read("acct_dirty", limit=20)
             if r["action"] == "read"]
    assert {(r["actor"], r["role"], r["what"], r["address"]) for r in reads} == {
        ("vera", "viewer", what, "gone2@example.com")
        for what in ("suppression.check", "consent.show", "history")}
    assert (await AccountStore(redis, Policy()).show("acct_dirty"))["state"] == "blocked"


async def test_the_page_refuses_a_malformed_id_before_calling_the_api(browser, site):
    """The id rule of suppression/ids.py is in the page's script: a link or a form with
    ``a}:x``, ``acct*`` or a line break says what an id must be and calls nothing."""
    async with opened(browser, site) as page:
        calls: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if "/admin/" in r.url and
                r.url.split("#")[0].rstrip("/") != site + "/admin" else None)
        for view in ("#/account/a%7D%3Ax", "#/job/acct%2A/job-1", "#/job/acct/job%0A1",
                     "#/recipient/ana%40example.com?account=acct%2A"):
            await page.goto(site + "/admin/" + view)
            await expect(page.locator("#message")).to_contain_text(
                "must be 1-128 characters of A-Z a-z 0-9 . _ -")
            assert calls == [], view  # refused in the page (the API would say it too)
        await page.goto(site + "/admin/#/accounts")
        await expect(page.locator("#message")).to_have_text("")
        calls.clear()
        await page.fill("#recipient", "ana@example.com")
        await page.fill("#recipient-account", "a}:x")
        await page.press("#recipient", "Enter")
        await expect(page.locator("#message")).to_contain_text("account must be 1-128")
        assert calls == []


async def test_the_account_view_lists_its_sending_domains_and_the_bulk_sender_rules(
        browser, site, redis, make_settings):
    import time

    from suppression.domains import DomainStore

    store = DomainStore.from_settings(redis, make_settings())
    await AccountStore(redis, Policy()).configure("acct_mail", actor="setup", rate=10)
    for name, dmarc in (("good.example", "reject"), ("nodmarc.example", None)):
        await store.add("acct_mail", name)
        record = await store.get("acct_mail", name)
        await store.record_verification("acct_mail", name, {
            "at": int(time.time()), "dkim": [{"selector": record["keys"][0]["selector"],
                                              "found": "match"}],
            "spf": {"found": "missing"}, "return_path": {"found": "not_configured"},
            "dmarc": {"policy": dmarc}})
    await store.add("acct_mail", "new.example")
    async with opened(browser, site) as page:
        await page.goto(site + "/admin/#/account/acct_mail")
        good = page.locator("#domains tr", has_text="good.example")
        await expect(good).to_contain_text("yes 是 · 20")  # verified, with its time
        await expect(good).to_contain_text("met 符合")
        nodmarc = page.locator("#domains tr", has_text="nodmarc.example")
        await expect(nodmarc).to_contain_text("not met 不符合: a DMARC record")
        fresh = page.locator("#domains tr", has_text="new.example")
        await expect(fresh).to_contain_text("no 否")
        await expect(fresh).to_contain_text("not verified yet")


async def test_the_job_view_and_its_timeline_show_the_same_attempt(browser, site, redis):
    """A story whose record's attempt (2, a retry under way) is not its last entry's (a late
    report of attempt 1, held as ``ea``): the job view shows the timeline's, so the two agree;
    reached by the Find job form, with no error banner."""
    story = {"account_id": "acct_h", "id": "job-2", "status": "deferred", "attempt": 2,
             "updated": "2026-01-01T00:00:01.000Z",
             "timeline": [{"status": "deferred", "at": "2026-01-01T00:00:00.000Z",
                           "reason": "4.2.0", "detail": None, "provider": "smtp",
                           "provider_message_id": None, "attempt": 0},
                          {"status": "deferred", "at": "2026-01-01T00:00:01.000Z",
                           "reason": "4.2.0", "detail": None, "provider": "smtp",
                           "provider_message_id": None, "attempt": 1}]}

    async def stub(route: Any) -> None:
        await route.fulfill(status=200, content_type="application/json", json=story)

    async with opened(browser, site) as page:
        await page.route(re.compile(r".*/admin/jobs/.*"), stub)
        await page.fill("#job-account", "acct_h")
        await page.fill("#job-id", "job-2")
        await page.press("#job-id", "Enter")
        await expect(page.locator("#job-title")).to_have_text("job-2 · acct_h")
        await expect(page.locator("#timeline tr")).to_have_count(3)
        await _assert_attempt_agrees(page)
        assert await page.text_content("#message") == ""


HELD_SHOT = SHOT.with_name("admin-page-held.png")


async def test_support_sees_held_jobs_sends_the_receipts_and_drops_the_blast(
        browser, site, redis, make_settings, smtp_server, amqp_url):
    """Jobs of a blocked account are held: counted in the list, by channel and category with
    the oldest in the account view; the unblock must say what becomes of them (the browser
    refuses it without); receipts released with it (sent once), the blast discarded after
    with a reason (its final event)."""
    smtp_url, recorder = smtp_server
    await block(redis, "acct_dirty", bounces=6)
    await ConsentStore(redis).set("acct_dirty", "blast@example.com", channel="email",
                                  granted=True, source="form", evidence="", actor="setup")
    receipts = [email_job(account_id="acct_dirty", to=f"r{i}@example.com") for i in range(2)]
    blast = email_job(account_id="acct_dirty", to="blast@example.com", category="marketing")
    async with running_worker(make_settings(smtp_url=smtp_url)):
        await publish(amqp_url, [*receipts, blast])
        held = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 3, timeout=20)
        assert {json.loads(m.body)["status"] for m in held} == {"held"}
        async with opened(browser, site) as page:
            dirty = page.locator("#accounts tr", has_text="acct_dirty")
            await expect(dirty).to_contain_text("3 · oldest 最早 20")
            await dirty.locator("a").click()
            await expect(page.locator("#held-note")).to_contain_text("3 jobs held")
            await expect(page.locator("#held tr", has_text="transactional").locator("td")
                         ).to_have_text(["email", "transactional 交易", "2",
                                         re.compile(r"^\d{4}-\d\d-\d\dT")])
            await expect(page.locator("#held tr", has_text="marketing").locator("td")
                         ).to_have_text(["email", "marketing 推廣", "1", re.compile(r"^\d{4}-")])
            await expect(page.locator("#held-note a")).to_have_count(3)  # the ids, as links
            # an unblock that does not say what becomes of them is refused by the browser
            await page.fill("#reason", "list cleaned, ticket 4711")
            await page.click("#actions button")
            assert await page.locator("#held-action").evaluate("e => !e.validity.valid")
            assert (await AccountStore(redis, Policy()).show("acct_dirty"))["state"] == \
                "blocked"
            await page.screenshot(path=str(HELD_SHOT), full_page=True)
            # the receipts go with the unblock, the blast stays held
            await page.select_option("#held-action", "release")
            await page.select_option("#act-category", "transactional")
            await page.click("#actions button")
            await expect(page.locator("#message")).to_have_text(
                "acct_dirty: blocked → active · held jobs released 已放行 2 (transactional), "
                "still held 仍暫存 1")
            await expect(page.locator("#held tr")).to_have_count(2)  # header and marketing
            sent = await collect(amqp_url, "outbox.status",
                                 lambda m: sum(json.loads(x.body)["status"] == "sent"
                                               for x in m) >= 2, timeout=20)
            assert sorted(json.loads(m.body)["id"] for m in sent
                          if json.loads(m.body)["status"] == "sent") == sorted(
                j["id"] for j in receipts)
            # then the blast is dropped, with a reason
            await expect(page.locator("#held-act")).to_be_visible()
            await page.fill("#held-reason", "stale offer")
            await page.click("#held-act button[value=discard]")
            await expect(page.locator("#message")).to_have_text(
                "acct_dirty · held jobs discarded 已棄置 1, still held 仍暫存 0")
            await expect(page.locator("#held-note")).to_have_text("No held jobs 沒有暫存工作")
            await expect(page.locator("#held-act")).to_be_hidden()
            dropped = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1,
                                    timeout=10)
    [event] = [json.loads(m.body) for m in dropped]
    assert (event["id"], event["status"], event["reason"], event["detail"]) == (
        blast["id"], "blocked", "held_discarded", "alice: stale offer")
    assert sorted(r[1][0] for r in recorder.messages) == ["r0@example.com", "r1@example.com"]
    records = await AccountStore(redis, Policy()).audit.read("acct_dirty", limit=3)
    assert [(r["action"], r["actor"], r["reason"]) for r in records] == [
        ("held.discard", "alice", "stale offer"),
        ("held.release", "alice", "list cleaned, ticket 4711"),
        ("unblock", "alice", "list cleaned, ticket 4711")]
