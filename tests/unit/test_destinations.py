"""Destination shaping: the slow-down rules (data), the state machine on a fake clock, and its
records on Redis (single and Cluster)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest

from suppression import keys
from suppression.classify import classify_reply, slow_down
from suppression.classify_rules import SLOW_DOWN_RULES
from suppression.destinations import (
    CUT_SPACING,
    NORMAL,
    PAUSED,
    SLOWED,
    DestinationStore,
    Params,
    Record,
    describe,
    destination_id,
    provider_of,
    refused,
    view,
)
from suppression.roundtrip import Client

P = Params(rate=10.0, decrease=0.5, min_rate=1.0, hold=60.0, step=2.0, step_period=30.0,
           pause_after=3, window=600.0, pause=900.0)
GMAIL = ("421-4.7.28 [203.0.113.42] Our system has detected an unusual rate of unsolicited mail "
         "originating from your IP address. - gsmtp")


# --- the rules (data) -----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "pattern", "example"), SLOW_DOWN_RULES,
                         ids=[r[0] for r in SLOW_DOWN_RULES])
def test_every_rule_matches_its_example_first(name: str, pattern: str, example: str) -> None:
    assert re.search(pattern, example.lower())
    assert slow_down(example) == name  # no earlier rule takes it


@pytest.mark.parametrize("reply", [
    "421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints - "
    "4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your "
    "DKIM domain.\n421 4.7.28 To protect our users from spam - gsmtp",
    "451 4.7.651 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
    "reputation.",
    "421 Too many connections from your IP",
])
def test_provider_slow_downs_are_found(reply: str) -> None:
    assert slow_down(reply) is not None


@pytest.mark.parametrize("reply", [
    "550 5.7.28 Our system has detected an unusual rate of unsolicited mail",  # permanent
    "554 5.7.1 rate limited forever",                                          # permanent
    "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
    "additional messages from being delivered.",                               # one mailbox
    "452 4.2.2 The email account that you tried to reach is over quota",
    "421 4.4.2 Timeout - closing connection",
    "250 2.0.0 OK",
    "",
])
def test_other_replies_are_not_slow_downs(reply: str) -> None:
    assert slow_down(reply) is None


def test_the_classify_command_names_the_slow_down_rule(capsys) -> None:
    from outbox.cli import main

    assert main(["classify", GMAIL]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["slow_down"] == "google-unsolicited-rate" and out["kind"] == "block"
    assert main(["classify", "550 5.1.1 unknown user"]) == 0
    assert json.loads(capsys.readouterr().out)["slow_down"] is None


def test_a_slow_down_keeps_its_classified_outcome() -> None:
    out = classify_reply(GMAIL)
    assert out.retryable and not out.permanent and out.kind == "block"


# --- provider groups ------------------------------------------------------------------------

@pytest.mark.parametrize(("domain", "mx", "group"), [
    ("gmail.com", (), "google"), ("GoogleMail.com", (), "google"),
    ("corp.example", ("aspmx.l.google.com",), "google"),
    ("corp.example", ("corp-example.mail.protection.outlook.com",), "corp.example"),
    ("hotmail.com", (), "microsoft"), ("outlook.com", (), "microsoft"),
    ("msn.com", (), "microsoft"),
    ("hotmail.it", (), "microsoft"), ("yahoo.es", (), "yahoo"), ("aol.com", (), "yahoo"),
    ("ymail.com", (), "yahoo"), ("other.example", ("mx.other.example",), "other.example"),
    ("yahoo.example.org", (), "yahoo.example.org"),
])
def test_provider_of(domain: str, mx: tuple[str, ...], group: str) -> None:
    assert provider_of(domain, mx) == group


# --- the state machine on a fake clock ------------------------------------------------------

def test_normal_without_a_record() -> None:
    assert view(None, 1000.0, P).state == NORMAL and view(None, 1000.0, P).rate is None


def test_slow_then_recover_step_by_step() -> None:
    t = 1000.0
    cut = refused(None, t, P, reply=GMAIL, rule="google-unsolicited-rate")
    assert cut.state == SLOWED and not cut.paused and cut.record is not None
    rec = cut.record
    assert view(rec, t, P).rate == 5.0                    # 10 x 0.5
    assert view(rec, t + 59, P).rate == 5.0               # held
    assert view(rec, t + 60, P).rate == 7.0               # +2 at the end of the hold
    assert view(rec, t + 89, P).rate == 7.0
    assert view(rec, t + 90, P).rate == 9.0
    back = view(rec, t, P).until
    assert back == t + 60 + 3 * 30                        # ceil((10 - 5) / 2) steps
    assert view(rec, back - 0.001, P).state == SLOWED
    assert view(rec, back, P) == view(None, back, P)      # normal again
    assert view(rec, t, P).reply.startswith("421-4.7.28")


def test_replies_in_flight_are_one_signal() -> None:
    t = 1000.0
    rec = refused(None, t, P, reply=GMAIL, rule="g").record
    again = refused(rec, t + CUT_SPACING / 2, P, reply=GMAIL, rule="g")
    assert again.record is None and again.state == SLOWED


def test_a_second_cut_halves_the_rate_now_never_below_the_minimum() -> None:
    params = Params(rate=10.0, decrease=0.5, min_rate=2.0, hold=60, step=2, step_period=30,
                    pause_after=10, window=600, pause=900)
    t = 1000.0
    rec = refused(None, t, params, reply="r", rule="g").record
    rec = refused(rec, t + 5, params, reply="r", rule="g").record
    assert rec is not None and view(rec, t + 5, params).rate == 2.5
    rec = refused(rec, t + 10, params, reply="r", rule="g").record
    assert rec is not None and view(rec, t + 10, params).rate == 2.0
    assert rec.since == t and len(rec.cuts) == 3


def test_keeps_refusing_pauses_then_resumes_on_its_own() -> None:
    t = 1000.0
    rec: Record | None = None
    for i in range(P.pause_after):
        cut = refused(rec, t + 10 * i, P, reply=GMAIL, rule="g")
        rec = cut.record
    assert cut.paused and cut.state == PAUSED and rec is not None
    paused_at = t + 10 * (P.pause_after - 1)
    during = view(rec, paused_at + 1, P)
    assert during.state == PAUSED and during.rate == 0.0 and during.until == paused_at + P.pause
    # a reply during the pause changes nothing
    assert refused(rec, paused_at + 5, P, reply=GMAIL, rule="g").record is None
    after = view(rec, paused_at + P.pause, P)
    assert after.state == SLOWED and after.rate == P.min_rate + P.step
    assert view(rec, after.until or 0, P).state == NORMAL


def test_cuts_outside_the_window_do_not_count_toward_a_pause() -> None:
    t = 1000.0
    rec = None
    for i in range(P.pause_after + 2):
        cut = refused(rec, t + i * (P.window / 2 + 1), P, reply="r", rule="g")
        rec = cut.record
        assert cut.state == SLOWED


def test_cuts_count_across_recoveries_within_the_window() -> None:
    t, rec = 1000.0, None
    for i in range(P.pause_after):  # each after the last recovered
        cut = refused(rec, t + 160 * i, P, reply="r", rule="g")
        rec = cut.record
    assert cut.paused


def test_a_new_episode_after_recovery_starts_afresh() -> None:
    t = 1000.0
    rec = refused(None, t, P, reply="r", rule="g").record
    assert rec is not None
    later = (view(rec, t, P).until or 0) + 1
    again = refused(rec, later, P, reply="r2", rule="g").record
    assert again is not None and again.since == later and again.cuts == (t, later)
    assert view(again, later, P).rate == 5.0


def test_record_round_trips_through_its_fields() -> None:
    rec = refused(None, 1000.0, P, reply=GMAIL, rule="g").record
    assert rec is not None
    assert Record.parse(rec.fields()) == rec
    assert Record.parse({}) is None


# --- Redis: single and Cluster --------------------------------------------------------------

def _name() -> str:
    return destination_id("google", f"relay-{uuid.uuid4().hex[:8]}:25")


@pytest.mark.backends
async def test_store_cuts_once_per_signal_across_workers(redis: Client) -> None:
    store, name = DestinationStore(redis, P), _name()
    t = 5000.0
    cuts = await asyncio.gather(*(store.refused(name, t, reply=GMAIL, rule="g")
                                  for _ in range(10)))
    assert sum(1 for c in cuts if c.record is not None) == 1
    record = await store.get(name)
    assert record is not None and view(record, t, P).rate == 5.0
    assert name in await store.all()
    ttl = await redis.pttl(keys.destination(name))
    assert (60 + 90 + 60) * 1000 < ttl <= 600 * 1000  # the window outlasts the recovery
    assert describe(name, view(record, t, P))["relay"] == name.partition("@")[2]


@pytest.mark.backends
async def test_store_paces_a_slowed_destination(redis: Client) -> None:
    store, name = DestinationStore(redis, P), _name()
    t = 5000.0
    assert await store.admit(name, 5.0, t) == 0            # no record: nothing paced
    await store.refused(name, t, reply=GMAIL, rule="g")
    assert await store.admit(name, 5.0, t) == 0
    assert await store.admit(name, 5.0, t) == pytest.approx(0.2)
    assert await store.admit(name, 5.0, t + 0.2) == 0
    assert await store.clear(name) is True
    assert await store.get(name) is None and name not in await store.all()


@pytest.mark.backends
async def test_store_pauses_after_repeated_cuts(redis: Client) -> None:
    store, name = DestinationStore(redis, P), _name()
    last = None
    for i in range(P.pause_after):
        last = await store.refused(name, 5000.0 + 10 * i, reply=GMAIL, rule="g")
    assert last is not None and last.paused
    record = await store.get(name)
    assert view(record, 5030.0, P).state == PAUSED


async def test_index_drops_expired_members(redis: Client) -> None:
    store, name = DestinationStore(redis, P), _name()
    await redis.sadd(keys.DESTINATIONS, name)
    assert name not in await store.all()
    assert not await redis.sismember(keys.DESTINATIONS, name)


def test_key_kinds() -> None:
    assert keys.kind_of(keys.destination("google@r:25")) == "destination"
    assert keys.kind_of(keys.DESTINATIONS) == "destinations"
