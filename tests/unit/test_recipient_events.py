"""Recipient events without a wire: the README's example and tables against the declarations,
which provider events announce what, how ``outbox events`` binds and prints them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from outbox.jobs import event_bindings, event_line
from outbox.runtime import CliError
from sender.models import RECIPIENT_CHANGES, RecipientEvent, StatusEvent, parse_event
from sender.provider_events import ProviderEvent
from sender.recipient_events import Change, provider_change, routing_key
from tests.docs import section


def _section() -> str:
    return section("### Recipient events")


def _example() -> bytes:
    [block] = re.findall(r"```json\n(.*?)\n```", _section(), re.S)
    return block.encode()


def test_the_readme_example_is_a_recipient_event_with_its_routing_key() -> None:
    event = parse_event(_example(), "recipient.sms.unsubscribed")
    assert isinstance(event, RecipientEvent)
    assert routing_key(event.channel, event.change) == "recipient.sms.unsubscribed"
    assert event.routing_key in _section()


def test_the_readme_tells_when_each_change_is_published() -> None:
    rows = re.findall(r"^\| `(\w+)` \| ", _section(), re.M)
    assert set(rows) >= set(RECIPIENT_CHANGES)
    assert set(rows) - {"v", "id", "account_id", "channel", "address", "change", "source",
                        "at"} == set(RECIPIENT_CHANGES)


def test_an_event_is_the_shape_the_readme_shows() -> None:
    event = Change("acct_1", "email", "Ann@Example.COM", "suppressed", "cli").event(
        "1-a", "ann@example.com")
    assert set(event) == set(json.loads(_example()))
    assert (event["v"], event["type"], event["address"]) == (1, "recipient", "ann@example.com")


def test_status_and_recipient_events_are_told_apart() -> None:
    status = (b'{"v":1,"id":"j1","account_id":"a","channel":"email","status":"sent",'
              b'"at":"2026-01-02T03:04:05.678Z"}')
    assert isinstance(parse_event(status, "email.sent"), StatusEvent)
    assert isinstance(parse_event(_example()), RecipientEvent)
    with pytest.raises(ValueError):
        parse_event(_example().replace(b'"unsubscribed"', b'"teleported"'))
    with pytest.raises(ValueError):
        parse_event(b"not json")


def _event(**fields: Any) -> ProviderEvent:
    base = {"provider": "sendgrid", "type": "unsubscribed", "channel": "email",
            "recipient": "ann@example.com", "provider_message_id": None, "message_id": None,
            "job_id": "j1", "kind": None, "reason": "unsubscribe", "diagnostic": None,
            "at": "2026-01-02T03:04:05Z", "event_id": "e1", "account_id": "acct_1"}
    return ProviderEvent.model_validate({**base, **fields})


@pytest.mark.parametrize("fields,expected", [
    ({}, ("unsubscribed", "sendgrid")),
    ({"provider": "twilio", "channel": "sms", "recipient": "+85291234567",
      "reason": "sms_stop"}, ("unsubscribed", "sms_stop")),
    ({"provider": "unsubscribe", "diagnostic": "one-click"}, ("unsubscribed", "one_click")),
    ({"provider": "unsubscribe", "diagnostic": "unsubscribe page"},
     ("unsubscribed", "unsubscribe_page")),
    ({"provider": "ses", "type": "complained", "kind": "complaint", "reason": "abuse"},
     ("complained", "ses")),
    # Twilio's carrier filtering counts like a complaint but suppresses nothing: no change
    ({"provider": "twilio", "channel": "sms", "recipient": "+85291234567",
      "type": "complained", "kind": "filtered", "reason": "carrier"}, None),
    ({"type": "delivered"}, None),
    ({"type": "bounced", "kind": "hard", "reason": "userunknown"}, None),
])
def test_which_provider_events_change_a_recipient(fields: dict[str, Any],
                                                  expected: tuple[str, str] | None) -> None:
    assert provider_change(_event(**fields)) == expected


@pytest.mark.parametrize("statuses,kind,bindings", [
    ([], None, ["#"]),
    ([], "status", ["*.*"]),
    ([], "recipient", ["recipient.#"]),
    (["bounced"], None, ["*.bounced"]),
    (["unsubscribed"], None, ["*.unsubscribed", "recipient.*.unsubscribed"]),
    (["resubscribed", "sent"], None, ["*.sent", "recipient.*.resubscribed"]),
    (["unsubscribed"], "recipient", ["recipient.*.unsubscribed"]),
    (["blocked"], "status", ["*.blocked"]),
])
def test_outbox_events_binds_what_it_is_asked(statuses: list[str], kind: str | None,
                                              bindings: list[str]) -> None:
    assert event_bindings(statuses, kind) == bindings


@pytest.mark.parametrize("statuses,kind", [(["bounced"], "recipient"),
                                           (["resubscribed"], "status")])
def test_outbox_events_refuses_a_status_its_type_never_has(statuses: list[str],
                                                           kind: str) -> None:
    with pytest.raises(CliError, match="names no"):
        event_bindings(statuses, kind)


def test_a_recipient_event_prints_as_one_line() -> None:
    event = parse_event(_example(), "recipient.sms.unsubscribed")
    assert event_line(event) == ("2026-11-25T14:15:41.112Z  recipient.sms.unsubscribed  "
                                 "acct_1042  +85291234567  source=sms_stop")


async def test_an_address_without_a_canonical_form_announces_nothing() -> None:
    """The entry writer wrote nothing under it: no event, no error that would dead-letter
    the provider event (its job status still counts)."""
    from sender.recipient_events import RecipientEvents

    never: Any = None  # no Redis, no bus: neither may be reached
    events = RecipientEvents(never, never)
    assert await events.from_provider_event(_event(recipient="ann\u200b@example.com"),
                                            "acct_1") is None
