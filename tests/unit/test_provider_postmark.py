"""Postmark webhooks: basic auth and the documented records mapped to ProviderEvents."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from webhooks.providers import postmark
from webhooks.providers.base import PayloadError

DATA = Path(__file__).resolve().parents[1] / "data" / "providers"


def record(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((DATA / "postmark-records.json").read_text())[name])


def parse_one(body: dict[str, Any]) -> Any:
    [event] = postmark.parse(json.dumps(body).encode(), "application/json")
    return event


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("header,ok", [
    (basic("postmark", "s3cret:with:colons"), True),
    (basic("postmark", "wrong"), False), (basic("other", "s3cret:with:colons"), False),
    ("Basic " + base64.b64encode(b"postmark").decode(), False), ("Basic !!!", False),
    ("Bearer abc", False), ("", False), (None, False),
])
def test_basic_auth(header: str | None, ok: bool) -> None:
    assert postmark.basic_auth_ok(header, "postmark", "s3cret:with:colons") is ok


@pytest.mark.parametrize("name,event_type,kind,reason,recipient,job", [
    ("hard_bounce", "bounced", "hard", "userunknown", "john@example.com", "job-pm-1"),
    ("soft_bounce", "soft_bounced", "soft", "mailboxfull", "jane@example.com", "job-pm-2"),
    ("spam_notification_by_code", "soft_bounced", "block", "spamdetected", "kim@example.com",
     None),
    ("spam_complaint", "complained", "complaint", "feedback", "john@example.com", "job-pm-3"),
    ("delivery", "delivered", None, "delivered", "john@example.com", "job-pm-4"),
    ("subscription_change", "unsubscribed", None, "unsubscribe",
     "bounced-address@wildbit.com", "job-pm-5"),
    ("subscription_change_bounce", "bounced", "hard", "undefined", "john@example.com", None),
    ("subscription_change_spam", "complained", "complaint", "feedback", "john@example.com",
     "job-pm-3"),
    ("open", "opened", None, "undefined", "john@example.com", "job-pm-6"),
    ("click", "clicked", None, "undefined", "john@example.com", None),
])
def test_each_documented_record_maps(name: str, event_type: str, kind: str | None, reason: str,
                                     recipient: str, job: str | None) -> None:
    event = parse_one(record(name))
    assert (event.provider, event.type, event.kind, event.reason) == \
        ("postmark", event_type, kind, reason)
    assert (event.recipient, event.job_id, event.account_id) == (recipient, job, "acct_9")


def test_the_fields_of_a_hard_bounce() -> None:
    event = parse_one(record("hard_bounce"))
    assert event.provider_message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert event.message_id is None
    assert event.event_id.startswith("bounced-") and len(event.event_id) == 40
    assert event.diagnostic == "smtp;550 5.1.1 The email account that you tried to reach does " \
                               "not exist."
    assert event.at == "2019-11-05T16:33:54.907Z"


@pytest.mark.parametrize("bounce_type,event_type,kind,reason", [
    ("Transient", "soft_bounced", "transient", "undefined"),
    ("DnsError", "soft_bounced", "transient", "networkerror"),
    ("Blocked", "soft_bounced", "block", "blocked"),
    ("BadEmailAddress", "bounced", "hard", "userunknown"),
    ("AutoResponder", "other", None, "vacation"),
    ("Unsubscribe", "unsubscribed", None, "unsubscribe"),
])
def test_bounce_types_map_through_the_classifier(bounce_type: str, event_type: str,
                                                 kind: str | None, reason: str) -> None:
    body = {**record("soft_bounce"), "Type": bounce_type, "Details": ""}
    event = parse_one(body)
    assert (event.type, event.kind, event.reason) == (event_type, kind, reason)


def test_a_soft_bounce_whose_reply_reads_permanent_is_not_a_hard_bounce() -> None:
    body = {**record("soft_bounce"), "Details": "smtp;550 5.1.1 user unknown"}
    event = parse_one(body)
    assert (event.type, event.kind) == ("soft_bounced", "soft")


def test_a_recipient_change_by_the_customer_is_not_an_unsubscribe() -> None:
    """Postmark: ``Origin`` Customer (the API or UI) or Admin (Postmark staff) made the manual
    suppression, not the recipient; a reactivation (``SuppressSending`` false) asks nothing."""
    for origin in ("Customer", "Admin"):
        body = {**record("subscription_change"), "Origin": origin, "MessageID": None}
        assert parse_one(body).type == "other"
    for name in ("subscription_change", "subscription_change_bounce",
                 "subscription_change_spam"):
        body = {**record(name), "SuppressSending": False}
        assert (parse_one(body).type, parse_one(body).kind) == ("other", None)


@pytest.mark.parametrize("record_name,suppression_name,patch", [
    ("hard_bounce", "subscription_change_bounce",
     {"MessageID": "883953f4-6105-42a2-a16a-77a8eac79483"}),
    ("spam_complaint", "subscription_change_spam", {}),
])
def test_a_suppression_and_its_own_record_are_one_event(record_name: str,
                                                        suppression_name: str,
                                                        patch: dict[str, Any]) -> None:
    """Postmark reports a hard bounce (a complaint) twice: the Bounce (SpamComplaint) record and
    the SubscriptionChange that suppressed the address. One event id: applied, counted once."""
    own = parse_one(record(record_name))
    change = parse_one({**record(suppression_name), **patch})
    assert (change.type, change.kind) == (own.type, own.kind)
    assert change.event_id == own.event_id
    other_message = parse_one({**record(suppression_name), **patch, "MessageID": "other"})
    assert other_message.event_id != own.event_id


def test_event_ids_are_stable_and_distinct() -> None:
    ids = {parse_one(record(n)).event_id for n in ("delivery", "open", "click",
                                                   "subscription_change")}
    assert len(ids) == 4
    assert parse_one(record("open")).event_id == parse_one(record("open")).event_id


def test_an_array_of_records_is_read() -> None:
    body = json.dumps([record("delivery"), record("open")]).encode()
    assert [e.type for e in postmark.parse(body, "application/json")] == ["delivered", "opened"]


@pytest.mark.parametrize("body,ctype", [
    (b"{}", "text/plain"), (b"not json", "application/json"), (b"{}", "application/json"),
    (b"[]", "application/json"), (b'[{"RecordType": "Delivery"}, 3]', "application/json"),
])
def test_a_malformed_body_is_a_payload_error(body: bytes, ctype: str) -> None:
    with pytest.raises(PayloadError):
        postmark.parse(body, ctype)
