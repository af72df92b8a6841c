"""Adding a channel is one module and one line: a throwaway third channel (``push``), declared
here exactly as a real one would be, reaches the topology, the job parser, the client's routing,
the senders, the keys and suppression checks, provider events, the CLI's choices and the Lua
scripts' worst account state; withdrawn afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, Literal, cast

import pytest
import redis

from config import Settings
from config.settings import DEFAULT_RETRY_TIERS
from sender.channels import registry
from sender.channels.base import SendResult
from sender.models import InvalidJob, JobBase
from suppression import channels, keys
from suppression.address import AddressKind, BadAddress

# --- the "module" of the throwaway channel ---------------------------------------------------


def _token(address: str, _region: str) -> str:
    token = address.strip()
    if not token.startswith("push:") or len(token) < 8:
        raise BadAddress(f"not a device token: {address!r}")
    return token


DEVICE = AddressKind("device token", _token, lambda a: a.startswith("push:"))


class PushJob(JobBase):
    channel: Literal["push"]
    to: str
    title: str


class FakePush:
    name = "push"
    provider = "fakepush"

    async def send(self, job: Any, sender: tuple[str, ...] | None = None) -> SendResult:
        return SendResult(self.provider, f"fp-{job.id}")

    def stop(self) -> None: ...

    async def close(self) -> None: ...


def build(settings: Settings) -> FakePush:
    return FakePush()


# --- the one line ------------------------------------------------------------------------------


@pytest.fixture
def push() -> Iterator[registry.Delivery]:
    delivery = registry.declare(registry.Delivery(
        channels.Channel("push", DEVICE), PushJob, "outbox.push", build))
    try:
        yield delivery
    finally:
        registry.withdraw("push")
    assert "push" not in channels.names()


def test_the_built_in_channels_are_declared_once_in_order():
    assert channels.names() == ("email", "sms")
    assert [d.name for d in registry.deliveries()] == ["email", "sms"]
    assert registry.queues() == {"email": "outbox.email", "sms": "outbox.sms"}
    assert channels.choices() == "email or sms"


def test_a_third_channel_gets_its_queue_and_binding(push):
    from sender.topology import JOBS_EXCHANGE, definitions

    defs = definitions(DEFAULT_RETRY_TIERS)
    queue = next(q for q in defs["queues"] if q["name"] == "outbox.push")
    email = next(q for q in defs["queues"] if q["name"] == "outbox.email")
    assert queue["arguments"] == email["arguments"]  # quorum, dead-lettered, delivery limit
    assert {"source": JOBS_EXCHANGE, "destination": "outbox.push", "routing_key": "push"} \
        .items() <= next(b for b in defs["bindings"] if b["destination"] == "outbox.push").items()


def test_a_third_channel_is_parsed_routed_and_built(push):
    from sender.client import _guess_channel

    job = registry.parse_job(b'{"v": 1, "id": "p1", "account_id": "a", "channel": "push", '
                             b'"category": "transactional", "to": "push:abc", "title": "hi"}',
                             max_bytes=10_000)
    assert isinstance(job, PushJob) and job.to == "push:abc"
    with pytest.raises(InvalidJob, match="channel must be 'email', 'sms' or 'push'"):
        registry.parse_job(b'{"v": 1, "id": "x", "account_id": "a", "channel": "fax", '
                           b'"category": "transactional"}', max_bytes=10_000)
    assert _guess_channel(b'{"channel": "push"}') == "push"


async def test_the_worker_gets_a_sender_for_the_third_channel(push):
    from config import load_settings

    settings = load_settings(amqp_url="amqp://u:p@127.0.0.1:1/", redis_url="redis://127.0.0.1:1")
    senders = registry.build_senders(settings)  # no I/O: pools connect on first use
    try:
        assert isinstance(senders["push"], FakePush)
        assert "email" in senders and "sms" not in senders  # Twilio is not configured
    finally:
        for sender in senders.values():
            await sender.close()


def test_a_third_channel_has_keys_addresses_and_provider_events(push):
    from sender.provider_event_applier import _effects
    from sender.provider_events import ProviderEvent
    from suppression.entries import BadEntry, entry

    assert channels.normalise("push", " push:abc ") == "push:abc"
    assert channels.guess("push:abc") == "push"  # declared after email: first match wins
    with pytest.raises(BadEntry):
        entry("push", "nope", "manual", account_id="a")
    e = entry("push", "push:abc", "unsubscribe", account_id="a")
    assert e.key == keys.account_suppression("a", "push", "push:abc")
    event = ProviderEvent(provider="fakepush", type="unsubscribed", channel="push",
                          recipient="push:abc", provider_message_id=None, message_id=None,
                          job_id=None, kind=None, reason=None, diagnostic=None, at="now",
                          event_id="e1")
    assert _effects(event)[1] == "unsubscribe"


def test_the_cli_offers_a_third_channel(push):
    from outbox.cli import build_parser

    args = build_parser().parse_args(["suppression", "check", "push:abc", "--channel", "push"])
    assert args.channel == "push"


def test_the_cli_refuses_an_undeclared_channel():
    from outbox.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["suppression", "check", "push:abc", "--channel", "push"])


def test_the_account_state_is_the_worst_over_every_channel(push, redis_url):
    """A throttled push channel keeps the account throttled when e-mail is fine; a support
    unblock resets every channel's level. (The scripts used to read a third channel's level
    from the SMS slot and leave it out of the worst state.)"""
    from suppression.gate import POST_SEND, Counts, Gate
    from suppression.store import _SUPPORT, support_call

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    post, support = r.script_load(POST_SEND.source), r.script_load(_SUPPORT.source)
    gate = Gate(cast(Any, None), idempotency_ttl=3600)
    account = f"acct_{uuid.uuid4().hex[:8]}"
    r.hset(keys.state(account), mapping={"state": "throttled", "lvl:push": 1})
    k, a = gate.post_send_call(account, "j1", status="sent", attempt=1, channel="email",
                               counts=Counts(sends=1))
    assert int(r.evalsha(post, len(k), *k, *a)[0]) == 0  # no transition
    assert r.hget(keys.state(account), "state") == "throttled"

    r.hset(keys.state(account), mapping={"state": "blocked", "lvl:push": 2})
    k, a = support_call(account, "unblock", actor="t", reason="r", probation=60)
    assert keys.reputation(account, "push") in k
    assert r.evalsha(support, len(k), *k, *a)[0] == "ok"
    assert r.hmget(keys.state(account), "lvl:email", "lvl:sms", "lvl:push") == ["0", "0", "0"]
    k, a = gate.post_send_call(account, "j2", status="sent", attempt=1, channel="push",
                               counts=Counts(sends=1))
    r.evalsha(post, len(k), *k, *a)
    assert r.hget(keys.state(account), "state") == "active"
    r.close()
