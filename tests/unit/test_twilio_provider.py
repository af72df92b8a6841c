"""webhooks.providers.twilio (verify, parse, parse_inbound) and the SMS segment counter."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import math
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sender.channels.sms_segments import GSM7_BASIC, GSM7_EXTENSION, segments
from suppression.classify import classify_twilio
from webhooks.providers import twilio as tw
from webhooks.providers.base import PayloadError, ProviderEvent

FORM = "application/x-www-form-urlencoded"
TOKEN = "12345"
SID = "SM" + "ab" * 16


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    """Twilio's algorithm written out independently of the twilio package."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def form(**fields: str) -> bytes:
    return urlencode(fields).encode()


def status_body(status: str, error_code: str | None = None, **extra: str) -> bytes:
    fields = {
        "AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01", "From": "+15005550006",
        "MessageSid": SID, "MessageStatus": status, "SmsSid": SID, "SmsStatus": status,
        "To": "+85291234567", **extra,
    }
    if error_code is not None:
        fields["ErrorCode"] = error_code
    return form(**fields)


# -- verify -----------------------------------------------------------------------------------

URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
          "From": "+12349013030", "To": "+18005551212"}


def test_verify_accepts_twilios_signature():
    assert tw.verify(URL, PARAMS, sign(URL, PARAMS), TOKEN)


def test_verify_known_vector():
    # The worked example of https://www.twilio.com/docs/usage/security#validating-requests
    assert sign(URL, PARAMS) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert tw.verify(URL, PARAMS, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", TOKEN)


@pytest.mark.parametrize("change", [
    lambda u, p, s, t: (u, {**p, "Digits": "1235"}, s, t),
    lambda u, p, s, t: (u, {**p, "Extra": ""}, s, t),
    lambda u, p, s, t: (u, {k: v for k, v in p.items() if k != "To"}, s, t),
    lambda u, p, s, t: (u.replace("foo=1", "foo=2"), p, s, t),
    lambda u, p, s, t: (u.replace("https", "http"), p, s, t),
    lambda u, p, s, t: (u, p, s, "54321"),
    lambda u, p, s, t: (u, p, s[:-2] + "A=", t),
    lambda u, p, s, t: (u, p, "", t),
    lambda u, p, s, t: (u, p, s, ""),
    lambda u, p, s, t: (u, p, "ü" + s, t),
])
def test_verify_refuses_tampering(change):
    assert not tw.verify(*change(URL, PARAMS, sign(URL, PARAMS), TOKEN))


def test_verify_port_quirk():
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    # signed without the port, checked with it, and the other way round
    assert tw.verify(with_port, PARAMS, sign(URL, PARAMS), TOKEN)
    assert tw.verify(URL, PARAMS, sign(with_port, PARAMS), TOKEN)
    local = "http://127.0.0.1:8081/webhooks/twilio/status"
    assert tw.verify(local, PARAMS, sign(local, PARAMS), TOKEN)


def test_verify_multidict_uses_every_value():
    class Multi(dict):
        def getall(self, key):
            return ["b", "a"] if key == "MediaUrl" else [self[key]]

    params = Multi(Body="x", MediaUrl="b")
    signed = URL + "Body" + "x" + "MediaUrl" + "a" + "MediaUrl" + "b"
    expected = base64.b64encode(hmac.new(TOKEN.encode(), signed.encode(), hashlib.sha1).digest())
    assert tw.verify(URL, params, expected.decode(), TOKEN)


def test_verify_unicode_params():
    params = {"Body": "取消訂閱 €", "From": "+85291234567"}
    assert tw.verify(URL, params, sign(URL, params), TOKEN)


# -- parse ------------------------------------------------------------------------------------


def test_parse_delivered():
    [event] = tw.parse(status_body("delivered", RawDlrDoneDate="2411251340"), FORM)
    assert isinstance(event, ProviderEvent)
    assert event.provider == "twilio"
    assert event.type == "delivered"
    assert event.recipient == "+85291234567"
    assert event.provider_message_id == SID
    assert event.event_id == f"{SID}:delivered"
    assert (event.kind, event.reason, event.diagnostic) == (None, "delivered", None)
    assert event.message_id is None and event.job_id is None and event.account_id is None
    assert event.at.endswith("Z")
    assert event.raw["RawDlrDoneDate"] == "2411251340"


@pytest.mark.parametrize(("status", "code", "expected"), [
    ("undelivered", "30005", "bounced"),
    ("undelivered", "30006", "bounced"),
    ("undelivered", "30003", "soft_bounced"),
    ("failed", "30007", "complained"),
    ("undelivered", "30007", "complained"),
    ("failed", "21610", "unsubscribed"),
])
def test_parse_failures(status, code, expected):
    [event] = tw.parse(status_body(status, code), FORM)
    outcome = classify_twilio(code)
    assert event.type == expected
    assert (event.kind, event.reason) == (outcome.kind, outcome.reason)
    assert event.diagnostic == code
    assert event.event_id == f"{SID}:{status}"


def test_parse_failure_type_follows_the_classifier_kind():
    for code in ("30001", "30002", "30004", "30008", "30034", "21211", "21614", "99999"):
        [event] = tw.parse(status_body("undelivered", code), FORM)
        kind = classify_twilio(code).kind
        expected = {"hard": "bounced", "complaint": "complained"}.get(kind, "soft_bounced")
        assert (event.type, event.kind) == (expected, kind), code


def test_parse_error_message_goes_into_diagnostic():
    [event] = tw.parse(status_body("undelivered", "30003", ErrorMessage="Unreachable handset"),
                       FORM)
    assert event.diagnostic == "30003: Unreachable handset"


def test_parse_empty_error_code_is_no_code():
    for code in ("", None):
        [event] = tw.parse(status_body("undelivered", code), FORM)
        assert event.diagnostic is None
        assert (event.type, event.kind, event.reason) == ("soft_bounced", "transient", "undefined")


@pytest.mark.parametrize(("status", "expected"), [
    ("accepted", "accepted"), ("queued", "accepted"), ("sending", "accepted"),
    ("sent", "accepted"), ("read", "opened"), ("scheduled", "other"), ("canceled", "other"),
    ("partially_delivered", "other"), ("Delivered", "delivered"),
])
def test_parse_other_statuses(status, expected):
    [event] = tw.parse(status_body(status), FORM)
    assert event.type == expected
    assert event.kind is None and event.diagnostic is None


def test_parse_timestamp_when_present():
    [event] = tw.parse(status_body("delivered", Timestamp="Mon, 25 Nov 2024 13:39:00 +0800"), FORM)
    assert event.at == "2024-11-25T05:39:00.000Z"
    [event] = tw.parse(status_body("delivered", Timestamp="2024-11-25T05:39:00Z"), FORM)
    assert event.at == "2024-11-25T05:39:00.000Z"
    [event] = tw.parse(status_body("delivered", Timestamp="yesterday"), FORM)
    assert event.at.endswith("Z") and event.at != "yesterday"


def test_parse_content_type_with_charset():
    [event] = tw.parse(status_body("sent"), "application/x-www-form-urlencoded; charset=utf-8")
    assert event.type == "accepted"


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (status_body("delivered"), "application/json", "x-www-form-urlencoded"),
    (status_body("delivered"), "", "x-www-form-urlencoded"),
    (json.dumps({"MessageSid": SID}).encode(), "application/json", "x-www-form-urlencoded"),
    (b"", FORM, "empty"),
    (b"MessageStatus=delivered&To=%2B85291234567", FORM, "MessageSid"),
    (b"MessageSid=SMx&To=%2B85291234567", FORM, "MessageStatus"),
    (b"MessageSid=&MessageStatus=sent", FORM, "MessageSid"),
    (b"MessageSid=SM1&MessageStatus=sent&\xff\xfe", FORM, "UTF-8"),
    (b"MessageSid=SM1&MessageStatus", FORM, "form"),
    (b"MessageSid=SM1&MessageStatus=%ff", FORM, "form"),
])
def test_parse_malformed(body, content_type, message):
    with pytest.raises(PayloadError, match=message):
        tw.parse(body, content_type)
    assert issubclass(PayloadError, ValueError)


def test_event_as_dict_and_frozen():
    [event] = tw.parse(status_body("undelivered", "30005"), FORM)
    data = event.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {f.name for f in dataclasses.fields(ProviderEvent)}
    assert data["type"] == "bounced" and data["raw"]["ErrorCode"] == "30005"
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "delivered"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")  # slots


# -- parse_inbound ----------------------------------------------------------------------------


def inbound(body_text: str | None, **extra: str) -> bytes:
    fields = {"AccountSid": "AC" + "0" * 32, "From": "+85291234567", "To": "+85230001234",
              "MessageSid": SID, "NumMedia": "0", **extra}
    if body_text is not None:
        fields["Body"] = body_text
    return form(**fields)


@pytest.mark.parametrize(("text", "keyword"), [
    ("STOP", "stop"), ("stop", "stop"), ("  Stop \n", "stop"), ("STOPALL", "stop"),
    ("unsubscribe", "stop"), ("Cancel", "stop"), ("END", "stop"), ("quit", "stop"),
    ("REVOKE", "stop"), ("optout", "stop"), ("取消", "stop"), (" 退訂 ", "stop"),
    ("退订", "stop"),
    ("START", "start"), ("yes", "start"), ("Unstop", "start"),
    ("HELP", "help"), ("info", "help"),
    ("stop please", None), ("Please STOP", None), ("STOP!", None), ("opt out", None),
    ("取消訂閱", None), ("", None), ("hello", None), ("yes please", None),
])
def test_inbound_keywords(text, keyword):
    sms = tw.parse_inbound(inbound(text), FORM)
    assert sms.keyword == keyword
    assert sms.body == text


def test_inbound_fields():
    sms = tw.parse_inbound(inbound("Hi, can we move the meeting?", MessagingServiceSid="MG1"),
                           FORM)
    assert sms.from_ == "+85291234567"
    assert sms.to == "+85230001234"
    assert sms.message_sid == SID
    assert sms.account_sid == "AC" + "0" * 32
    assert sms.messaging_service_sid == "MG1"
    assert sms.keyword is None
    assert sms.raw["NumMedia"] == "0"


def test_inbound_without_body_is_media_only():
    sms = tw.parse_inbound(inbound(None, NumMedia="1"), FORM)
    assert sms.body == "" and sms.keyword is None


def test_inbound_advanced_opt_out_type_wins():
    assert tw.parse_inbound(inbound("ARRET", OptOutType="STOP"), FORM).keyword == "stop"
    assert tw.parse_inbound(inbound("hello", OptOutType="start"), FORM).keyword == "start"
    assert tw.parse_inbound(inbound("STOP", OptOutType="bogus"), FORM).keyword == "stop"


@pytest.mark.parametrize("missing", ["From", "To", "MessageSid"])
def test_inbound_missing_field(missing):
    fields = {"From": "+85291234567", "To": "+85230001234", "MessageSid": SID, "Body": "STOP"}
    del fields[missing]
    with pytest.raises(PayloadError, match=missing):
        tw.parse_inbound(form(**fields), FORM)


def test_inbound_wrong_content_type():
    with pytest.raises(PayloadError):
        tw.parse_inbound(b'{"Body": "STOP"}', "application/json")


# -- segments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ("", ("GSM-7", 0)),
    ("Hello", ("GSM-7", 1)),
    ("a" * 160, ("GSM-7", 1)),
    ("a" * 161, ("GSM-7", 2)),
    ("a" * 306, ("GSM-7", 2)),
    ("a" * 307, ("GSM-7", 3)),
    ("a" * 459, ("GSM-7", 3)),
    ("a" * 460, ("GSM-7", 4)),
    ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà", ("GSM-7", 1)),
    ("€" * 80, ("GSM-7", 1)),            # 160 septets
    ("€" * 81, ("GSM-7", 2)),            # 162
    ("a" * 159 + "{", ("GSM-7", 2)),     # 161 septets
    ("a" * 158 + "{", ("GSM-7", 1)),     # 160
    ("^{}\\[~]|€\f", ("GSM-7", 1)),
    ("a" * 152 + "€" + "a" * 10, ("GSM-7", 2)),  # the escape pair moves whole to segment 2
    ("a" * 152 + "€" * 77, ("GSM-7", 3)),  # 152 + [2*76=152] + [2]: split at pairs
    ("中" * 70, ("UCS-2", 1)),
    ("中" * 71, ("UCS-2", 2)),
    ("中" * 134, ("UCS-2", 2)),
    ("中" * 135, ("UCS-2", 3)),
    ("a" * 69 + "中", ("UCS-2", 1)),
    ("a" * 70 + "中", ("UCS-2", 2)),
    ("會議提醒：明天下午三時", ("UCS-2", 1)),
    ("Café ok", ("GSM-7", 1)),            # é is GSM-7
    ("Cafè ç", ("UCS-2", 1)),             # lower-case ç is not (only Ç is)
    ("“quoted”", ("UCS-2", 1)),
    ("😀" * 35, ("UCS-2", 1)),             # 70 UTF-16 units
    ("😀" * 36, ("UCS-2", 2)),
    ("a" + "😀" * 34, ("UCS-2", 1)),       # 69 units
    ("a" * 66 + "😀" + "a" * 10, ("UCS-2", 2)),  # the pair is not split at 67
])
def test_segments(body, expected):
    assert segments(body) == expected


GSM_PLAIN = st.text(alphabet=sorted(GSM7_BASIC), max_size=700)
UCS2_BMP = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
                   min_size=1, max_size=400)


@given(GSM_PLAIN)
def test_segments_gsm_property(body):
    encoding, count = segments(body)
    assert encoding == "GSM-7"
    n = len(body)
    assert count == (0 if n == 0 else 1 if n <= 160 else math.ceil(n / 153))


@given(UCS2_BMP, GSM_PLAIN)
def test_segments_ucs2_property(chinese, latin):
    body = latin[:100] + chinese
    encoding, count = segments(body)
    assert encoding == "UCS-2"
    n = len(body)
    assert count == (1 if n <= 70 else math.ceil(n / 67))


@given(st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), max_size=500))
def test_segments_extension_property(body):
    septets = sum(2 if ch in GSM7_EXTENSION else 1 for ch in body)
    encoding, count = segments(body)
    assert encoding == "GSM-7"
    if septets <= 160:
        assert count == (1 if body else 0)
    else:
        # never fewer than the septets need, at most one more for each split escape pair
        assert math.ceil(septets / 153) <= count <= math.ceil(septets / 152)
