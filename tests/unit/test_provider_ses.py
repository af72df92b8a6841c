"""Amazon SES via SNS: SNS signatures (versions 1 and 2) made here with a real RSA key and a
self-signed X.509 certificate over the documented string to sign; SES notifications from the
documented examples (tests/data/providers/README.md) mapped to events."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from webhooks.providers import ses
from webhooks.providers.base import PayloadError

DATA = Path(__file__).resolve().parents[1] / "data" / "providers"
CERT_URL = ("https://sns.us-east-1.amazonaws.com/"
            "SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem")
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"


def make_certificate(days: int = 30, *, start: datetime | None = None
                     ) -> tuple[rsa.RSAPrivateKey, str]:
    """An RSA key and a self-signed certificate for it (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    start = start or datetime.now(UTC) - timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=days))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


KEY, CERT = make_certificate()


def canonical(message: dict[str, Any]) -> bytes:
    """The string to sign exactly as the SNS developer guide lists it."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def sign(message: dict[str, Any], version: str = "2",
         key: rsa.RSAPrivateKey = KEY) -> dict[str, Any]:
    """``message`` with SignatureVersion, Signature and SigningCertURL set."""
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(canonical(message), padding.PKCS1v15(), algorithm)
    return {**message, "SignatureVersion": version, "SigningCertURL": CERT_URL,
            "Signature": base64.b64encode(signature).decode()}


def notification(ses_note: dict[str, Any] | str, subject: str | None = None,
                 message_id: str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324") -> dict[str, Any]:
    message = {"Type": "Notification", "MessageId": message_id, "TopicArn": TOPIC,
               "Message": ses_note if isinstance(ses_note, str) else json.dumps(ses_note),
               "Timestamp": "2016-01-27T14:59:38.237Z",
               "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"}
    if subject is not None:
        message["Subject"] = subject
    return message


def confirmation() -> dict[str, Any]:
    return {"Type": "SubscriptionConfirmation", "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic " + TOPIC +
                       ".\nTo confirm the subscription, visit the SubscribeURL included in this "
                       "message.",
            "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
                            "&TopicArn=" + TOPIC + "&Token=2336412f37fb",
            "Timestamp": "2012-04-26T20:45:04.751Z"}


def fixture(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("subject", [None, "Amazon SES Email Event Notification"])
def test_a_signed_notification_verifies(version: str, subject: str | None) -> None:
    message = sign(notification(fixture("ses-bounce"), subject), version)
    assert ses.verify(message, CERT)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_subscription_confirmation_verifies(version: str) -> None:
    assert ses.verify(sign(confirmation(), version), CERT)


@pytest.mark.parametrize("field,value", [
    ("Message", json.dumps({"notificationType": "Bounce", "mail": {}})),
    ("MessageId", "another-id"), ("Timestamp", "2016-01-27T15:00:00.000Z"),
    ("TopicArn", "arn:aws:sns:us-east-1:999999999999:theirs"), ("Subject", "added"),
])
def test_tampering_with_a_signed_field_fails(field: str, value: str) -> None:
    message = sign(notification(fixture("ses-bounce")))
    assert not ses.verify({**message, field: value}, CERT)


def test_a_subscription_token_or_url_change_fails() -> None:
    message = sign(confirmation())
    assert not ses.verify({**message, "SubscribeURL": "https://evil.example/confirm"}, CERT)
    assert not ses.verify({**message, "Token": "0000"}, CERT)


def test_another_key_or_version_fails() -> None:
    other, other_cert = make_certificate()
    message = sign(notification(fixture("ses-delivery")), key=other)
    assert not ses.verify(message, CERT)
    assert ses.verify(message, other_cert)
    assert not ses.verify({**message, "SignatureVersion": "1"}, other_cert)  # SHA1 ≠ SHA256
    assert not ses.verify({**message, "SignatureVersion": "3"}, other_cert)


@pytest.mark.parametrize("signature", ["", "not base64!", base64.b64encode(b"x" * 256).decode()])
def test_a_malformed_signature_fails(signature: str) -> None:
    message = sign(notification(fixture("ses-delivery")))
    assert not ses.verify({**message, "Signature": signature}, CERT)


def test_a_message_without_a_signed_key_fails() -> None:
    message = sign(notification(fixture("ses-delivery")))
    del message["TopicArn"]
    assert not ses.verify(message, CERT)
    assert not ses.verify({**message, "Type": "Surprise"}, CERT)


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
    "https://sns.us-east-1.amazonaws.com:8443/x.pem",
    "https://s3.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com/x.txt",
    "https://sns..amazonaws.com/x.pem",
    "",
])
def test_a_certificate_url_not_from_sns_is_refused(url: str) -> None:
    """The rule the fetcher applies before any fetch (tests/integration/test_sns_certificates.py
    fetches from a real HTTPS server)."""
    assert not ses.signing_cert_url_ok(url)


def test_the_sns_certificate_url_is_accepted() -> None:
    assert ses.signing_cert_url_ok(CERT_URL)
    assert ses.signing_cert_url_ok(CERT_URL.replace("us-east-1", "ap-east-1"))


def test_a_certificate_out_of_its_validity_is_not_current() -> None:
    key, expired = make_certificate(days=2, start=datetime.now(UTC) - timedelta(days=10))
    assert not ses.certificate_current(expired)
    assert ses.certificate_current(CERT)
    assert not ses.certificate_current("not a certificate")
    message = sign(notification(fixture("ses-delivery")), key=key)
    assert ses.verify(message, expired)  # a given certificate is trusted as it is


# --- parse ------------------------------------------------------------------------------------

def _parse(note: dict[str, Any] | str) -> list[Any]:
    return ses.parse(json.dumps(sign(notification(note))).encode(), "text/plain; charset=UTF-8")


def test_a_permanent_bounce_names_its_job_and_account() -> None:
    [event] = _parse(fixture("ses-bounce"))
    assert (event.provider, event.type, event.kind, event.reason) == \
        ("ses", "bounced", "hard", "userunknown")
    assert (event.recipient, event.job_id, event.account_id) == \
        ("jane@example.com", "job-ses-1", "acct_7")
    assert event.message_id == "<job-ses-1@outbox.localhost>"
    assert event.provider_message_id == \
        "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
    assert event.diagnostic == "smtp; 550 5.1.1 <jane@example.com>... User"
    assert event.at == "2016-01-27T14:59:38.237Z"


def test_a_bounce_without_headers_is_one_event_per_recipient() -> None:
    events = _parse(fixture("ses-bounce-no-dsn"))
    assert [(e.recipient, e.type, e.kind, e.job_id, e.account_id) for e in events] == [
        ("jane@example.com", "bounced", "hard", None, None),
        ("richard@example.com", "bounced", "hard", None, None)]
    assert len({e.event_id for e in events}) == 2


@pytest.mark.parametrize("bounce_type,sub_type,event_type,kind,reason", [
    ("Permanent", "NoEmail", "bounced", "hard", "userunknown"),
    ("Permanent", "Suppressed", "bounced", "hard", "suppressed"),
    ("Transient", "MailboxFull", "soft_bounced", "soft", "mailboxfull"),
    ("Transient", "ContentRejected", "soft_bounced", "block", "contenterror"),
    ("Undetermined", "Undetermined", "soft_bounced", "transient", "undefined"),
])
def test_bounce_types_map_through_the_classifier(bounce_type: str, sub_type: str,
                                                 event_type: str, kind: str, reason: str) -> None:
    note = copy.deepcopy(fixture("ses-bounce-no-dsn"))
    note["bounce"].update(bounceType=bounce_type, bounceSubType=sub_type)
    event = _parse(note)[0]
    assert (event.type, event.kind, event.reason) == (event_type, kind, reason)


def test_a_transient_bounce_whose_reply_reads_permanent_is_not_a_hard_bounce() -> None:
    note = copy.deepcopy(fixture("ses-bounce"))
    note["bounce"]["bounceType"] = "Transient"
    event = _parse(note)[0]
    assert (event.type, event.kind, event.reason) == ("soft_bounced", "soft", "userunknown")


def test_a_complaint() -> None:
    [event] = _parse(fixture("ses-complaint"))
    assert (event.type, event.kind, event.reason, event.recipient) == \
        ("complained", "complaint", "feedback", "richard@example.com")
    assert (event.job_id, event.account_id) == ("job-ses-2", "acct_7")
    assert event.diagnostic == "feedback-type abuse"


def test_a_delivery() -> None:
    [event] = _parse(fixture("ses-delivery"))
    assert (event.type, event.kind, event.reason, event.recipient, event.job_id) == \
        ("delivered", None, "delivered", "jane@example.com", "job-ses-3")
    assert event.diagnostic == "250 ok:  Message 64111812 accepted"


def test_event_publishing_names_and_message_tags() -> None:
    note = fixture("ses-delivery")
    mail = {k: v for k, v in note["mail"].items() if k not in ("headers", "commonHeaders")}
    mail["tags"] = {"outbox_job": ["job-tagged"], "outbox_account": ["acct_t"]}
    for name, expected in [("Send", "accepted"), ("Open", "opened"), ("Click", "clicked"),
                           ("Subscription", "other")]:
        [event] = _parse({"eventType": name, "mail": mail})
        assert (event.type, event.job_id, event.account_id) == (expected, "job-tagged", "acct_t")


@pytest.mark.parametrize("name,reason,job,diagnostic", [
    ("ses-reject", "virusdetected", "job-ses-8", "Bad content"),
    ("ses-rendering-failure", "contenterror", "job-ses-9",
     "Attribute 'attributeName' is not present in the rendering data. MyTemplate"),
])
def test_a_message_ses_never_sent_ends_failed_and_is_no_bounce(name: str, reason: str, job: str,
                                                               diagnostic: str) -> None:
    """Reject (a virus) and Rendering Failure (the template): nothing reached the recipient's
    server, so nothing is learnt about the address (no kind: never counted or suppressed)."""
    [event] = _parse(fixture(name))
    assert (event.provider, event.type, event.kind, event.reason) == \
        ("ses", "failed", None, reason)
    assert (event.recipient, event.job_id, event.account_id) == \
        ("recipient@example.com", job, "acct_7")
    assert event.provider_message_id == \
        "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"
    assert event.diagnostic == diagnostic
    assert event.at == fixture(name)["mail"]["timestamp"]
    assert _parse(fixture(name))[0].event_id == event.event_id  # stable: applied once


def test_a_reject_without_its_section_still_fails_the_job() -> None:
    note = {k: v for k, v in fixture("ses-reject").items() if k != "reject"}
    [event] = _parse(note)
    assert (event.type, event.reason, event.diagnostic) == ("failed", "virusdetected", "Reject")


def test_the_event_id_is_stable_and_distinct() -> None:
    first, again = _parse(fixture("ses-bounce")), _parse(fixture("ses-bounce"))
    assert first[0].event_id == again[0].event_id
    assert first[0].event_id != _parse(fixture("ses-complaint"))[0].event_id


def test_a_confirmation_has_no_events() -> None:
    assert ses.parse(json.dumps(sign(confirmation())).encode(), "text/plain") == []


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"Type": "Notification", "Message": "hi"}',
                                  b'{"Type": "Mystery"}',
                                  json.dumps(notification({"mail": {}})).encode()])
def test_a_malformed_body_is_a_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError):
        ses.parse(body, "text/plain")
