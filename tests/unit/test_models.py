"""Job validation gives reasons a person can act on."""

from __future__ import annotations

import json

import pytest

from sender.channels.registry import parse_job
from sender.models import InvalidJob

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
    ({"id": "has space"}, "id: job id must be 1-128 characters"),
    ({"id": "crm:991"}, "id: job id must be 1-128 characters"),  # ':' cannot be in a Message-ID
    ({"account_id": "{acct}"}, "account_id: account id must be 1-128 characters"),
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


@pytest.mark.parametrize(("changes", "reason"), [
    ({"v": True}, "v: must be the integer 1"),
    ({"v": 1.0}, "v: must be the integer 1"),
    ({"v": "1"}, "v: must be the integer 1"),
    ({"not_after": 12345}, "not_after: must be an RFC 3339 date-time with a timezone"),
    ({"not_after": 1.7e9}, "not_after: must be an RFC 3339"),
    ({"not_after": "2030-01-01"}, "not_after: must be an RFC 3339"),
])
def test_version_and_not_after_are_strict(changes, reason):
    with pytest.raises(InvalidJob) as info:
        _parse(**changes)
    assert info.value.reason == reason or info.value.reason.startswith(reason)
    assert info.value.job_id == "j1"


def test_an_rfc3339_not_after_with_a_zone_is_taken():
    assert _parse(not_after="2030-01-01T09:00:00.5+08:00").not_after is not None
    assert _parse(not_after="2030-01-01T01:00:00Z").expired() is False


@pytest.mark.parametrize(("literal", "reason"), [
    (b"NaN", "not valid JSON: NaN and Infinity are not JSON numbers"),
    (b"Infinity", "not valid JSON: NaN and Infinity are not JSON numbers"),
    (b"-Infinity", "not valid JSON: NaN and Infinity are not JSON numbers"),
    (b"1e999", "a number is out of range (not finite)"),  # parses to inf
])
def test_non_finite_numbers_are_refused_with_the_id(literal, reason):
    body = json.dumps({**BASE, "metadata": {"score": 0}}).encode().replace(b"0}", literal + b"}")
    with pytest.raises(InvalidJob) as info:
        parse_job(body, max_bytes=100_000)
    assert info.value.reason == reason
    assert (info.value.job_id, info.value.account_id, info.value.channel) == \
        ("j1", "acct_1", "email")


@pytest.mark.parametrize("depth", [65, 5000, 100_000])
def test_deep_nesting_is_refused_without_recursion(depth):
    body = (json.dumps(BASE)[:-1] + ', "metadata": ' + '{"a": ' * depth + "1" + "}" * depth
            + "}").encode()
    with pytest.raises(InvalidJob) as info:
        parse_job(body, max_bytes=10_000_000)
    assert info.value.reason == "nested more than 64 levels deep"
    assert info.value.job_id == "j1"


def test_nesting_up_to_the_limit_is_taken():
    body = (json.dumps(BASE)[:-1] + ', "metadata": ' + '{"a": ' * 63 + "1" + "}" * 63
            + "}").encode()
    assert parse_job(body, max_bytes=100_000).id == "j1"


def test_a_huge_job_finds_its_id_at_the_end():
    job = {k: v for k, v in BASE.items() if k != "id"}
    body = json.dumps({**job, "text": "x" * 3_000_000, "id": "j1"}).encode()
    assert body.index(b'"id"') > 2_900_000
    with pytest.raises(InvalidJob, match="over the limit") as info:
        parse_job(body, max_bytes=2 * 1024 * 1024)
    assert (info.value.job_id, info.value.account_id) == ("j1", "acct_1")


def test_a_huge_broken_body_still_finds_its_id_anywhere():
    body = b'{"text": "' + b"x" * 3_000_000 + b'", "id": "late-1", "account_id": "a1", broken'
    with pytest.raises(InvalidJob) as info:
        parse_job(body, max_bytes=2 * 1024 * 1024)
    assert (info.value.job_id, info.value.account_id) == ("late-1", "a1")
