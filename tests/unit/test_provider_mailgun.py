"""Mailgun webhooks: HMAC-SHA256 signatures made here as Mailgun documents them, and the
documented events (payloads from django-anymail's tests of real Mailgun posts) mapped."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from webhooks.providers import mailgun
from webhooks.providers.base import PayloadError

DATA = Path(__file__).resolve().parents[1] / "data" / "providers"
KEY = "key-signing-test-0123456789abcdef"


def signature(timestamp: str, token: str, key: str = KEY) -> str:
    return hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def signed(name: str, key: str = KEY) -> dict[str, Any]:
    body = copy.deepcopy(json.loads((DATA / "mailgun-events.json").read_text())[name])
    sig = body["signature"]
    sig["signature"] = signature(sig["timestamp"], sig["token"], key)
    return body


def test_a_signature_made_with_the_key_verifies() -> None:
    sig = signed("delivered")["signature"]
    assert mailgun.verify(sig["timestamp"], sig["token"], sig["signature"], KEY)
    assert mailgun.verify(sig["timestamp"], sig["token"], sig["signature"].upper(), KEY)


@pytest.mark.parametrize("change", ["timestamp", "token", "key", "signature", "empty"])
def test_tampering_or_the_wrong_key_fails(change: str) -> None:
    sig = signed("delivered")["signature"]
    ts, token, value, key = sig["timestamp"], sig["token"], sig["signature"], KEY
    if change == "timestamp":
        ts = str(int(ts) + 1)
    elif change == "token":
        token = token[:-1] + "0"
    elif change == "key":
        key = "another-key"
    elif change == "signature":
        value = value[:-1] + ("0" if value[-1] != "0" else "1")
    else:
        value = ""
    assert not mailgun.verify(ts, token, value, key)


@pytest.mark.parametrize("field,value", [
    ("signature", "é" * 64), ("signature", "\ud800"), ("signature", "０" * 64),
    ("token", "tökén"), ("token", "\ud800"), ("timestamp", "１７３２５３１２００"),
    ("timestamp", "\udcff"),
])
def test_a_non_ascii_value_is_unsigned_not_an_error(field: str, value: str) -> None:
    sig = signed("delivered")["signature"]
    sig[field] = value
    if field != "signature":  # even correctly made with the key: Mailgun never sends these
        sig["signature"] = hmac.new(KEY.encode(), f"{sig['timestamp']}{sig['token']}".encode(
            "utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    assert not mailgun.verify(sig["timestamp"], sig["token"], sig["signature"], KEY)


@pytest.mark.parametrize("name,event_type,kind,reason,job,account", [
    ("delivered", "delivered", None, "delivered", "job-mg-1", "acct_5"),
    ("failed_permanent", "bounced", "hard", "userunknown", "job-mg-2", "acct_5"),
    ("failed_temporary", "soft_bounced", "soft", "hostunknown", "job-mg-3", None),
    ("complained", "complained", "complaint", "feedback", "job-mg-4", "acct_5"),
    ("unsubscribed", "unsubscribed", None, "unsubscribe", "job-mg-5", "acct_5"),
    ("clicked", "clicked", None, "undefined", "job-mg-6", None),
    ("rejected", "failed", None, "rejected", "job-mg-8", "acct_5"),
])
def test_each_documented_event_maps(name: str, event_type: str, kind: str | None, reason: str,
                                    job: str, account: str | None) -> None:
    [event] = mailgun.parse(json.dumps(signed(name)).encode(), "application/json")
    assert (event.provider, event.type, event.kind, event.reason) == \
        ("mailgun", event_type, kind, reason)
    assert (event.job_id, event.account_id) == (job, account)


def test_the_fields_of_a_permanent_failure() -> None:
    body = signed("failed_permanent")
    [event] = mailgun.parse(json.dumps(body).encode(), "application/json; charset=utf-8")
    assert event.recipient == "invalid@example.com"
    assert event.message_id == "<job-mg-2@outbox.localhost>"
    assert event.provider_message_id == "job-mg-2@outbox.localhost"
    assert event.event_id == "G9Bn5sl1TC6nu79C8C0bwg"
    assert event.diagnostic.startswith("550 5.1.1 The email account")
    assert event.at == "2018-08-12T21:47:02.389Z"


def test_a_rejected_message_was_never_sent_and_is_no_bounce() -> None:
    """Mailgun refused to send it (here: its own suppression of an address that bounced):
    the job ends ``failed``; no kind, so the worker counts and suppresses nothing."""
    [event] = mailgun.parse(json.dumps(signed("rejected")).encode(), "application/json")
    assert (event.type, event.kind, event.recipient) == ("failed", None, "to@example.com")
    assert event.diagnostic == "hardfail — Not delivering to previously bounced address"
    assert (event.event_id, event.at) == ("oXAVv5URCF-dKv8c6Sa7T", "2016-08-12T16:58:09.000Z")
    body = signed("rejected")
    body["event-data"]["reject"] = "not an object"  # signed, yet any JSON: still readable
    [event] = mailgun.parse(json.dumps(body).encode(), "application/json")
    assert (event.type, event.diagnostic) == ("failed", "rejected")


def test_an_opened_event_with_mailguns_own_message_id() -> None:
    [event] = mailgun.parse(json.dumps(signed("opened")).encode(), "application/json")
    assert (event.type, event.recipient) == ("opened", "recipient@example.com")
    # the local part of Mailgun's own Message-ID: the server drops it (not our domain)
    assert event.message_id == "<20180812213139.1.BC6694A917BB7E6A@example.org>"


def test_an_event_without_an_id_gets_a_stable_one() -> None:
    body = signed("clicked")
    del body["event-data"]["id"]
    raw = json.dumps(body).encode()
    [first] = mailgun.parse(raw, "application/json")
    [again] = mailgun.parse(raw, "application/json")
    assert first.event_id == again.event_id and len(first.event_id) == 32


def test_a_click_whose_url_is_not_text_still_makes_a_valid_event() -> None:
    """The event contract wants text: a number where Mailgun documents a URL is kept as text."""
    body = signed("clicked")
    body["event-data"]["url"] = 12345
    [event] = mailgun.parse(json.dumps(body).encode(), "application/json")
    assert (event.type, event.diagnostic) == ("clicked", "12345")


@pytest.mark.parametrize("body,ctype", [
    (b"{}", "application/x-www-form-urlencoded"), (b"not json", "application/json"),
    (b'{"event-data": {"event": "delivered"}}', "application/json"),
    (b'{"signature": {"timestamp": "1", "token": "t"}, "event-data": {}}', "application/json"),
    (b'{"signature": {"timestamp": "1", "token": "t", "signature": "s"}, "event-data": {}}',
     "application/json"),
])
def test_a_malformed_body_is_a_payload_error(body: bytes, ctype: str) -> None:
    with pytest.raises(PayloadError):
        mailgun.parse(body, ctype)
