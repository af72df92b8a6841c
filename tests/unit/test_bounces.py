"""The bounce listener's pieces without a network: its per-peer buckets, its configuration,
and ``outbox bounces`` refusing to start without a bounce domain."""

from __future__ import annotations

import pytest

from config import load_settings
from webhooks.bounces import ListenerConfig, PeerBuckets


def test_a_peer_gets_its_burst_then_the_rate_and_peers_are_apart():
    now = [0.0]
    buckets = PeerBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    assert buckets.take("192.0.2.2")  # another peer has its own bucket
    now[0] += 0.5  # one token back at 2/s
    assert [buckets.take("192.0.2.1") for _ in range(2)] == [True, False]
    now[0] += 100
    assert sum(buckets.take("192.0.2.1") for _ in range(10)) == 3  # never above the burst


def test_the_buckets_forget_the_least_recently_seen_peer_past_their_size():
    buckets = PeerBuckets(rate=0.001, burst=1, max_peers=2, clock=lambda: 0.0)
    assert buckets.take("a") and buckets.take("b") and not buckets.take("a")
    assert buckets.take("c")  # "b" (least recently seen) is forgotten, "a" kept
    assert not buckets.take("a")
    assert buckets.take("b")


def test_the_config_comes_from_the_settings_and_needs_a_bounce_domain():
    s = load_settings(bounce_domain="Bounces.Example", message_id_domain="m.example",
                      secret_key="new-key-0123456789abcdef,old-key-0123456789abcdef")
    c = ListenerConfig.from_settings(s)
    assert (c.domain, c.message_id_domain, c.max_bytes) == ("bounces.example", "m.example",
                                                             2 * 1024 * 1024)
    assert c.keys == ("new-key-0123456789abcdef", "old-key-0123456789abcdef")
    with pytest.raises(ValueError, match="OUTBOX_BOUNCE_DOMAIN"):
        ListenerConfig.from_settings(load_settings())


def test_outbox_bounces_refuses_to_start_without_a_bounce_domain(monkeypatch, capsys):
    import os

    from outbox import cli

    for key in list(os.environ):
        if key.startswith("OUTBOX_"):
            monkeypatch.delenv(key)
    assert cli.main(["--log-level", "ERROR", "bounces"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("outbox: OUTBOX_BOUNCE_DOMAIN is not set")


def test_the_worker_knows_the_listener_events_by_their_provider():
    from sender.provider_event_applier import LISTENER_PROVIDER
    from webhooks.providers import dsn

    assert LISTENER_PROVIDER == dsn.PROVIDER
