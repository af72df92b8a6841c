"""How a dead letter is read: its lane (where a replay sends it), its reason, the filters of
``outbox dead``, and a replayed copy's headers."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from outbox.dead import since_arg
from sender.deadletters import Filters, lane_of, read, replay_headers

DEATH = {"queue": "outbox.email.bulk", "reason": "delivery_limit", "exchange": "outbox.jobs",
         "routing-keys": ["email.bulk"], "count": 1}


def message(routing_key: str = "email", headers: dict[str, Any] | None = None,
            body: bytes = b'{"id": "j1", "account_id": "acct_1", "channel": "email"}',
            message_id: str | None = None) -> Any:
    return SimpleNamespace(routing_key=routing_key, headers=headers or {}, body=body,
                           message_id=message_id, timestamp=datetime(2026, 12, 1, tzinfo=UTC))


@pytest.mark.parametrize(("key", "headers", "lane"), [
    ("sms", {"x-outbox-routing-key": "sms.bulk"}, ("outbox.jobs", "sms.bulk")),
    ("email.bulk", {"x-death": [DEATH]}, ("outbox.jobs", "email.bulk")),
    ("", {"x-death": [{"queue": "outbox.events", "reason": "delivery_limit"}]},
     ("", "outbox.events")),
    ("email", {}, ("outbox.jobs", "email")),  # an older dead letter: its key is a lane
    ("events", {}, ("", "outbox.events")),
    # a poison event dead-lettered by the worker: its delivery came from the default exchange
    ("events", {"x-outbox-routing-key": "outbox.events"}, ("", "outbox.events")),
    ("email", {"x-outbox-routing-key": "nonsense"}, ("outbox.jobs", "email")),
    ("bounces", {}, None),  # evidence kept by the bounce listener: nowhere to go
])
def test_the_lane_of_a_dead_letter(key, headers, lane):
    assert lane_of(message(key, headers), headers) == lane


def test_a_dead_letter_is_read_with_its_reason_ids_and_time():
    ours = read(message(headers={"x-outbox-reason": "to: not an e-mail address"},
                        message_id="dead-1"))
    assert (ours.id, ours.reason, ours.account_id, ours.job_id) == (
        "dead-1", "to: not an e-mail address", "acct_1", "j1")
    brokers = read(message("email.bulk", {"x-death": [DEATH], "x-first-death-reason":
                                          "delivery_limit", "x-first-death-queue":
                                          "outbox.email.bulk"}))
    assert brokers.reason == "delivery_limit (from outbox.email.bulk)"
    assert brokers.id.startswith("h-") and brokers.id == read(message(
        "email.bulk", dict(brokers.headers))).id  # stable without a message id
    assert read(message(body=b"\xff not json")).job_id is None


def test_filters_select_by_id_account_reason_and_time():
    dead = read(message(headers={"x-outbox-reason": "Subject: Field required"},
                        message_id="dead-1"))
    assert Filters().match(dead)
    assert Filters(ids=frozenset({"dead-1"}), account_id="acct_1").match(dead)
    assert not Filters(ids=frozenset({"dead-2"})).match(dead)
    assert not Filters(account_id="acct_2").match(dead)
    assert Filters(reason="field REQUIRED").match(dead)
    assert not Filters(reason="bounce").match(dead)
    assert Filters(since=datetime(2026, 11, 30, tzinfo=UTC)).match(dead)
    assert not Filters(since=datetime(2026, 12, 2, tzinfo=UTC)).match(dead)


def test_a_replayed_copy_loses_the_dead_lettering_and_starts_again():
    headers = {"x-outbox-reason": "r", "x-outbox-routing-key": "email", "x-death": [DEATH],
               "x-outbox-attempt": 3, "x-outbox-first-seen": 1, "x-delivery-count": 2,
               "x-outbox-record": "a/j", "x-custom": "kept"}
    assert replay_headers(headers, 1000.5) == {"x-outbox-first-seen": 1000, "x-custom": "kept"}


def test_since_takes_a_time_or_an_age():
    assert since_arg("2026-12-01T10:00:00Z") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert since_arg("2026-12-01T10:00:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    since = since_arg("2h")
    ago = datetime.now(UTC) - since
    assert timedelta(hours=2) <= ago < timedelta(hours=2, seconds=5)
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        since_arg("yesterday")
