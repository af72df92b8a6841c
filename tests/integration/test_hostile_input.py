"""The attacker's jobs, end to end through a worker on the SES relay: relay-control headers and
address variants change nothing (no mail relayed, no claim in Redis), and say why."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from tests.integration.helpers import (
    cli_runner,
    collect,
    email_job,
    events,
    publish,
    running_worker,
)

pytestmark = pytest.mark.integration


async def test_address_variants_and_relay_headers_change_nothing(
        make_settings, smtp_server, amqp_url, redis_url, monkeypatch, capsys):
    smtp_url, recorder = smtp_server
    run = cli_runner(monkeypatch, amqp_url, redis_url)
    assert await run("suppression", "add", "user@bücher.example", "--channel", "email",
                     "--reason", "hard_bounce", "--actor", "test") == 0
    capsys.readouterr()
    assert await run("suppression", "check", "User@XN--BCHER-KVA.example") == 0
    assert "hard_bounce" in capsys.readouterr().out  # the CLI reads the canonical form too

    punycode = email_job(to="user@xn--bcher-kva.example")
    upper = email_job(to=" USER@BÜCHER.EXAMPLE ")
    nfd = email_job(to="user@bu\u0308cher.example")
    zero_width = email_job(to="us\u200ber@example.com")
    attacks = {name: email_job(headers={name: value, "X-Campaign": "spring"}) for name, value in [
        ("X-SES-CONFIGURATION-SET", "no-events"), ("X-SMTPAPI", '{"filters":{}}'),
        ("Resent-Bcc", "spy@evil.example"), ("Errors-To", "spy@evil.example")]}
    clean = email_job(to="clean@example.com", headers={"X-Campaign": "spring"})
    jobs = [punycode, upper, nfd, zero_width, *attacks.values(), clean]
    async with running_worker(make_settings(smtp_url=smtp_url, smtp_relay="ses")):
        await publish(amqp_url, jobs)
        got = await collect(amqp_url, "outbox.status",
                            lambda m: len({e["id"] for e in events(m)}) >= len(jobs), timeout=20)
        dead = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 5, timeout=10)
    by_id = {e["id"]: e for e in events(got)}

    for job in (punycode, upper, nfd):
        assert (by_id[job["id"]]["status"], by_id[job["id"]]["reason"]) == \
            ("suppressed", "hard_bounce"), job["to"]
    zw = by_id[zero_width["id"]]
    assert (zw["status"], zw["reason"]) == ("rejected", "invalid")
    assert "U+200B (ZERO WIDTH SPACE)" in zw["detail"]
    for name, job in attacks.items():
        event = by_id[job["id"]]
        assert (event["status"], event["reason"]) == ("rejected", "invalid")
        assert f"header {name} is refused" in event["detail"]
    reasons = sorted(m.headers["x-outbox-reason"] for m in dead)
    assert len(reasons) == 5 and all("refused" in r or "U+200B" in r for r in reasons)

    # nothing but the clean job reached the relay, and it carries only what we allow
    assert by_id[clean["id"]]["status"] == "sent"
    assert [rcpts for _, rcpts, _ in recorder.messages] == [["clean@example.com"]]
    data = recorder.messages[0][2]
    assert b"X-Campaign: spring" in data and b"X-SES-MESSAGE-TAGS: " in data  # ours
    for name in attacks:
        assert name.encode().lower() not in data.lower()

    # the rejected jobs were never claimed: a fixed copy may still be sent under the same id
    redis = Redis.from_url(redis_url)
    try:
        for job in (zero_width, *attacks.values()):
            assert not await redis.exists(f"outbox:{{acct:{job['account_id']}}}:job:{job['id']}")
    finally:
        await redis.aclose()
    assert json.loads(dead[0].body)["id"] in {j["id"] for j in (zero_width, *attacks.values())}


async def test_canonicalise_moves_an_old_form_entry_from_the_cli(amqp_url, redis_url,
                                                                  monkeypatch, capsys):
    run = cli_runner(monkeypatch, amqp_url, redis_url)
    redis = Redis.from_url(redis_url)
    try:
        await redis.hset("outbox:supp:email:user@bücher.example", "reason", "complaint")
        assert await run("suppression", "canonicalise") == 0
        header, row = capsys.readouterr().out.splitlines()  # a table (README, "Command line")
        assert header.split() == ["action", "key", "address", "canonical"]
        assert row.split() == ["would", "move", "outbox:supp:email:user@bücher.example",
                               "user@bücher.example", "user@xn--bcher-kva.example"]
        assert await run("suppression", "canonicalise", "--apply", "--json") == 0
        assert json.loads(capsys.readouterr().out)[0]["action"] == "moved"
        assert await run("suppression", "check", "user@bücher.example") == 0
        assert "complaint" in capsys.readouterr().out
    finally:
        await redis.aclose()
