"""Marketing email needs the recipient's consent to that account: refused without it, sent
after `outbox consent grant`, refused again after `outbox consent revoke`."""

from __future__ import annotations

import json

import pytest

from tests.integration.helpers import (
    cli_runner,
    collect,
    email_job,
    events,
    publish,
    running_worker,
)

pytestmark = pytest.mark.integration
ACCOUNT = "acct_consent"
RCPT = "Carol@Example.com"


@pytest.fixture
def cli_env(monkeypatch, amqp_url, redis_url):
    return cli_runner(monkeypatch, amqp_url, redis_url)


async def _one(amqp_url: str, job: dict) -> dict:
    await publish(amqp_url, [job])
    got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=15)
    [event] = events(got)
    assert event["id"] == job["id"]
    return event


async def test_marketing_needs_consent_grant_then_revoke(make_settings, smtp_server, amqp_url,
                                                         cli_env, capsys):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)

    def marketing() -> dict:
        return email_job(account_id=ACCOUNT, category="marketing", to=RCPT)

    assert await cli_env("accounts", "configure", ACCOUNT, "--business-name", "Acme Ltd",
                         "--address", "1 Queen's Road Central, Hong Kong",
                         "--contact-email", "hello@acme.example") == 0
    async with running_worker(settings):
        first = await _one(amqp_url, marketing())
        assert (first["status"], first["reason"]) == ("no_consent", "no_consent")
        assert recorder.messages == []

        assert await cli_env("consent", "grant", ACCOUNT, "carol@example.com", "--channel",
                             "email", "--source", "signup form", "--evidence", "ip 192.0.2.7") == 0
        second = await _one(amqp_url, marketing())
        assert second["status"] == "sent"
        assert len(recorder.by_rcpt(RCPT)) == 1

        assert await cli_env("consent", "revoke", ACCOUNT, RCPT, "--channel", "email",
                             "--source", "phone call") == 0
        third = await _one(amqp_url, marketing())
        assert (third["status"], third["reason"]) == ("no_consent", "revoked")
        assert len(recorder.messages) == 1

        # transactional mail is not marketing: no consent needed
        receipt = await _one(amqp_url, email_job(account_id=ACCOUNT, to=RCPT))
        assert receipt["status"] == "sent"

    capsys.readouterr()
    assert await cli_env("consent", "show", ACCOUNT, RCPT, "--channel", "email", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    # the revoke keeps the grant's evidence beside it
    assert record["status"] == "revoked"
    assert (record["grant_source"], record["grant_evidence"]) == ("signup form", "ip 192.0.2.7")
    assert record["revoke_source"] == "phone call"


async def test_other_account_consent_does_not_count(make_settings, smtp_server, amqp_url,
                                                    cli_env):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    assert await cli_env("accounts", "configure", "acct_other", "--business-name", "Other") == 0
    assert await cli_env("consent", "grant", "acct_other", RCPT, "--channel", "email") == 0
    async with running_worker(settings):
        event = await _one(amqp_url, email_job(account_id=ACCOUNT, category="marketing",
                                               to=RCPT))
    assert event["status"] == "no_consent"
    assert recorder.messages == []
