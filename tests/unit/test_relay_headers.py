"""What Outbox puts on mail for each relay comes back in that relay's events as the job and
the account (the provider's own parse, fed the value as the provider echoes it)."""

from __future__ import annotations

import json
from email import message_from_bytes
from email.policy import default
from pathlib import Path

from sender.channels.smtp import EmailOptions, SmtpChannel, relay_headers
from sender.models import EmailJob
from webhooks.providers import mailgun, postmark, sendgrid

DATA = Path(__file__).resolve().parents[1] / "data" / "providers"
JOB = {"v": 1, "id": "job-r1", "account_id": "acct_r", "channel": "email",
       "category": "transactional", "to": "x@example.com", "from": "A <a@acme.example>",
       "subject": "s", "text": "t"}


def _rendered(relay: str):
    channel = SmtpChannel(None, options=EmailOptions("m.example", relay=relay))  # type: ignore[arg-type]
    msg = channel._render(EmailJob.model_validate(JOB), None)
    return message_from_bytes(msg.data, policy=default)


def test_plain_smtp_adds_only_the_account_header():
    msg = _rendered("smtp")
    assert msg["X-Outbox-Account"] == "acct_r"
    assert relay_headers("smtp", "a", "j") == ()


def test_sendgrid_unique_args_come_back():
    args = json.loads(_rendered("sendgrid")["X-SMTPAPI"])["unique_args"]
    event = {**json.loads((DATA / "sendgrid-events.json").read_text())[0], **args,
             "smtp-id": "<other@provider>", "outbox_account": args["outbox_account"]}
    [parsed] = sendgrid.parse(json.dumps([event]).encode(), "application/json")
    assert (parsed.job_id, parsed.account_id) == ("job-r1", "acct_r")


def test_mailgun_variables_come_back():
    variables = json.loads(_rendered("mailgun")["X-Mailgun-Variables"])
    payload = json.loads((DATA / "mailgun-events.json").read_text())["failed_permanent"]
    payload["event-data"]["user-variables"] = variables
    payload["event-data"]["message"]["headers"]["message-id"] = "unrelated@provider"
    [parsed] = mailgun.parse(json.dumps(payload).encode(), "application/json")
    assert (parsed.job_id, parsed.account_id) == ("job-r1", "acct_r")


def test_postmark_metadata_comes_back():
    msg = _rendered("postmark")
    metadata = {"outbox_job": msg["X-PM-Metadata-outbox_job"],
                "outbox_account": msg["X-PM-Metadata-outbox_account"]}
    record = json.loads((DATA / "postmark-records.json").read_text())["hard_bounce"]
    record["Metadata"] = metadata
    [parsed] = postmark.parse(json.dumps(record).encode(), "application/json")
    assert (parsed.job_id, parsed.account_id) == ("job-r1", "acct_r")


def test_ses_message_tags():
    assert _rendered("ses")["X-SES-MESSAGE-TAGS"] == "outbox_job=job-r1, outbox_account=acct_r"
