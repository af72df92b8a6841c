"""Adding a channel is one module and one line: a throwaway third channel (``push``,
:mod:`tests.throwaway_channel`), declared exactly as a real one would be, reaches the topology,
the job parser, the client's routing, the senders, the keys and suppression checks, provider
events, the CLI's choices, the Lua scripts' worst account state, and every generated list
(``python -m outbox.generate``: the backlog alert, the RabbitMQ definitions, the docs'
channel table); withdrawn afterwards. The admin page's list: tests/integration/test_admin_page.py
and test_admin_api.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from config.settings import DEFAULT_RETRY_TIERS
from sender.channels import registry
from sender.models import InvalidJob
from suppression import channels, keys
from tests.throwaway_channel import FakePush, PushJob, declared


@pytest.fixture
def push() -> Iterator[registry.Delivery]:
    with declared() as delivery:
        yield delivery


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


# --- the lists outside the code: generated (outbox/generate.py) ----------------------------


def test_a_third_channel_reaches_every_generated_file_without_a_hand_edit(push, tmp_path):
    """A copy of the generated files, rewritten by the generator with ``push`` declared: the
    backlog alert watches its lanes, the definitions declare and bind them, the docs' channel
    table has its row; a second pass finds nothing stale."""
    import json
    import shutil

    from outbox import generate

    root = tmp_path / "repo"
    for path in generate.targets():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(generate.ROOT / path, root / path)
    [doc] = [p for p in generate.documents() if generate.TABLE_START in (root / p).read_text()]
    assert set(generate.stale(root, write=True)) == {generate.RULES, generate.DEFINITIONS, doc}
    assert generate.stale(root) == []

    rules = (root / generate.RULES).read_text()
    assert 'outbox\\\\.push|outbox\\\\.push\\\\.bulk"' in rules
    defs = json.loads((root / generate.DEFINITIONS).read_text())
    assert {"outbox.push", "outbox.push.bulk"} <= {q["name"] for q in defs["queues"]}
    assert ("push.bulk", "outbox.push.bulk") in {(b["routing_key"], b["destination"])
                                                 for b in defs["bindings"]}
    table = _channel_table((root / doc).read_text())
    assert table["push"] == ["`push`", "device token", "`unsubscribe`", "`outbox.push` (`push`)",
                             "`outbox.push.bulk` (`push.bulk`)",
                             "`tests.throwaway_channel:build`"]
    assert list(table) == ["email", "sms", "push"]
    _backlog_fires_for(root, "outbox.push.bulk")


def _channel_table(text: str) -> dict[str, list[str]]:
    """The rows of the README's generated channel table, by channel."""
    from outbox.generate import TABLE_END, TABLE_START

    block = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in block.strip().splitlines()[2:]]
    return {row[0].strip("`"): row for row in rows}


def _backlog_fires_for(root: Path, queue: str) -> None:
    """promtool runs the generated rules: the backlog alert fires for ``queue`` (the third
    channel's bulk lane), not for a retry queue."""
    import shutil
    import subprocess

    import yaml

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's `prometheus` package"
    series = "outbox_queue_depth{job=\"outbox-worker\", instance=\"w:9100\", queue=\"%s\"}"
    case = {"rule_files": [str(root / "deploy/prometheus/outbox-rules.yml")],
            "evaluation_interval": "1m",
            "tests": [{"interval": "1m",
                       "input_series": [{"series": series % queue, "values": "20000x30"},
                                        {"series": series % "outbox.retry.60",
                                         "values": "50000x30"}],
                       "alert_rule_test": [{
                           "alertname": "OutboxQueueBacklog", "eval_time": "20m",
                           "exp_alerts": [{"exp_labels": {"severity": "warning",
                                                          "queue": queue},
                                           "exp_annotations": {
                                               "summary": f"{queue} holds 20000 jobs for "
                                                          f"10 minutes"}}]}]}]}
    test = root / "backlog-test.yml"
    test.write_text(yaml.safe_dump(case))
    done = subprocess.run([promtool, "test", "rules", str(test)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
