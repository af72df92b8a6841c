"""The compact storage of a job on a real Redis (the gate's real Lua): a one-entry story keeps
no timeline key, the job hash stays in Redis's compact encoding (listpack) however long its
metadata, and records written in the earlier format (every entry a JSON object in the list)
read the same as before. On a single Redis and on a Redis Cluster (``backends``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suppression import keys
from suppression.gate import Counts, Gate, joined_metadata, metadata_chunks
from suppression.history import job_story, recipient_history
from suppression.reputation import Policy

pytestmark = pytest.mark.backends
A = ""
N: Any = None


@pytest.fixture(autouse=True)
def _own_names(names, monkeypatch):
    monkeypatch.setitem(globals(), "A", names.account("acct_fmt"))
    monkeypatch.setitem(globals(), "N", names)


async def claim(gate: Gate, job_id: str, address: str, **kw: Any) -> str:
    decision = await gate.pre_send(A, job_id, owner="w", redelivered=False, expired=False,
                                   attempt=kw.pop("attempt", 1), address=address, **kw)
    return decision.verdict


async def encoding(redis: Any, key: str) -> str:
    value = await redis.object("encoding", key)
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_a_one_entry_story_has_no_timeline_key_and_reads_the_same(gate, redis):
    address = N.email("ana@example.com")
    assert await claim(gate, "j1", address) == "send"
    await gate.post_send(A, "j1", status="sent", attempt=1, provider="smtp",
                         counts=Counts(sends=1), note="250 2.0.0 Ok: queued as 4F2A")
    assert await redis.exists(keys.timeline(A, "j1")) == 0
    job = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.job(A, "j1"))).items()}
    assert "pm" not in job and "r" not in job  # empty values are not stored
    assert job["ed"] == "250 2.0.0 Ok: queued as 4F2A" and job["et"].isdigit()
    story = await job_story(redis, A, "j1")
    assert story is not None
    assert [(e["status"], e["attempt"], e["provider"], e["detail"], e["reason"],
             e["provider_message_id"]) for e in story["timeline"]] == [
        ("sent", 1, "smtp", "250 2.0.0 Ok: queued as 4F2A", None, None)]
    assert story["updated"] == story["timeline"][0]["at"]
    rows = await recipient_history(redis, address, account_id=A)
    assert [(r["id"], r["status"], r["updated"]) for r in rows] == [
        ("j1", "sent", story["updated"])]


async def test_the_job_hash_stays_compact_with_large_metadata_and_long_details(gate, redis):
    """4 KB of metadata (in pieces of at most 64 bytes) and a relay reply longer than 64
    bytes (its entry in the list instead): the hash is still a listpack, and everything
    reads back whole."""
    metadata = {"crm": "客戶" * 600, "n": 1}
    address = N.email("bo@example.com")
    assert await claim(gate, "j2", address, metadata=metadata) == "send"
    long_reply = "250 2.0.0 OK  1733590000 x12si1234567qtx.123 - gsmtp (queued as ABCDEF)"
    assert len(long_reply) > keys.HASH_VALUE_MAX
    await gate.post_send(A, "j2", status="sent", attempt=1, provider="smtp",
                         provider_message_id="<j2@outbox.example>", counts=Counts(sends=1),
                         note=long_reply)
    assert await encoding(redis, keys.job(A, "j2")) == "listpack"
    assert json.loads((await gate.job_state(A, "j2"))["md"]) == metadata
    recorded = await gate.post_send(A, "j2", status="delivered", attempt=0, provider="ses",
                                    provider_message_id="<j2@outbox.example>",
                                    event_id="e-j2", note="smtp; 250 ok")
    assert json.loads(recorded.metadata) == metadata  # read back in the event's round trip
    assert await encoding(redis, keys.job(A, "j2")) == "listpack"
    story = await job_story(redis, A, "j2")
    assert story is not None
    assert [(e["status"], e["attempt"], e["detail"]) for e in story["timeline"]] == [
        ("sent", 1, long_reply), ("delivered", 1, "smtp; 250 ok")]


async def test_a_deferral_then_a_send_and_a_report_live_in_the_job_record(gate, redis):
    """Every entry short enough stays in the job's hash (packed), in order: no timeline key."""
    address = N.email("cy@example.com")
    await claim(gate, "j3", address)
    await gate.post_send(A, "j3", status="R", attempt=1, provider="smtp",
                         reason="networkerror", note="connection refused")
    assert await claim(gate, "j3", address, attempt=2) == "send"
    story = await job_story(redis, A, "j3")
    assert story is not None and story["status"] == "sending"
    assert [(e["status"], e["attempt"], e["reason"], e["detail"])
            for e in story["timeline"]] == [("deferred", 1, "networkerror",
                                             "connection refused")]
    await gate.post_send(A, "j3", status="sent", attempt=2, provider="smtp",
                         counts=Counts(sends=1))
    await gate.post_send(A, "j3", status="delivered", attempt=0, provider="ses",
                         event_id="e-j3", note="smtp; 250 ok")
    story = await job_story(redis, A, "j3")
    assert story is not None
    assert [(e["status"], e["attempt"], e["provider"]) for e in story["timeline"]] == [
        ("deferred", 1, "smtp"), ("sent", 2, "smtp"), ("delivered", 2, "ses")]
    assert await redis.exists(keys.timeline(A, "j3")) == 0
    assert await encoding(redis, keys.job(A, "j3")) == "listpack"
    rows = await recipient_history(redis, address, account_id=A)
    assert [(r["status"], r["updated"]) for r in rows] == [
        ("delivered", story["timeline"][-1]["at"])]


async def test_a_timeline_kept_shorter_than_the_job_goes_to_its_list(redis):
    """With OUTBOX_RETENTION_TIMELINES under the record's, the earlier entries go to the
    list (its own expiry); 0 keeps only what the record holds."""
    address = N.email("dee@example.com")
    short = Gate(redis, idempotency_ttl=7200, timeline_ttl=3600, history_ttl=3600,
                 policy=Policy(rate=1000, burst=1000))
    await short.pre_send(A, "j5", owner="w", redelivered=False, expired=False, attempt=1,
                         address=address)
    await short.post_send(A, "j5", status="sent", attempt=1, counts=Counts(sends=1))
    await short.post_send(A, "j5", status="delivered", attempt=0, event_id="e-j5")
    assert 3500 < await redis.ttl(keys.timeline(A, "j5")) <= 3600
    assert 7100 < await redis.ttl(keys.job(A, "j5")) <= 7200
    story = await job_story(redis, A, "j5")
    assert story is not None
    assert [e["status"] for e in story["timeline"]] == ["sent", "delivered"]
    none = Gate(redis, idempotency_ttl=7200, timeline_ttl=0, history_ttl=0,
                policy=Policy(rate=1000, burst=1000))
    await none.pre_send(A, "j6", owner="w", redelivered=False, expired=False, attempt=1,
                        address=address)
    await none.post_send(A, "j6", status="sent", attempt=1, counts=Counts(sends=1))
    await none.post_send(A, "j6", status="delivered", attempt=0, event_id="e-j6")
    assert await redis.exists(keys.timeline(A, "j6")) == 0
    story = await job_story(redis, A, "j6")
    assert story is not None
    assert [e["status"] for e in story["timeline"]] == ["delivered"]


async def test_records_written_in_the_earlier_format_read_as_before(redis):
    """A job hash without ``et`` and a timeline of JSON objects (every entry in the list),
    as the worker wrote them before: shown exactly as then."""
    address = N.email("old@example.com")
    entries = [
        {"at": 1764000000123, "status": "deferred", "reason": "networkerror",
         "detail": "connection refused", "provider": "smtp", "provider_message_id": "",
         "attempt": 1},
        {"at": 1764000060456, "status": "sent", "reason": "", "detail": "250 ok",
         "provider": "smtp", "provider_message_id": "<old@x>", "attempt": 2}]
    await redis.hset(keys.job(A, "old"), mapping={
        "st": "sent", "a": "2", "p": "smtp", "pm": "<old@x>", "r": "",
        "md": json.dumps({"crm": "x" * 100})})
    await redis.rpush(keys.timeline(A, "old"), *[json.dumps(e) for e in entries])
    await redis.zadd(keys.history(A, "email", address), {"old": 1764000000000000})
    story = await job_story(redis, A, "old")
    assert story is not None
    assert story["status"] == "sent" and story["provider_message_id"] == "<old@x>"
    assert [(e["at"], e["status"], e["attempt"], e["detail"], e["provider_message_id"])
            for e in story["timeline"]] == [
        ("2025-11-24T16:00:00.123Z", "deferred", 1, "connection refused", None),
        ("2025-11-24T16:01:00.456Z", "sent", 2, "250 ok", "<old@x>")]
    rows = await recipient_history(redis, address, account_id=A)
    assert [(r["id"], r["status"], r["attempt"], r["updated"]) for r in rows] == [
        ("old", "sent", 2, "2025-11-24T16:01:00.456Z")]
    gate = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1000, burst=1000))
    assert json.loads((await gate.job_state(A, "old"))["md"]) == {"crm": "x" * 100}


@given(st.text(max_size=600))
def test_metadata_pieces_fit_a_compact_hash_value_and_join_back(value: str) -> None:
    pieces = metadata_chunks(value)
    assert "".join(pieces) == value and pieces
    assert all(len(p.encode()) <= keys.HASH_VALUE_MAX for p in pieces)
    fields = {"md": pieces[0], **{f"md{i}": p for i, p in enumerate(pieces[1:], 1)}}
    assert joined_metadata(fields) == value


def test_every_key_builder_has_its_kind() -> None:
    """benchmarks.memory groups Redis memory by keys.kind_of: each builder's key is named."""
    a, addr = "acct_1", "ana@example.com"
    built = {
        "job": keys.job(a, "j"), "timeline": keys.timeline(a, "j"),
        "history": keys.history(a, "email", addr), "state": keys.state(a),
        "config": keys.config(a), "bucket": keys.bucket(a, "email"),
        "reputation": keys.reputation(a, "email"), "recent": keys.recent(a),
        "audit": keys.audit(a), "account_suppression": keys.account_suppression(a, "email", addr),
        "consent": keys.consent(a, "email", addr), "prefs": keys.prefs(a, addr),
        "event": keys.event(a, "e:1"), "global_history": keys.global_history("email", addr),
        "global_suppression": keys.global_suppression("email", addr),
        "dnc": keys.dnc("+85291234567"), "accounts": keys.ACCOUNTS,
        "global_audit": keys.GLOBAL_AUDIT, "mailgun_token": keys.mailgun_token("t"),
        "held": keys.held(a, "email", "marketing"), "held_bodies": keys.held_bodies(a),
        "held_size": keys.held_size(a), "held_lock": keys.held_lock(a),
        "held_accounts": keys.HELD_ACCOUNTS,
    }
    assert {kind: keys.kind_of(key) for kind, key in built.items()} == {k: k for k in built}
    assert keys.kind_of("unrelated") == keys.kind_of("outbox:{acct:x") == "other"
