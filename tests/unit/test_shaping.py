"""sender.shaping on a fake clock and the test Redis: what a slow-down reply does to its
destination's admission, and nothing to the others."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sender.channels.base import SendFailure, SendResult
from sender.metrics import Metrics
from sender.models import parse_event
from sender.shaping import ShapedChannel, Shaping
from suppression.classify import classify_reply
from suppression.destinations import DestinationStore, Params
from suppression.roundtrip import Client

P = Params(rate=10.0, decrease=0.5, min_rate=1.0, hold=60.0, step=2.0, step_period=30.0,
           pause_after=3, window=600.0, pause=900.0)
GMAIL = "421 4.7.28 [203.0.113.42] Our system has detected an unusual rate of unsolicited mail"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _failure(reply: str) -> SendFailure:
    return SendFailure(classify_reply(reply), reply, "smtp")


@pytest.fixture
def parts(redis: Client) -> tuple[Shaping, Clock, Metrics, list[Any], str]:
    clock, metrics, events = Clock(), Metrics(CollectorRegistry()), []
    relay = f"relay-{uuid.uuid4().hex[:8]}:25"

    async def publish(key: str, event: dict[str, Any]) -> None:
        events.append((key, event))

    shaping = Shaping(DestinationStore(redis, P), relay_for=lambda _category, _account: relay,
                      metrics=metrics, publish=publish, clock=clock, refresh_every=1.0)
    return shaping, clock, metrics, events, relay


def _state(metrics: Metrics, relay: str, state: str) -> float | None:
    return metrics.registry.get_sample_value("outbox_destination_state", {
        "destination": "google", "relay": relay, "state": state})


@pytest.mark.backends
async def test_a_slow_down_paces_its_destination_only(parts) -> None:
    shaping, clock, metrics, events, relay = parts
    try:
        assert await shaping.admit("email", "a@gmail.com", "transactional") == 0
        await shaping.refused("a@gmail.com", "transactional", _failure("550 5.1.1 unknown"))
        await shaping.refused("a@gmail.com", "transactional", _failure(GMAIL))
        assert _state(metrics, relay, "slowed") == 1
        # 5 messages a second: one now, the next 200 ms later
        assert await shaping.admit("email", "b@googlemail.com", "marketing") == 0
        assert await shaping.admit("email", "c@gmail.com", "transactional") == 200
        assert await shaping.admit("email", "d@example.com", "transactional") == 0
        assert await shaping.admit("sms", "+85291234567", "transactional") == 0
        clock.now += 0.2
        assert await shaping.admit("email", "c@gmail.com", "transactional") == 0
        assert events == []
        # recovery needs no write: the state follows from the clock
        clock.now += 60 + 3 * 30
        await shaping.refresh(force=True)
        assert _state(metrics, relay, "normal") == 1
        assert await shaping.admit("email", "c@gmail.com", "transactional") == 0
    finally:
        await shaping.stop()


@pytest.mark.backends
async def test_repeated_slow_downs_pause_with_one_event_then_resume(parts) -> None:
    shaping, clock, metrics, events, relay = parts
    try:
        for _ in range(P.pause_after):
            await shaping.refused("a@gmail.com", None, _failure(GMAIL))
            clock.now += 10
        assert _state(metrics, relay, "paused") == 1
        assert [key for key, _ in events] == ["destination.paused"]
        event = events[0][1]
        assert (event["type"], event["destination"], event["relay"]) == (
            "destination", "google", relay)
        assert event["reason"] == "google-unsolicited-rate" and event["detail"] == GMAIL
        # a client reading outbox.status takes it as a status event of no account
        parsed = parse_event(json.dumps(event).encode(), "destination.paused")
        assert (parsed.status, parsed.account_id, parsed.channel) == ("paused", None, None)
        assert (parsed.model_extra or {})["destination"] == "google"
        wait = await shaping.admit("email", "b@gmail.com", None)
        assert wait == pytest.approx((P.pause - 10) * 1000, abs=1)
        clock.now += P.pause
        await shaping.refresh(force=True)
        assert _state(metrics, relay, "slowed") == 1
        assert await shaping.admit("email", "b@gmail.com", None) == 0
    finally:
        await shaping.stop()


async def test_the_wrapped_channel_reports_refusals_and_passes_everything_through(
        parts) -> None:
    shaping, _clock, metrics, _events, relay = parts

    class Refusing:
        name, provider, relays, stopped = "email", "smtp", "the relays", False

        async def send(self, job: Any, sender: Any = None) -> SendResult:
            raise _failure(GMAIL)

        def stop(self) -> None:
            self.stopped = True

        async def close(self) -> None:
            pass

    inner = Refusing()
    channel = ShapedChannel(inner, shaping)
    job = type("Job", (), {"to": "x@gmail.com", "category": "transactional"})()
    with pytest.raises(SendFailure) as caught:
        await channel.send(job)
    assert caught.value.outcome.retryable  # the job's outcome is the reply's, unchanged
    assert metrics.registry.get_sample_value("outbox_destination_cuts_total", {
        "destination": "google", "relay": relay}) == 1
    assert channel.relays == "the relays" and channel.name == "email"
    channel.stop()
    assert inner.stopped
    await channel.close()


@pytest.mark.backends
async def test_a_cut_seen_by_one_process_slows_the_others_within_a_refresh(redis) -> None:
    """Two worker processes (two Shaping objects on one Redis): one gets the reply, the other
    paces the destination from its next refresh (at most a second later), sharing one pace."""
    clock, relay = Clock(), f"relay-{uuid.uuid4().hex[:8]}:25"
    one, two = (Shaping(DestinationStore(redis, P), relay_for=lambda _c, _a: relay, clock=clock)
                for _ in range(2))
    try:
        assert await two.admit("email", "a@gmail.com", None) == 0  # read: nothing slowed
        await one.refused("a@gmail.com", None, _failure(GMAIL))
        assert await two.admit("email", "b@gmail.com", None) == 0  # its cache: not yet
        clock.now += 1.0
        assert await two.admit("email", "c@gmail.com", None) == 0  # refreshed: paced, first
        assert await one.admit("email", "d@gmail.com", None) == 200  # the same pace
        assert await two.admit("email", "e@gmail.com", None) == 200
    finally:
        await one.stop()
        await two.stop()


async def test_a_long_wait_is_given_as_the_longest_retry_tier_within_it(redis) -> None:
    """Paused for 900 s with the default tiers: parked 300 s at a time (back no later than the
    destination), not 1800 s (the smallest tier covering 900)."""
    clock, relay = Clock(), f"relay-{uuid.uuid4().hex[:8]}:25"
    shaping = Shaping(DestinationStore(redis, P), relay_for=lambda _c, _a: relay, clock=clock,
                      tiers=(10, 60, 300, 1800, 7200))
    try:
        for _ in range(P.pause_after):
            await shaping.refused("a@gmail.com", None, _failure(GMAIL))
            clock.now += 10
        assert await shaping.admit("email", "b@gmail.com", None) == 300_000
        clock.now += P.pause - 10 - 5
        assert await shaping.admit("email", "b@gmail.com", None) == 5_000  # under every tier
    finally:
        await shaping.stop()


def test_the_relay_of_a_destination_follows_the_account_and_category_routes() -> None:
    """``google@<relay>``: the relay a send of that account and category would use now."""
    from config import parse_smtp_url
    from sender.channels.relays import Relays
    from sender.channels.smtp import SmtpPool

    pools = [SmtpPool(parse_smtp_url(f"smtp://127.0.0.1:{port}"), size=1, timeout=1,
                      max_messages=1, idle_timeout=1) for port in (2501, 2502, 2503)]
    relays = Relays(pools, routes={"marketing": 2}, account_routes={"acct_bank": 1})
    shaping = Shaping(DestinationStore(None, P), relay_for=relays.route)  # no Redis needed
    assert shaping.destination("a@gmail.com", "transactional") == "google@127.0.0.1:2501"
    assert shaping.destination("a@gmail.com", "marketing") == "google@127.0.0.1:2503"
    assert shaping.destination("a@gmail.com", "marketing", "acct_bank") == \
        "google@127.0.0.1:2502"
    relays.relays[1].up = False  # acct_bank's first relay down: its traffic on the next
    assert shaping.destination("a@hotmail.com", None, "acct_bank") == "microsoft@127.0.0.1:2501"
