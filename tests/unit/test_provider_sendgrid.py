"""SendGrid Event Webhook: ECDSA P-256 signatures made here over timestamp + payload, one
request signed by SendGrid itself (sendgrid-python's test vector), and the documented events
mapped to ProviderEvents."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhooks.providers import sendgrid
from webhooks.providers.base import PayloadError

DATA = Path(__file__).resolve().parents[1] / "data" / "providers"


def make_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key and its public half as SendGrid shows it (base64 DER SubjectPublicKeyInfo)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, base64.b64encode(der).decode()


KEY, PUBLIC = make_key()


def sign(payload: bytes, timestamp: str, key: ec.EllipticCurvePrivateKey = KEY) -> str:
    return base64.b64encode(key.sign(timestamp.encode() + payload,
                                     ec.ECDSA(hashes.SHA256()))).decode()


def events_body() -> bytes:
    return (DATA / "sendgrid-events.json").read_bytes()


def test_a_signature_made_with_the_key_verifies() -> None:
    body, ts = events_body(), "1600112502"
    assert sendgrid.verify(body, sign(body, ts), ts, PUBLIC)


def test_a_request_signed_by_sendgrid_verifies() -> None:
    vector = json.loads((DATA / "sendgrid-signed.json").read_text())
    payload = vector["payload"].encode()
    assert sendgrid.verify(payload, vector["signature"], vector["timestamp"], vector["public_key"])
    assert not sendgrid.verify(payload, vector["signature"], "1600112503", vector["public_key"])


@pytest.mark.parametrize("change", ["payload", "timestamp", "key", "signature", "empty"])
def test_tampering_or_the_wrong_key_fails(change: str) -> None:
    body, ts = events_body(), "1600112502"
    signature, public = sign(body, ts), PUBLIC
    if change == "payload":
        body = body.replace(b'"bounce"', b'"delivered"', 1)
    elif change == "timestamp":
        ts = "1600112503"
    elif change == "key":
        public = make_key()[1]
    elif change == "signature":
        signature = sign(body + b" ", ts)
    else:
        signature = ""
    assert not sendgrid.verify(body, signature, ts, public)


@pytest.mark.parametrize("public", ["", "not base64!", base64.b64encode(b"junk").decode()])
def test_a_bad_public_key_fails(public: str) -> None:
    body, ts = events_body(), "1600112502"
    assert not sendgrid.verify(body, sign(body, ts), ts, public)


def test_a_p384_key_is_not_accepted() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    body, ts = events_body(), "1600112502"
    signature = base64.b64encode(key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    assert not sendgrid.verify(body, signature, ts, base64.b64encode(der).decode())


def test_a_pem_armoured_key_is_read_too() -> None:
    body, ts = events_body(), "1600112502"
    pem = f"-----BEGIN PUBLIC KEY-----\n{PUBLIC}\n-----END PUBLIC KEY-----\n"
    assert sendgrid.verify(body, sign(body, ts), ts, pem)


def _by_event() -> dict[str, Any]:
    events = sendgrid.parse(events_body(), "application/json")
    raw = json.loads(events_body())
    return {f"{r['event']}:{r.get('type', '')}:{r['sg_event_id']}": e
            for r, e in zip(raw, events, strict=True)}


@pytest.mark.parametrize("name,event_type,kind,reason,job", [
    ("processed", "accepted", None, "undefined", "job-sg-1"),
    ("deferred", "soft_bounced", "transient", "undefined", "job-sg-1"),
    ("delivered", "delivered", None, "delivered", "job-sg-1"),
    ("open", "opened", None, "undefined", "job-sg-1"),
    ("click", "clicked", None, "undefined", "job-sg-1"),
    ("bounce:bounce", "bounced", "hard", "userunknown", "job-sg-2"),
    ("bounce:blocked", "soft_bounced", "block", "blocked", "job-sg-3"),
    ("dropped", "bounced", "hard", "suppressed", "job-sg-4"),
    ("spamreport", "complained", "complaint", "feedback", "job-sg-1"),
    ("unsubscribe", "unsubscribed", None, "unsubscribe", "job-sg-1"),
    ("group_unsubscribe", "unsubscribed", None, "unsubscribe", "job-sg-1"),
    ("group_resubscribe", "other", None, "undefined", "job-sg-1"),
])
def test_each_documented_event_maps(name: str, event_type: str, kind: str | None, reason: str,
                                    job: str) -> None:
    matches = [e for k, e in _by_event().items() if k.startswith(name + ":")]
    assert matches, name
    event = matches[0]
    assert (event.provider, event.type, event.kind, event.reason) == \
        ("sendgrid", event_type, kind, reason)
    assert (event.recipient, event.job_id, event.account_id) == ("example@test.com", job, "acct_3")
    assert event.at == "2017-12-15T00:59:29.000Z"


def test_ids_of_an_event() -> None:
    event = sendgrid.parse(events_body(), "application/json")[5]
    assert event.event_id == "6g4ZI7SA-xmRDv57GoPIPw=="
    assert event.message_id == "<job-sg-2@outbox.localhost>"
    assert event.provider_message_id == "14c5d75ce93.dfd.64b469"
    assert event.diagnostic == "500 unknown recipient 5.0.0"


def test_a_deferral_that_reads_permanent_is_not_a_hard_bounce() -> None:
    body = json.dumps([{"email": "a@example.com", "event": "deferred", "timestamp": 1,
                        "sg_event_id": "x", "response": "550 5.1.1 user unknown"}]).encode()
    [event] = sendgrid.parse(body, "application/json")
    assert (event.type, event.kind, event.reason) == ("soft_bounced", "soft", "userunknown")


def test_a_custom_job_argument_wins_over_a_foreign_message_id() -> None:
    body = json.dumps([{"email": "a@example.com", "event": "delivered", "timestamp": 1,
                        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "sg_event_id": "y",
                        "outbox_job": "job-x", "outbox_account": "acct bad"}]).encode()
    [event] = sendgrid.parse(body, "application/json")
    assert (event.job_id, event.account_id) == ("job-x", None)


@pytest.mark.parametrize("body,ctype", [
    (b"[]", "text/plain"), (b"not json", "application/json"),
    (b'{"event": "delivered"}', "application/json"),
    (b'[{"event": "delivered"}]', "application/json"), (b"[1]", "application/json"),
])
def test_a_malformed_body_is_a_payload_error(body: bytes, ctype: str) -> None:
    with pytest.raises(PayloadError):
        sendgrid.parse(body, ctype)
