"""The contract of ``outbox.events``: one typed event, serialised by the webhook side and decoded
and validated by the worker; bodies queued before ``channel`` existed are still read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.asyncio import Redis

from sender.metrics import Metrics
from sender.provider_event_applier import EventApplier
from sender.provider_events import EVENT_TYPES, InvalidEvent, ProviderEvent
from suppression import keys
from suppression.gate import Counts, Gate
from suppression.store import SuppressionStore

FIELDS = {"provider": "ses", "type": "bounced", "channel": "email",
          "recipient": "bob@example.com", "provider_message_id": "pm-1", "message_id": None,
          "job_id": "j1", "kind": "hard", "reason": "userunknown", "diagnostic": "550 5.1.1",
          "at": "2026-01-01T00:00:00.000Z", "event_id": "e1", "account_id": "acct_1"}


def test_round_trip_keeps_every_field():
    event = ProviderEvent(**FIELDS, raw={"n": 1, "name": "Zoë"})
    body = event.to_json()
    assert json.loads(body) == {**FIELDS, "raw": {"n": 1, "name": "Zoë"}, "trust": "signed"}
    assert ProviderEvent.from_json(body) == event


def test_a_body_without_trust_is_signed_and_a_bad_trust_is_refused():
    """Bodies queued before ``trust`` existed keep the rules of their time (``signed``)."""
    assert ProviderEvent.from_json(json.dumps(FIELDS)).trust == "signed"
    assert ProviderEvent.from_json(json.dumps({**FIELDS, "trust": "quoted"})).trust == "quoted"
    with pytest.raises(InvalidEvent, match="trust"):
        ProviderEvent.from_json(json.dumps({**FIELDS, "trust": "believe-me"}))


@pytest.mark.parametrize(("provider", "channel"), [
    ("twilio", "sms"), ("ses", "email"), ("smtp", "email"), ("unsubscribe", "email")])
def test_a_body_queued_before_channel_existed_gets_the_old_rule(provider, channel):
    legacy = {k: v for k, v in FIELDS.items() if k != "channel"} | {"provider": provider}
    assert ProviderEvent.from_json(json.dumps(legacy)).channel == channel


def test_the_channel_on_the_wire_wins_over_the_provider():
    body = json.dumps({**FIELDS, "provider": "unsubscribe", "channel": "sms"})
    assert ProviderEvent.from_json(body).channel == "sms"


def test_a_producer_must_name_the_channel():
    fields = {k: v for k, v in FIELDS.items() if k != "channel"}
    with pytest.raises(ValidationError, match="channel"):
        ProviderEvent(**fields)


def test_unknown_fields_are_ignored_and_the_event_is_frozen():
    event = ProviderEvent.from_json(json.dumps({**FIELDS, "added_later": 1}))
    assert not hasattr(event, "added_later")
    with pytest.raises(ValidationError):
        event.__setattr__("type", "delivered")


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({**FIELDS, "type": "exploded"}), "type must be one of"),
    (json.dumps({**FIELDS, "channel": "fax"}), "channel must be one of"),
    (json.dumps({**FIELDS, "account_id": "a:b"}), "account_id"),
    (json.dumps({**FIELDS, "job_id": "../x"}), "job_id"),
    (json.dumps({k: v for k, v in FIELDS.items() if k != "event_id"}), "event_id"),
    (json.dumps({**FIELDS, "event_id": ""}), "event_id"),
    (json.dumps({**FIELDS, "provider": "Evil Corp"}), "provider"),
    (json.dumps({**FIELDS, "recipient": 7}), "recipient"),
])
def test_an_invalid_body_says_why(body, reason):
    with pytest.raises(InvalidEvent, match=reason):
        ProviderEvent.from_json(body)


def test_replace_validates():
    event = ProviderEvent(**FIELDS)
    assert event.replace(job_id=None).job_id is None
    with pytest.raises(ValidationError):
        event.replace(account_id="no spaces allowed")
    assert "other" in EVENT_TYPES


class FakeBus:
    def __init__(self) -> None:
        self.dead: list[tuple[bytes, str]] = []
        self.events: list[dict[str, Any]] = []

    async def publish_dead(self, body: bytes, reason: str, source: str, **_: object) -> None:
        self.dead.append((body, reason))

    async def publish_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class FakeMessage:
    def __init__(self, body: bytes) -> None:
        self.body: bytes = body
        self.headers: dict[str, Any] = {}
        self.routing_key = "outbox.events"
        self.acked = False

    async def ack(self) -> None:
        self.acked = True


@pytest.fixture
async def applier(redis_url):
    client = Redis.from_url(redis_url)
    bus = FakeBus()
    publisher: Any = bus
    yield EventApplier(bus=publisher, gate=Gate(client, idempotency_ttl=60),
                       store=SuppressionStore(client), redis=client,
                       metrics=Metrics(CollectorRegistry())), \
        bus, SuppressionStore(client)
    await client.aclose()


async def test_an_invalid_event_is_dead_lettered_with_the_reason_and_changes_nothing(applier):
    worker, bus, store = applier
    body = json.dumps({**FIELDS, "type": "exploded"}).encode()
    message = FakeMessage(body)
    incoming: Any = message
    await worker.handle(incoming)
    assert message.acked and bus.events == []
    [(dead_body, reason)] = bus.dead
    assert dead_body == body and reason.startswith("invalid provider event: type must be one of")
    assert await store.check("bob@example.com", account_id="acct_1") == []


async def test_the_producer_s_channel_decides_the_entry_not_the_provider(applier):
    """An unsubscribe for an SMS recipient from a provider other than Twilio is an ``sms_stop``
    of the account (before, any provider but Twilio was taken for e-mail)."""
    worker, bus, store = applier
    gate: Gate = worker._gate
    assert (await gate.pre_send("acct_1", "j1", owner="w", redelivered=False, expired=False,
                                attempt=1, channel="sms", address="+85291234567")).claimed
    body = json.dumps({**FIELDS, "provider": "unsubscribe", "type": "unsubscribed",
                       "channel": "sms", "recipient": "+85291234567", "kind": None,
                       "reason": "unsubscribe"}).encode()
    incoming: Any = FakeMessage(body)
    await worker.handle(incoming)
    [entry] = await store.check("+85291234567", account_id="acct_1")
    assert (entry["channel"], entry["scope"], entry["reason"]) == ("sms", "account", "sms_stop")
    assert [(e["channel"], e["status"]) for e in bus.events] == [("sms", "unsubscribed")]


async def _sent(gate: Gate, job: str, metadata: dict[str, Any]) -> None:
    """A job claimed (its metadata kept) and handed over, as the worker does it."""
    decision = await gate.pre_send("acct_1", job, owner="w", redelivered=False, expired=False,
                                   attempt=1, address="bob@example.com", metadata=metadata)
    assert decision.verdict == "send"
    await gate.post_send("acct_1", job, status="sent", attempt=1, provider="smtp",
                         provider_message_id="pm-1", counts=Counts(sends=1))


async def test_a_never_sent_event_fails_the_job_and_is_no_bounce(applier, redis_url):
    """``failed`` (SES Reject, Mailgun rejected): the job ends failed, its status event carries
    the job's metadata; nothing is counted, nothing suppressed; a repeat changes nothing."""
    worker, bus, store = applier
    gate: Gate = worker._gate
    metadata = {"crm_message_id": 991, "tags": ["a", "ü"]}
    await _sent(gate, "j-failed", metadata)
    event = ProviderEvent(**{**FIELDS, "type": "failed", "kind": None, "reason": "rejected",
                             "job_id": "j-failed", "event_id": "e-failed"})
    for _ in range(2):
        incoming: Any = FakeMessage(event.to_json())
        await worker.handle(incoming)
    [status] = bus.events
    assert (status["id"], status["status"], status["reason"], status["metadata"]) == \
        ("j-failed", "failed", "rejected", metadata)
    assert (await gate.job_state("acct_1", "j-failed"))["st"] == "failed"
    assert await store.check("bob@example.com", account_id="acct_1") == []
    client = Redis.from_url(redis_url)
    rep = await client.hgetall(keys.reputation("acct_1", "email"))
    assert (rep.get(b"S"), rep.get(b"H", b"0"), rep.get(b"C", b"0")) == (b"1", b"0", b"0")
    assert await client.llen(keys.recent("acct_1")) == 0
    await client.aclose()


async def test_a_provider_status_event_carries_the_job_s_metadata(applier):
    worker, bus, _ = applier
    await _sent(worker._gate, "j-meta", {"crm_message_id": 7})
    await worker.apply(ProviderEvent(**{**FIELDS, "job_id": "j-meta", "event_id": "e-meta"}))
    await worker.apply(ProviderEvent(**{**FIELDS, "job_id": "j-bare", "event_id": "e-bare"}))
    # j-bare has no record (never claimed, or expired): its event changes no job, so it has
    # no status event (suppression/handover.py)
    assert [(e["id"], e["status"], e["metadata"]) for e in bus.events] == [
        ("j-meta", "bounced", {"crm_message_id": 7})]


async def test_the_metadata_costs_no_round_trip_of_its_own(applier, monkeypatch):
    """Applying a provider event is one Redis round trip, its metadata read included."""
    from suppression import gate as gate_module

    worker, bus, _ = applier
    await _sent(worker._gate, "j-rt", {"crm_message_id": 8})
    real, calls = gate_module.execute, []

    async def counted(redis: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        calls.append([c[0] for c in commands])
        return await real(redis, commands)

    monkeypatch.setattr(gate_module, "execute", counted)
    await worker.apply(ProviderEvent(**{**FIELDS, "job_id": "j-rt", "event_id": "e-rt"}))
    assert len(calls) == 1 and calls[0][:2] == ["EVALSHA", "HGET"]
    assert bus.events[-1]["metadata"] == {"crm_message_id": 8}


QUOTED = {**FIELDS, "provider": "smtp", "trust": "quoted", "message_id": "<j-q@m.example>",
          "raw": {"evidence": {"peer": "203.0.113.9", "mail_from": "x@forger.example",
                               "rcpt_to": "postmaster@b.example",
                               "quoted_message_id": "<j-q@m.example>",
                               "quoted_account": "acct_1"}}}


@pytest.mark.parametrize(("type_", "kind"), [("bounced", "hard"), ("complained", "complaint")])
async def test_a_quoted_report_suppresses_for_its_account_alone_and_counts_nothing(
        applier, redis_url, type_, kind):
    """Only our Message-ID quoted: the account's own ``reported`` entry with the evidence; no
    rate, no global entry, no job status, no status event; applied once."""
    worker, bus, store = applier
    gate: Gate = worker._gate
    await _sent(gate, "j-q", {})
    event = ProviderEvent(**{**QUOTED, "type": type_, "kind": kind, "job_id": "j-q",
                             "event_id": f"q-{type_}"})
    for _ in range(2):
        incoming: Any = FakeMessage(event.to_json())
        await worker.handle(incoming)
    assert bus.events == [] and bus.dead == []
    [entry] = await store.check("bob@example.com", account_id="acct_1")
    assert (entry["scope"], entry["account_id"], entry["reason"], entry["actor"],
            entry["source"]) == ("account", "acct_1", "reported", "recipient", "job:j-q")
    assert "quoted Message-ID <j-q@m.example> and X-Outbox-Account acct_1" in entry["detail"]
    assert "from 203.0.113.9 (MAIL FROM x@forger.example" in entry["detail"]
    assert await store.check("bob@example.com", account_id="acct_other") == []  # not global
    assert (await gate.job_state("acct_1", "j-q"))["st"] == "sent"
    client = Redis.from_url(redis_url)
    rep = await client.hgetall(keys.reputation("acct_1", "email"))
    assert (rep.get(b"S"), rep.get(b"H", b"0"), rep.get(b"C", b"0")) == (b"1", b"0", b"0")
    assert await client.llen(keys.recent("acct_1")) == 0
    await client.aclose()
    counter = worker._metrics.provider_events
    assert counter.labels("smtp", type_, "quoted")._value.get() == 1
    assert counter.labels("smtp", type_, "duplicate")._value.get() == 1


async def test_a_quoted_soft_bounce_or_delivery_changes_nothing(applier):
    worker, bus, store = applier
    await _sent(worker._gate, "j-qs", {})
    for type_, kind in (("soft_bounced", "soft"), ("delivered", None)):
        await worker.apply(ProviderEvent(**{**QUOTED, "type": type_, "kind": kind,
                                            "job_id": "j-qs", "event_id": f"qs-{type_}"}))
    assert bus.events == [] and await store.check("bob@example.com", account_id="acct_1") == []
    assert (await worker._gate.job_state("acct_1", "j-qs"))["st"] == "sent"


async def test_a_quoted_event_without_account_and_job_is_not_applied(applier):
    worker, bus, store = applier
    problem = await worker.apply(ProviderEvent(**{**QUOTED, "provider": "ses",
                                                  "account_id": None, "job_id": None}))
    assert problem and "not believed" in problem
    assert await store.check("bob@example.com") == []
