"""The one suppression writer (:mod:`suppression.entries`): every path that suppresses an
address (the gate after a send, the support store, the unsubscribe handler, the event applier)
leaves an entry of the same shape, under the key that both ``SuppressionStore.check`` and the
gate's ``pre_send`` read; on a single Redis and on a Redis Cluster (``backends``: each test's
accounts and addresses are its own)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from sender.metrics import Metrics
from sender.provider_event_applier import EventApplier
from suppression import entries, keys
from suppression.entries import BadEntry
from suppression.gate import Counts, Gate
from suppression.store import SuppressionStore
from suppression.tokens import Unsubscribe, make_token
from webhooks.handlers import UnsubscribeWebhooks, WebhookMetrics

SECRET = "a-secret-of-at-least-16"
_n = iter(range(10**9))
pytestmark = pytest.mark.backends
N: Any = None  # this test's names (the autouse fixture below)


@pytest.fixture(autouse=True)
def _own_names(names, monkeypatch):
    monkeypatch.setitem(globals(), "N", names)


def mail(address: str) -> str:
    return N.email(address)


def acct(base: str) -> str:
    return N.account(base)


class FakeBus:
    """What the applier and the unsubscribe handler publish, kept for the asserts."""

    def __init__(self) -> None:
        self.published: list[Any] = []

    async def publish_event(self, event: dict[str, Any]) -> None:
        self.published.append(event)

    async def publish_to_queue(self, queue: str, body: bytes, **_: Any) -> None:
        self.published.append((queue, body))

    async def publish(self, exchange: str, routing_key: str, body: bytes, **_: Any) -> None:
        self.published.append((exchange, routing_key))

    async def publish_dead(self, body: bytes, reason: str, *_: Any, **__: Any) -> None:
        self.published.append(("dead", reason))


def applier(redis: Redis, gate: Gate) -> EventApplier:
    bus: Any = FakeBus()
    return EventApplier(bus=bus, gate=gate, store=SuppressionStore(redis), redis=redis,
                        metrics=Metrics(CollectorRegistry()))


def event_body(**fields: Any) -> bytes:
    base = {"provider": "ses", "type": "bounced", "channel": "email", "recipient": None,
            "provider_message_id": "pm", "message_id": None, "job_id": "j-ev", "kind": "hard",
            "reason": "userunknown", "diagnostic": "550 5.1.1 no such user",
            "at": "2026-01-01T00:00:00.000Z", "event_id": f"e{next(_n)}",
            "account_id": acct("acct_e")}
    return json.dumps({**base, **fields}).encode()


class _Message:
    def __init__(self, body: bytes) -> None:
        self.body: bytes = body
        self.headers: dict[str, Any] = {}

    async def ack(self) -> None:
        pass


def incoming(body: bytes) -> Any:
    """A delivery from ``outbox.events`` as the applier sees it."""
    return _Message(body)


async def by_gate(redis: Redis, gate: Gate) -> tuple[str, str, str | None]:
    await gate.post_send(acct("acct_g"), "j-hb", status="bounced", attempt=1,
                         reason="userunknown", counts=Counts(sends=1, hard=1),
                         address=mail("Gate@Example.com"))
    return "email", mail("gate@example.com"), None


async def by_store(redis: Redis, gate: Gate) -> tuple[str, str, str | None]:
    await SuppressionStore(redis).add(mail("Store@Example.com"), channel="email",
                                      reason="manual",
                                      source="cli:alice", actor="alice")
    return "email", mail("store@example.com"), None


async def by_unsubscribe(redis: Redis, gate: Gate) -> tuple[str, str, str | None]:
    bus = FakeBus()
    settings: Any = SimpleNamespace(secret_keys=(SECRET,))
    publisher: Any = bus
    handler = UnsubscribeWebhooks(settings, publisher, SuppressionStore(redis),
                                  WebhookMetrics(CollectorRegistry()), redis)
    app = web.Application()
    app.add_routes(handler.routes())
    token = make_token(SECRET, Unsubscribe(acct("acct_u"), "email", mail("Unsub@Example.com"),
                                           "j-u"))
    async with TestClient(TestServer(app)) as client:
        answer = await client.post(f"/u/{token}", data="List-Unsubscribe=One-Click")
        assert answer.status == 200
    # the recipient event, then the event for the job's status to the worker
    assert [p[0] for p in bus.published] == ["outbox.status", "outbox.events"]
    assert bus.published[0][1] == "recipient.email.unsubscribed"
    return "email", mail("unsub@example.com"), acct("acct_u")


async def by_event(redis: Redis, gate: Gate) -> tuple[str, str, str | None]:
    await applier(redis, gate).handle(incoming(event_body(
        recipient=mail("Event@Example.com"))))
    return "email", mail("event@example.com"), None


async def by_unattributed_event(redis: Redis, gate: Gate) -> tuple[str, str, str | None]:
    await applier(redis, gate).handle(incoming(event_body(
        type="complained", kind="complaint", recipient=mail("Nobody@Example.com"),
        account_id=None,
        job_id=None)))
    return "email", mail("nobody@example.com"), None


async def by_sms_stop_event(redis: Redis, gate: Gate) -> tuple[str, str, str | None]:
    await applier(redis, gate).handle(incoming(event_body(
        provider="twilio", channel="sms", type="unsubscribed", kind=None, reason="sms_stop",
        recipient=f"{N.phone()[:4]} {N.phone()[4:8]} {N.phone()[8:]}",
        account_id=acct("acct_s"), job_id=None)))
    return "sms", N.phone(), acct("acct_s")


PATHS = [by_gate, by_store, by_unsubscribe, by_event, by_unattributed_event, by_sms_stop_event]


@pytest.mark.parametrize("write", PATHS, ids=[p.__name__ for p in PATHS])
async def test_every_path_writes_the_same_shape_where_both_readers_find_it(redis, gate, write):
    channel, address, account = await write(redis, gate)
    key = entries.key(channel, address, account)
    stored = {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}
    assert tuple(sorted(stored)) == tuple(sorted(entries.FIELDS))
    assert stored["source"] and int(stored["at"]) > 0 and stored["actor"]
    assert await redis.ttl(key) == -1  # no expiry: kept until support removes it

    [found] = await SuppressionStore(redis).check(address,
                                                  account_id=account or acct("acct_any"),
                                                  channel=channel)
    assert (found["address"], found["reason"]) == (address, stored["reason"])
    assert found["scope"] == ("account" if account else "global")

    d = await gate.pre_send(account or acct("acct_any"), f"j{next(_n)}", owner="w",
                            redelivered=False, expired=False, attempt=1, channel=channel,
                            address=address)
    assert (d.verdict, d.reason) == ("suppressed", stored["reason"])


async def test_evidence_names_what_taught_the_entry(redis, gate):
    await by_gate(redis, gate)
    await by_unsubscribe(redis, gate)
    await by_event(redis, gate)
    hb = await redis.hgetall(keys.global_suppression("email", mail("gate@example.com")))
    assert (hb[b"source"], hb[b"account"], hb[b"detail"], hb[b"actor"]) == (
        b"job:j-hb", acct("acct_g").encode(), b"userunknown", b"system")
    un = await redis.hgetall(keys.account_suppression(acct("acct_u"), "email",
                                                      mail("unsub@example.com")))
    assert (un[b"source"], un[b"detail"], un[b"actor"]) == (b"job:j-u", b"one-click",
                                                             b"recipient")
    ev = await redis.hgetall(keys.global_suppression("email", mail("event@example.com")))
    assert ev[b"source"] == b"job:j-ev"
    assert ev[b"detail"] == b"550 5.1.1 no such user | received 2026-01-01T00:00:00.000Z"


def test_the_scope_rule():
    hb = entries.entry("email", "A@Example.com", "hard_bounce", account_id="acct_1")
    assert (hb.key, hb.account_id, hb.fields["account"]) == (
        "outbox:supp:email:a@example.com", None, "acct_1")  # a fact; the account is evidence
    un = entries.entry("email", "a@example.com", "unsubscribe", account_id="acct_1")
    assert un.key == "outbox:{acct:acct_1}:supp:email:a@example.com"
    assert un.fields["actor"] == "recipient" and hb.fields["actor"] == "system"
    assert entries.entry("email", "a@example.com", "manual").account_id is None
    assert entries.entry("email", "a@example.com", "manual", account_id="a1").account_id == "a1"
    assert entries.entry("sms", "91234567", "dnc_register").key == "outbox:dnc:+85291234567"
    with pytest.raises(BadEntry, match="--account"):
        entries.entry("sms", "+85291234567", "sms_stop")
    with pytest.raises(BadEntry, match="reason must be one of"):
        entries.entry("email", "a@example.com", "bored")
    with pytest.raises(BadEntry, match="U\\+200B"):
        entries.entry("email", "a\u200b@example.com", "complaint")
    with pytest.raises(BadEntry, match="DNC"):
        entries.entry("email", "a@example.com", "dnc_register")


async def test_a_replaced_entry_keeps_nothing_of_the_old_one(redis, gate):
    store = SuppressionStore(redis)
    await store.add(mail("old@example.com"), channel="email", reason="manual", expires=3600,
                    source="cli:alice", actor="alice")
    await gate.post_send(acct("acct_r"), "j-r", status="bounced", attempt=1,
                         reason="userunknown",
                         counts=Counts(sends=1, hard=1), address=mail("old@example.com"))
    [entry] = await store.check(mail("old@example.com"))
    assert (entry["reason"], entry["actor"], entry["expires_at"]) == ("hard_bounce", "system",
                                                                      None)
    assert await redis.ttl(keys.global_suppression("email", mail("old@example.com"))) == -1


async def test_an_event_naming_no_address_writes_nothing(redis, gate, redis_backend):
    """A signed provider event whose recipient has no canonical form: no entry under any key
    (on the shared cluster: none naming this test's recipient)."""
    await applier(redis, gate).handle(incoming(event_body(
        recipient=f"victim.{N.suffix}\u200b@example.com")))
    pattern = "outbox:*supp*" + (f"{N.suffix}*" if redis_backend == "cluster" else "")
    assert [k async for k in redis.scan_iter(match=pattern)] == []
