"""Job validation gives reasons a person can act on."""

from __future__ import annotations

import json

import pytest

from sender.models import InvalidJob, parse_job

BASE = {"v": 1, "id": "j1", "account_id": "acct_1", "channel": "email",
        "category": "transactional", "to": "a@example.com", "from": "Acme <s@acme.example>",
        "subject": "Hi", "text": "hello"}


def _parse(**changes):
    job = {**BASE, **changes}
    job = {k: v for k, v in job.items() if v is not ...}
    return parse_job(json.dumps(job).encode(), max_bytes=100_000)


def test_a_valid_email_job_parses():
    job = _parse()
    assert (job.channel, job.from_, job.to) == ("email", "Acme <s@acme.example>", "a@example.com")


def test_a_valid_sms_job_parses():
    job = parse_job(json.dumps({"v": 1, "id": "s1", "account_id": "a", "channel": "sms",
                                "category": "notification", "topic": "meeting",
                                "to": "+85291234567", "body": "Meeting at 3"}).encode(),
                    max_bytes=10_000)
    assert (job.channel, job.topic) == ("sms", "meeting")


@pytest.mark.parametrize(("changes", "reason"), [
    ({"v": 2}, "v: Input should be 1"),
    ({"id": "has space"}, "id: String should match pattern"),
    ({"id": "crm:991"}, "id: String should match pattern"),  # ':' cannot be in a Message-ID
    ({"account_id": "{acct}"}, "account_id: String should match pattern"),
    ({"category": "spam"}, "category: Input should be 'marketing'"),
    ({"text": None, "html": None}, "needs text or html"),
    ({"subject": "a\r\nBcc: x@y"}, "subject: String should match pattern"),
    ({"headers": {"X-A": "1\r\nBcc: victim@x"}}, "headers.X-A"),
    ({"category": "notification"}, "needs a topic"),
    ({"not_after": "tomorrow"}, "not_after"),
    ({"not_after": "2026-01-01T00:00:00"}, "timezone"),
    ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ({"from": ...}, "from: Field required"),
])
def test_invalid_jobs_say_why(changes, reason):
    with pytest.raises(InvalidJob) as info:
        _parse(**changes)
    assert reason in info.value.reason
    assert info.value.job_id == (None if "id" in changes else "j1")  # an unsafe id is not echoed


def test_oversize_job_is_refused_before_parsing():
    body = json.dumps({**BASE, "text": "x" * 200_000}).encode()
    with pytest.raises(InvalidJob, match="over the limit") as info:
        parse_job(body, max_bytes=100_000)
    assert info.value.job_id == "j1"


def test_unknown_channel_is_not_echoed_into_routing():
    with pytest.raises(InvalidJob) as info:
        _parse(channel="fax")
    assert info.value.reason == "channel must be 'email' or 'sms'"
    assert info.value.channel is None
