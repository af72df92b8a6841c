"""The job field ``send_at`` and the keys of scheduled jobs (README, "Send later")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sender.channels.registry import parse_job
from sender.models import InvalidJob, schedule_problem
from suppression import keys

BASE = (b'{"v":1,"id":"j-1","account_id":"acct_1","channel":"email",'
        b'"category":"transactional","to":"a@example.com","from":"A <a@acme.example>",'
        b'"subject":"s","text":"t"')


def job(**fields: object) -> bytes:
    import json

    extra = "".join(f',"{k}":{json.dumps(v)}' for k, v in fields.items())
    return BASE + extra.encode() + b"}"


@pytest.mark.parametrize("value", ["2026-12-24T09:00:00+08:00", "2026-12-24T01:00:00Z",
                                   "2026-12-24T01:00:00.123456z"])
def test_send_at_takes_rfc_3339_with_an_offset(value: str) -> None:
    parsed = parse_job(job(send_at=value), max_bytes=10_000)
    assert parsed.send_at == datetime(2026, 12, 24, 1, tzinfo=UTC).replace(
        microsecond=123456 if "." in value else 0)


@pytest.mark.parametrize("value", ["2026-12-24T09:00:00", "2026-12-24", "tomorrow", 1766538000,
                                   "2026-13-24T09:00:00+08:00", True])
def test_a_naive_or_unparsable_send_at_is_refused_with_the_reason(value: object) -> None:
    with pytest.raises(InvalidJob, match="send_at"):
        parse_job(job(send_at=value), max_bytes=10_000)


def test_send_at_after_not_after_is_refused() -> None:
    with pytest.raises(InvalidJob, match="send_at is after not_after: the job could never "
                                         "be sent"):
        parse_job(job(send_at="2026-12-24T10:00:00+08:00",
                      not_after="2026-12-24T09:59:59+08:00"), max_bytes=10_000)
    assert parse_job(job(send_at="2026-12-24T10:00:00+08:00",
                         not_after="2026-12-24T02:00:00Z"), max_bytes=10_000).send_at


def test_too_far_ahead_is_a_problem_named_after_the_setting() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    parsed = parse_job(job(send_at="2026-12-31T00:00:01Z"), max_bytes=10_000)
    problem = schedule_problem(parsed, 30 * 86400, now)
    assert problem == ("send_at is 30.0 days ahead, more than the 30 days allowed "
                       "(OUTBOX_SCHEDULE_MAX_AHEAD)")
    assert schedule_problem(parsed, 30 * 86400, now + timedelta(seconds=1)) is None
    assert schedule_problem(parse_job(job(), max_bytes=10_000), 60, now) is None


def test_a_job_s_shard_keys_share_one_hash_tag_and_spread_over_the_shards() -> None:
    shards = {keys.schedule_shard("acct_1", f"job-{i}") for i in range(500)}
    assert shards == set(range(keys.SCHEDULE_SHARDS))
    shard = keys.schedule_shard("acct_1", "job-1")
    assert shard == keys.schedule_shard("acct_1", "job-1")  # stable across processes
    due, jobs = keys.schedule_due(shard), keys.schedule_jobs(shard)
    assert due.split("}")[0] == jobs.split("}")[0] == f"outbox:{{sched:{shard}"
    assert keys.kind_of(due) == keys.kind_of(jobs) == "schedule"
    assert keys.schedule_member("acct_1", "job-1") == "acct_1/job-1"
    with pytest.raises(Exception, match="account"):
        keys.schedule_member("acct}x", "job-1")
