"""Every job has a record, and ``outbox.dead`` can be read and settled: the real worker rejects
jobs (an SMS to "123", a body that is not JSON), ``outbox jobs show`` finds them with their
reason; ``outbox dead list|show|replay|purge`` run as ``sys.executable -m outbox`` against the
test's vhost and Redis db."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from sender.bus import Bus
from sender.service import make_redis
from sender.topology import DEAD_QUEUE
from suppression import keys
from suppression.gate import Gate
from suppression.store import Audit
from tests.integration.helpers import (
    email_job,
    publish,
    run_outbox,
    running_app,
    running_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
SMS = {"v": 1, "account_id": "acct_demo", "channel": "sms", "category": "notification",
       "topic": "task", "to": "123", "body": "Your task is due", "metadata": {}}
NOT_JSON = b"this is not json {"
TOKEN = "dead-letters-admin-token"


def dead_list(settings: Any, *argv: str) -> list[dict[str, Any]]:
    done = run_outbox(settings, "dead", "list", "--json", *argv)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


async def dead_count(amqp_url: str) -> int:
    bus = Bus(amqp_url, retry_tiers=(1, 2))
    await bus.connect()
    try:
        assert bus.connection is not None
        channel = await bus.connection.channel()
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        count = queue.declaration_result.message_count
        await channel.close()
        return int(count or 0)
    finally:
        await bus.close()


@pytest.fixture
def settings(make_settings, smtp_server):
    smtp_url, _ = smtp_server
    return make_settings(smtp_url=smtp_url, twilio_account_sid="AC" + "0" * 32,
                         twilio_auth_token="t" * 32, twilio_from="+85230000000",
                         twilio_api_base="http://127.0.0.1:9", admin_tokens=TOKEN)


async def api(base: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            base + path, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        return response.status, await response.json()


async def test_rejected_jobs_are_found_by_jobs_show_with_their_reason(settings, amqp_url,
                                                                      unused_tcp_port):
    sms = {**SMS, "id": "bad-sms-1234"}
    await publish(amqp_url, [sms], routing_key="sms")
    await publish(amqp_url, [NOT_JSON], routing_key="email")
    async with running_worker(settings):
        await wait_for_dead(amqp_url, 2)
    shown = run_outbox(settings, "jobs", "show", "acct_demo", "bad-sms-1234", "--json")
    assert shown.returncode == 0, shown.stderr
    story = json.loads(shown.stdout)
    assert story["status"] == "rejected" and story["reason"] == "invalid"
    assert "not a possible phone number" in story["timeline"][-1]["detail"]
    assert "rejected (invalid)" in run_outbox(settings, "jobs", "show", "acct_demo",
                                              "bad-sms-1234").stdout
    unreadable = keys.unreadable_id(NOT_JSON)
    text = run_outbox(settings, "jobs", "show", keys.UNREADABLE_ACCOUNT, unreadable)
    assert text.returncode == 0, text.stderr
    assert "rejected" in text.stdout and "not valid JSON" in text.stdout
    rows = {r["record"]: r for r in dead_list(settings)}
    assert set(rows) == {"acct_demo/bad-sms-1234", f"unreadable/{unreadable}"}
    assert rows["acct_demo/bad-sms-1234"]["lane"] == "sms"
    async with running_app(settings, unused_tcp_port) as base:
        status, body = await api(base, "/admin/jobs/acct_demo/bad-sms-1234")
        assert status == 200 and (body["status"], body["reason"]) == ("rejected", "invalid")
        assert "not a possible phone number" in body["timeline"][-1]["detail"]
        status, body = await api(base, f"/admin/jobs/unreadable/{unreadable}")
        assert status == 200 and body["timeline"][0]["detail"].startswith("not valid JSON")


async def test_a_rejected_id_published_again_correctly_is_sent(settings, amqp_url, smtp_server):
    """The rejection is a timeline entry, not the job's status: the fixed job goes out."""
    _, recorder = smtp_server
    bad = email_job(id="fix-me-1", account_id="acct_demo", to="not an address")
    await publish(amqp_url, [bad])
    async with running_worker(settings):
        await wait_for_dead(amqp_url, 1)
        await publish(amqp_url, [{**bad, "to": "fixed@example.com"}])
        await wait_for(lambda: len(recorder.messages) == 1)
    story = json.loads(run_outbox(settings, "jobs", "show", "acct_demo", "fix-me-1",
                                  "--json").stdout)
    assert [e["status"] for e in story["timeline"]] == ["rejected", "sent"]
    assert story["status"] == "sent"


async def wait_for_dead(amqp_url: str, n: int) -> None:
    for _ in range(600):
        if await dead_count(amqp_url) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} dead letters")


async def test_dead_list_show_replay_purge(settings, amqp_url, smtp_server):
    _, recorder = smtp_server
    # dead letters of three kinds: invalid jobs of two accounts, and a valid job dead-lettered
    # as RabbitMQ would after its delivery limit (to be replayed once the cause is fixed)
    invalid_a = [email_job(id=f"inv-a-{i}", account_id="acct_a", to="nobody") for i in range(3)]
    invalid_b = email_job(id="inv-b-0", account_id="acct_b", subject=None)
    good = email_job(id="replay-me-1", account_id="acct_b", to="back@example.com")
    await publish(amqp_url, [*invalid_a, invalid_b])
    bus = Bus(amqp_url, retry_tiers=(1, 2))
    await bus.connect()
    await bus.publish("outbox.dead", "email.bulk", json.dumps(good).encode(),
                      message_id="orig-msg-1", headers={
                          "x-first-death-reason": "delivery_limit",
                          "x-first-death-queue": "outbox.email.bulk",
                          "x-death": [{"queue": "outbox.email.bulk", "reason": "delivery_limit",
                                       "exchange": "outbox.jobs", "routing-keys": ["email.bulk"],
                                       "count": 1}]})
    await bus.close()
    # its record says failed (as after a third unexpected error): replayed, it must still go
    redis = make_redis(settings)
    try:
        gate = Gate(redis, idempotency_ttl=3600)
        await gate.pre_send("acct_b", "replay-me-1", owner="w", redelivered=False,
                            expired=False, attempt=1, address="back@example.com")
        await gate.post_send("acct_b", "replay-me-1", status="failed", attempt=1,
                             reason="error")
    finally:
        await redis.aclose()
    async with running_worker(settings):
        await wait_for_dead(amqp_url, 5)

        everything = dead_list(settings)
        assert len(everything) == 5 and await dead_count(amqp_url) == 5  # nothing lost
        for _ in range(3):  # reading again and again loses nothing and keeps the order
            assert dead_list(settings) == everything
        assert everything[0]["id"] == "orig-msg-1"  # dead-lettered before the worker ran
        assert {r["account_id"] for r in dead_list(settings, "--account", "acct_a")} == {
            "acct_a"}
        assert len(dead_list(settings, "--account", "acct_a")) == 3
        assert [r["job_id"] for r in dead_list(settings, "--reason", "DELIVERY_LIMIT")] == [
            "replay-me-1"]
        assert [r["job_id"] for r in dead_list(settings, "--reason", "subject")] == ["inv-b-0"]
        assert len(dead_list(settings, "--since", "1h")) == 5
        assert dead_list(settings, "--since", "2999-01-01T00:00:00Z") == []
        assert run_outbox(settings, "dead", "list", "--since", "yesterday").returncode == 2

        shown = run_outbox(settings, "dead", "show", everything[1]["id"], "--json")
        assert shown.returncode == 0, shown.stderr
        one = json.loads(shown.stdout)
        assert json.loads(one["body"])["id"] == everything[1]["job_id"]
        assert one["headers"]["x-outbox-routing-key"] == "email"
        assert "nobody" in one["reason"] or "to:" in one["reason"]
        assert "header x-outbox-reason" in run_outbox(settings, "dead", "show",
                                                      everything[1]["id"]).stdout
        assert run_outbox(settings, "dead", "show", "dead-nosuch").returncode == 1
        assert await dead_count(amqp_url) == 5

        # replay: reason and actor required; back to its lane once, the worker sends it
        assert run_outbox(settings, "dead", "replay", "orig-msg-1",
                          "--actor", "ops").returncode == 2
        replayed = run_outbox(settings, "dead", "replay", "orig-msg-1", "--reason", "bug fixed",
                              "--actor", "ops@crm", "--json")
        assert replayed.returncode == 0, replayed.stderr
        [row] = json.loads(replayed.stdout)
        assert row["lane"] == "email.bulk" and row["job_id"] == "replay-me-1"
        await wait_for(lambda: len(recorder.by_rcpt("back@example.com")) == 1)
        assert await dead_count(amqp_url) == 4
        again = run_outbox(settings, "dead", "replay", "orig-msg-1", "--reason", "x",
                           "--actor", "ops")
        assert again.returncode == 1 and "not in outbox.dead" in again.stderr
        story = json.loads(run_outbox(settings, "jobs", "show", "acct_b", "replay-me-1",
                                      "--json").stdout)
        assert story["status"] == "sent"
        assert [e["status"] for e in story["timeline"]] == ["failed", "replayed", "sent"]
        assert story["timeline"][1]["detail"] == "ops@crm: bug fixed (was failed)"

        # purge exactly the selected: two of acct_a's three, by id
        of_a = dead_list(settings, "--account", "acct_a")
        ids = [r["id"] for r in of_a][:2]
        assert run_outbox(settings, "dead", "purge", *ids, "--actor", "ops").returncode == 2
        assert run_outbox(settings, "dead", "purge", "--reason", "x", "--actor",
                          "ops").returncode == 2  # nothing selected: refused
        purged = run_outbox(settings, "dead", "purge", *ids, "--reason", "junk from a test",
                            "--actor", "ops@crm", "--json")
        assert purged.returncode == 0, purged.stderr
        assert sorted(r["id"] for r in json.loads(purged.stdout)) == sorted(ids)
        left = dead_list(settings)
        assert len(left) == 2 and not set(ids) & {r["id"] for r in left}
        assert {r["job_id"] for r in left} == {of_a[2]["job_id"], "inv-b-0"}
        assert await dead_count(amqp_url) == 2
        await asyncio.sleep(1)
        assert len(recorder.by_rcpt("back@example.com")) == 1  # replayed once, sent once

    redis = make_redis(settings)
    try:
        b_audit = await Audit(redis).read("acct_b")
        a_audit = await Audit(redis).read("acct_a")
    finally:
        await redis.aclose()
    [replay_audit] = [r for r in b_audit if r["action"] == "dead.replay"]
    assert replay_audit["actor"] == "ops@crm" and replay_audit["reason"] == "bug fixed"
    assert replay_audit["message"] == "orig-msg-1" and replay_audit["lane"] == "email.bulk"
    purges = [r for r in a_audit if r["action"] == "dead.purge"]
    assert sorted(r["message"] for r in purges) == sorted(ids)
    assert {r["reason"] for r in purges} == {"junk from a test"}


async def test_reading_over_and_over_never_wears_a_dead_letter_out(settings, amqp_url):
    """Each read returns the messages (a quorum queue counts every return); one returned
    RECOPY_AT times is given back as a copy with the same id, time and headers, so RabbitMQ
    4.0-4.2's default delivery limit of 20 never drops it."""
    from sender.deadletters import RECOPY_AT

    bus = Bus(amqp_url, retry_tiers=(1, 2))
    await bus.connect()
    for i in range(3):
        await bus.publish_dead(json.dumps(email_job(id=f"worn-{i}")).encode(), f"reason {i}",
                               "email", headers={"x-outbox-routing-key": "email"})
    await bus.close()
    first = dead_list(settings)
    for _ in range(RECOPY_AT + 12):  # past the count at which 4.0-4.2 would drop them
        assert dead_list(settings) == first
    assert await dead_count(amqp_url) == 3
    assert [r["job_id"] for r in first] == ["worn-0", "worn-1", "worn-2"]
    bus = Bus(amqp_url, retry_tiers=(1, 2))
    await bus.connect()
    try:
        assert bus.connection is not None
        channel = await bus.connection.channel()
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        counts = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            counts.append(int(message.headers.get("x-delivery-count") or 0))
        await channel.close()  # returned: this read is the test's own
    finally:
        await bus.close()
    assert len(counts) == 3 and max(counts) <= RECOPY_AT


async def post(base: str, path: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            base + path, data=json.dumps(body),
            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        return response.status, await response.json()


async def test_the_admin_api_lists_shows_replays_and_purges(settings, amqp_url, smtp_server,
                                                            unused_tcp_port):
    _, recorder = smtp_server
    bus = Bus(amqp_url, retry_tiers=(1, 2))
    await bus.connect()
    jobs = [email_job(id=f"api-{i}", account_id="acct_api", to=f"api{i}@example.com")
            for i in range(3)]
    for job in jobs:
        await bus.publish_dead(json.dumps(job).encode(), "unexpected error on delivery 3: X",
                               "email", headers={"x-outbox-routing-key": "email"})
    await bus.close()
    async with running_worker(settings), running_app(settings, unused_tcp_port) as base:
        status, rows = await api(base, "/admin/dead?account=acct_api&since=1h")
        assert status == 200 and [r["job_id"] for r in rows] == ["api-0", "api-1", "api-2"]
        status, [one] = await api(base, f"/admin/dead?id={rows[0]['id']}")
        assert status == 200 and json.loads(one["body"])["id"] == "api-0"
        assert (await api(base, "/admin/dead?account=a%7Db"))[0] == 400
        assert (await post(base, "/admin/dead/replay", {"ids": [rows[0]["id"]]}))[0] == 400
        status, done = await post(base, "/admin/dead/replay",
                                  {"ids": [rows[0]["id"]], "reason": "fixed"})
        assert status == 200 and [d["job_id"] for d in done] == ["api-0"]
        await wait_for(lambda: len(recorder.by_rcpt("api0@example.com")) == 1)
        status, done = await post(base, "/admin/dead/purge",
                                  {"ids": [rows[1]["id"]], "reason": "not wanted"})
        assert status == 200 and [d["job_id"] for d in done] == ["api-1"]
        status, _ = await post(base, "/admin/dead/purge",
                               {"ids": [rows[1]["id"]], "reason": "again"})
        assert status == 404
        status, rows = await api(base, "/admin/dead")
        assert [r["job_id"] for r in rows] == ["api-2"]
    assert await dead_count(amqp_url) == 1
    redis = make_redis(settings)
    try:
        audit = await Audit(redis).read("acct_api")
    finally:
        await redis.aclose()
    assert [(r["action"], r["reason"]) for r in audit if r["action"].startswith("dead.")] == [
        ("dead.purge", "not wanted"), ("dead.replay", "fixed")]
