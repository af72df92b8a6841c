"""RFC 3464 delivery reports and RFC 5965 feedback reports → provider events."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhooks.providers import dsn
from webhooks.providers.base import PayloadError

DATA = Path(__file__).resolve().parents[1] / "data" / "reports"


def test_a_postfix_bounce_names_its_job_by_verp():
    raw = (DATA / "postfix-dsn.eml").read_bytes()
    verp = "bounce+acct_7+01JD6Y3M9Q0B8ZP6X2N4K7R1TC@bounces.outbox.example"
    [event] = dsn.parse(raw, envelope_to=[verp])
    assert (event.type, event.kind, event.reason) == ("bounced", "hard", "userunknown")
    assert (event.account_id, event.job_id) == ("acct_7", "01JD6Y3M9Q0B8ZP6X2N4K7R1TC")
    assert event.recipient == "bob@example.net"
    assert event.message_id == "<01JD6Y3M9Q0B8ZP6X2N4K7R1TC@mail.outbox.example>"
    assert event.diagnostic.startswith("smtp; 550 5.1.1 <bob@example.net>")
    assert dsn.parse(raw, envelope_to=[verp])[0].event_id == event.event_id  # stable


def test_without_verp_the_quoted_message_id_names_the_job():
    raw = b"\n".join(line for line in (DATA / "postfix-dsn.eml").read_bytes().split(b"\n")
                     if b"bounce+" not in line)
    [event] = dsn.parse(raw)
    assert (event.account_id, event.job_id) == (None, "01JD6Y3M9Q0B8ZP6X2N4K7R1TC")


def test_a_verp_address_quoted_in_the_report_names_the_job_without_the_envelope():
    report = dsn.read((DATA / "postfix-dsn.eml").read_bytes())  # X-Postfix-Sender: the VERP
    assert (report.ids.account_id, report.ids.job_id, report.ids.attribution) == (
        "acct_7", "01JD6Y3M9Q0B8ZP6X2N4K7R1TC", "message-id")


def test_a_delay_report_is_a_soft_bounce():
    [event] = dsn.parse((DATA / "delayed-dsn.eml").read_bytes())
    assert (event.type, event.reason, event.job_id) == ("soft_bounced", "mailboxfull", "job-42")
    assert event.recipient == "carol@example.org"


def test_an_arf_abuse_report_is_a_complaint():
    [event] = dsn.parse((DATA / "arf-abuse.eml").read_bytes())
    assert (event.type, event.kind, event.reason) == ("complained", "complaint", "feedback")
    assert (event.recipient, event.job_id) == ("user@example.com", "job-77")


def test_a_plain_message_is_not_a_report():
    with pytest.raises(PayloadError, match="not a delivery status notification"):
        dsn.parse(b"From: a@b\r\nSubject: hello\r\n\r\nout of office\r\n")


def test_an_arf_report_names_the_account_by_the_quoted_header():
    raw = (DATA / "arf-abuse.eml").read_bytes().replace(
        b"Message-ID: <job-77@mail.outbox.example>",
        b"Message-ID: <job-77@mail.outbox.example>\nX-Outbox-Account: acct_3")
    [event] = dsn.parse(raw)
    assert (event.account_id, event.job_id) == ("acct_3", "job-77")
