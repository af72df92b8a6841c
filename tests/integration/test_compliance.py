"""Marketing email carries the RFC 8058 one-click pair and the bilingual UEMO footer; the
one-click POST unsubscribes at once; transactional mail carries none of it; marketing from an
account without sender information is rejected, saying why."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.policy import default

import aiohttp
import pytest

from tests.integration.helpers import (
    collect,
    email_job,
    events,
    publish,
    recipient_events,
    running_app,
    running_worker,
)

pytestmark = pytest.mark.integration
ACCOUNT = "acct_shop"



async def _configure(cli) -> None:
    assert await cli("accounts", "configure", ACCOUNT, "--business-name", "Acme Trading Ltd",
                     "--address", "1 Queen's Road Central, Hong Kong",
                     "--contact-email", "hello@acme.example",
                     "--contact-phone", "+852 2123 4567") == 0
    assert await cli("consent", "grant", ACCOUNT, "amy@example.com", "--channel", "email",
                     "--source", "checkout") == 0


def _text_and_html(msg) -> tuple[str, str]:
    return (msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content())


async def test_marketing_mail_has_one_click_unsubscribe_and_bilingual_footer(
        make_settings, smtp_server, amqp_url, cli, unused_tcp_port):
    smtp_url, recorder = smtp_server
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings = make_settings(smtp_url=smtp_url, public_url=public,
                             message_id_domain="mail.outbox.example")
    await _configure(cli)
    offer = email_job(account_id=ACCOUNT, category="marketing", to="amy@example.com")
    receipt = email_job(account_id=ACCOUNT, to="amy@example.com")
    async with running_worker(settings):
        await publish(amqp_url, [offer, receipt])
        got = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2))
        assert {e["status"] for e in got} == {"sent"}
        # told apart by the job id in their Message-ID: the receipt (priority lane) may
        # well reach the relay before the offer (bulk lane)
        received = {str(m["Message-ID"]).strip("<>").partition("@")[0]: m for m in (
            message_from_bytes(d, policy=default) for d in recorder.by_rcpt("amy@example.com"))}
        marketing, transactional = received[offer["id"]], received[receipt["id"]]

        header = marketing["List-Unsubscribe"]
        https, mailto = re.findall(r"<([^>]+)>", header)
        assert https.startswith(f"{public}/u/") and mailto.startswith("mailto:unsubscribe+")
        assert marketing["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        text, html = _text_and_html(marketing)
        for part in (text, html):
            assert "Acme Trading Ltd" in part and "Queen's Road Central" in part.replace(
                "&#x27;", "'")
            assert "unsubscribe" in part and "取消訂閱" in part
            assert "hello@acme.example" in part
        assert "List-Unsubscribe" not in transactional
        assert "取消訂閱" not in "".join(_text_and_html(transactional))

        # the one-click POST, as a mailbox provider makes it (RFC 8058)
        async with running_app(settings, unused_tcp_port):
            async with aiohttp.ClientSession() as session:
                async with session.get(https) as page:
                    assert page.status == 200 and "amy@example.com" in await page.text()
                async with session.post(https, data="List-Unsubscribe=One-Click") as done:
                    assert done.status == 200
                async with session.post(f"{public}/u/forged.token") as forged:
                    assert forged.status == 404
            got = await collect(amqp_url, "outbox.status",
                                lambda m: len(events(m)) >= 1 and len(recipient_events(m)) >= 1)
            unsubscribed = events(got)
            assert (unsubscribed[0]["id"], unsubscribed[0]["status"]) == (offer["id"],
                                                                          "unsubscribed")
            assert [(r["change"], r["source"]) for r in recipient_events(got)] == [
                ("unsubscribed", "one_click")]  # told to the CRM once
            again = email_job(account_id=ACCOUNT, category="marketing", to="amy@example.com")
            await publish(amqp_url, [again])
            refused = events(await collect(amqp_url, "outbox.status",
                                           lambda m: len(events(m)) >= 1))
            assert (refused[0]["status"], refused[0]["reason"]) == ("suppressed",
                                                                    "unsubscribe")
    assert len(recorder.messages) == 2


async def test_marketing_without_sender_information_is_rejected(make_settings, smtp_server,
                                                                amqp_url, cli):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, consent_mode="opt_out")
    job = email_job(account_id="acct_anon", category="marketing")
    async with running_worker(settings):
        await publish(amqp_url, [job])
        [event] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
    assert event["status"] == "rejected"
    assert "sender information" in event["detail"] and "business_name" in event["detail"]
    assert recorder.messages == []
