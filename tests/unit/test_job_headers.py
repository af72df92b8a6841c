"""Job headers are an allow-list: the attacker's relay-control and routing headers are refused
with a reason (by job validation, and again by the renderer); the CRM's own headers render."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sender import job_headers
from sender.channels.registry import parse_job
from sender.mime import MimeError, render_email
from sender.models import EmailJob, InvalidJob

DOMAIN = "mail.outbox.example"
BASE = {"v": 1, "id": "j1", "account_id": "acct_1", "channel": "email",
        "category": "transactional", "to": "alice@example.com", "from": "sales@acme.example",
        "subject": "Hi", "text": "Hello"}

#: what the attacker sent, and more of its kind
ATTACK = [
    "X-SES-CONFIGURATION-SET", "x-ses-configuration-set", "X-SES-SOURCE-ARN",
    "X-SES-RETURN-PATH-ARN", "X-SES-MESSAGE-TAGS", "X-SMTPAPI", "Resent-Bcc", "Resent-To",
    "Resent-From", "Errors-To", "Bcc", "Cc", "To", "Return-Path", "Return-Receipt-To",
    "Disposition-Notification-To", "Received", "Delivered-To", "X-Original-To",
    "X-Mailgun-Variables", "X-Mailgun-Tag", "X-Mailgun-Drop-Message", "X-PM-Message-Stream",
    "X-PM-Metadata-outbox_job", "X-MC-Tags", "X-MSYS-API", "X-MJ-CustomID", "X-Mailin-Custom",
    "X-Outbox-Account", "DKIM-Signature", "ARC-Seal", "Authentication-Results",
    "Content-Type", "Content-Transfer-Encoding", "MIME-Version", "Sender", "From", "Reply-To",
    "Mail-Followup-To", "Message-ID", "Date", "Subject", "List-Unsubscribe",
    "List-Unsubscribe-Post", "X-Spam-Status", "X-MS-Exchange-Organization-SCL",
    "TLS-Required", "Autocrypt",
]
ALLOWED = {
    "X-Campaign": "spring", "X-Priority": "1", "X-Mailer": "Acme CRM",
    "X-Auto-Response-Suppress": "All", "List-Id": "Acme news <news.acme.example>",
    "List-Help": "<https://acme.example/help>", "List-Subscribe": "<https://acme.example/s>",
    "List-Post": "NO", "List-Owner": "<mailto:owner@acme.example>",
    "List-Archive": "<https://acme.example/a>", "In-Reply-To": "<a1@crm.acme.example>",
    "References": "<a0@crm.acme.example> <a1@crm.acme.example>", "Keywords": "offer, spring",
    "Comments": "hello", "Importance": "high", "Priority": "urgent",
    "Auto-Submitted": "auto-generated", "Precedence": "bulk",
    "Feedback-ID": "spring:acct_1:crm:acme", "Organization": "Acme Ltd",
}


def _parse(headers: dict[str, str]) -> EmailJob:
    return parse_job(json.dumps({**BASE, "headers": headers}).encode(), max_bytes=100_000)


def _raw(headers: dict[str, str]) -> EmailJob:
    data = {**BASE, "headers": headers}
    data["from_"] = data.pop("from")
    return EmailJob.model_construct(**data)


@pytest.mark.parametrize("name", ATTACK)
def test_attacker_headers_are_refused_with_a_reason_naming_them(name):
    with pytest.raises(InvalidJob) as info:
        _parse({name: "x"})
    assert f"header {name} is refused: " in info.value.reason
    assert info.value.job_id == "j1"  # the rejected event can name the job
    # the renderer refuses it too, for a job that skipped validation
    with pytest.raises(MimeError, match=f"header {name} is refused: "):
        render_email(_raw({name: "x"}), message_id_domain=DOMAIN)


@pytest.mark.parametrize(("name", "why"), [
    ("X-SES-CONFIGURATION-SET", "relay-control"), ("Resent-Bcc", "routing"),
    ("Errors-To", "bounces"), ("Received", "trace"), ("Reply-To", "reply_to"),
    ("List-Unsubscribe", "worker"), ("Content-Type", "renderer"), ("Autocrypt", "allow-list"),
])
def test_the_reason_says_which_rule(name, why):
    assert why in (job_headers.refusal(name) or "")


def test_allowed_headers_render_as_given():
    from email import policy
    from email.parser import BytesParser

    job = _parse(ALLOWED)
    msg = BytesParser(policy=policy.default).parsebytes(
        render_email(job, message_id_domain=DOMAIN).data)
    for name, value in ALLOWED.items():
        assert str(msg[name]) == value


def test_the_worker_may_still_set_its_own_relay_headers():
    r = render_email(_parse({}), message_id_domain=DOMAIN, extra_headers=[
        ("X-SES-MESSAGE-TAGS", "outbox_job=j1"), ("X-Outbox-Account", "acct_1"),
        ("List-Unsubscribe", "<https://u.example/u/t>")])
    assert b"X-SES-MESSAGE-TAGS: outbox_job=j1\r\n" in r.data


# every printable-ASCII name, weighted towards the prefixes the rule cares about
names = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=30),
    st.builds(lambda p, s: p + s,
              st.sampled_from(["X-", "x-ses-", "X-SES", "Resent-", "List-", "Content-", "X-PM-",
                               "X-Mailgun-", "x-mc-", "DKIM-", "ARC-", "X-Outbox-", "X-SMTPAPI",
                               "Errors-", "Return-", "X-Original-", ""]),
              st.from_regex(r"[A-Za-z0-9_-]{0,12}", fullmatch=True)),
    st.text(min_size=1, max_size=10),
)


@settings(max_examples=500, deadline=None)
@given(names, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40))
def test_any_name_either_renders_or_is_refused_with_a_reason(name, value):
    why = job_headers.refusal(name)
    try:
        job = _parse({name: value})
    except InvalidJob as exc:
        assert why is not None and why in exc.reason
        # refused: the renderer does not let it through either
        with pytest.raises(MimeError, match="header"):
            render_email(_raw({name: value}), message_id_domain=DOMAIN)
        return
    assert why is None
    lname = name.lower()
    assert lname.startswith("x-") or lname in job_headers.ALLOWED
    for prefix in ("x-ses-", "x-smtpapi", "x-pm-", "x-mailgun-", "x-mc-", "x-msys-api",
                   "x-outbox-", "resent-", "content-", "dkim-", "arc-", "list-unsubscribe"):
        assert not lname.startswith(prefix)
    r = render_email(job, message_id_domain=DOMAIN)
    assert f"\r\n{name}:".encode() in r.data
