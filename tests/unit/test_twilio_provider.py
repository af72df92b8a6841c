"""webhooks.providers.twilio (verify, parse, parse_inbound) and the SMS segment counter."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sender.channels.sms_segments import GSM7_BASIC, GSM7_EXTENSION, segments
from sender.provider_events import ProviderEvent
from suppression.classify import classify_twilio
from webhooks.providers import twilio as tw
from webhooks.providers.base import PayloadError

FORM = "application/x-www-form-urlencoded"
TOKEN = "12345"
SID = "SM" + "ab" * 16


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    """Twilio's algorithm written out independently of the twilio package."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def form(**fields: str) -> bytes:
    return urlencode(fields).encode()


def parse(body: bytes, content_type: str) -> list[ProviderEvent]:
    """What the handler does: decode once, then parse that decoding."""
    return tw.parse(body, content_type)


def parse_inbound(body: bytes, content_type: str) -> tw.InboundSms:
    return tw.parse_inbound(body, content_type)


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


# Vectors of twilio-python's own tests (tests/unit/test_request_validator.py): auth token
# "12345", this URL, these fields; and its multi-value vector, a name posted twice.
LIB_PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309",
              "To": "+18005551212", "Caller": "+14158675309"}
MULTI_BODY = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234"


@pytest.mark.parametrize(("url", "signature"), [
    (URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    (URL.replace(".com", ".com:1234"), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),  # port removed
    (URL, "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443
    (URL.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # signed with :80
    (URL.replace(".com", ".com:1234").replace("https", "http"), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
])
def test_verify_twilio_library_vectors(url, signature):
    body = urlencode(LIB_PARAMS).encode()
    assert tw.verify(url, tw.decode_form(body, FORM), signature, TOKEN)
    assert tw.verify(url, LIB_PARAMS, signature, TOKEN)


@pytest.mark.parametrize("body", [MULTI_BODY,
                                  b"Digits=1234&Sid=CA123&Digits=5678&SidAccount=AC123"])
def test_verify_twilio_multi_value_vector_signs_every_value_in_order(body):
    # Twilio signs a repeated name once per value, values sorted: "Digits1234Digits5678…"
    form = tw.decode_form(body, FORM, repeatable=frozenset({"Digits"}))
    assert form.getall("Digits") in (["5678", "1234"], ["1234", "5678"])
    assert tw.verify(URL, form, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", TOKEN)
    written_out = URL + "Digits1234Digits5678SidCA123SidAccountAC123"
    digest = hmac.new(TOKEN.encode(), written_out.encode(), hashlib.sha1).digest()
    assert base64.b64encode(digest).decode() == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


@pytest.mark.parametrize("body", [
    b"Sid=CA123&SidAccount=AC123&Digits=1234",                      # a value dropped
    b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234&Digits=9",  # a value added
    b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1235",          # a value changed
])
def test_verify_multi_value_edits_fail(body):
    form = tw.decode_form(body, FORM, repeatable=frozenset({"Digits"}))
    assert not tw.verify(URL, form, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", TOKEN)


# -- decode_form ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    MULTI_BODY,                                                      # Twilio's own shape
    status_body("delivered") + b"&MessageStatus=undelivered",        # added behind
    b"MessageStatus=undelivered&" + status_body("delivered"),        # added in front
    status_body("delivered") + b"&" + status_body("delivered"),      # the whole body twice
    status_body("delivered") + b"&To=%2B85291234567",                # the same value again
    b"Body=STOP&From=%2B85290000001&From=%2B85290000002&To=1&MessageSid=SM1",
])
def test_decode_form_refuses_a_repeated_name(body):
    with pytest.raises(PayloadError, match="more than once"):
        tw.decode_form(body, FORM)


@pytest.mark.parametrize(("content_type", "ok"), [
    (FORM, True), (FORM + "; charset=utf-8", True), (FORM + '; charset="UTF-8"', True),
    ("Application/X-WWW-Form-Urlencoded", True), (FORM + "; charset=iso-8859-1", False),
    ("multipart/form-data; boundary=x", False), ("text/plain", False), ("", False),
])
def test_decode_form_content_type(content_type, ok):
    if ok:
        assert tw.decode_form(b"A=1", content_type)["A"] == "1"
    else:
        with pytest.raises(PayloadError):
            tw.decode_form(b"A=1", content_type)


@pytest.mark.parametrize("body", [b"A=1&&B=2", b"A=1&B", b"A=%C3%28", b"&",
                                  b"&".join(b"F%d=1" % i for i in range(tw.MAX_FIELDS + 1))])
def test_decode_form_is_strict(body):
    with pytest.raises(PayloadError):
        tw.decode_form(body, FORM)


def test_form_is_the_fields_in_order():
    form = tw.decode_form(b"B=2&A=1+%E5%8F%96&C=", FORM)
    assert form.pairs == (("B", "2"), ("A", "1 取"), ("C", ""))
    assert dict(form) == {"B": "2", "A": "1 取", "C": ""} and len(form) == 3
    assert form.getall("A") == ["1 取"]
    with pytest.raises(KeyError):
        form.getall("D")


def test_parsers_are_pure_over_plain_fields():
    fields = {"MessageSid": SID, "MessageStatus": "delivered", "To": "+85291234567"}
    [event] = tw.parse_fields(fields)
    assert (event.type, event.recipient, event.raw) == ("delivered", "+85291234567", fields)
    sms = tw.parse_inbound_fields({"From": "+85291234567", "To": "+1", "MessageSid": SID,
                            "Body": "STOP"})
    assert sms.keyword == "stop"


# -- parse ------------------------------------------------------------------------------------


def test_parse_delivered():
    [event] = parse(status_body("delivered", RawDlrDoneDate="2411251340"), FORM)
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
    [event] = parse(status_body(status, code), FORM)
    outcome = classify_twilio(code)
    assert event.type == expected
    assert (event.kind, event.reason) == (outcome.kind, outcome.reason)
    assert event.diagnostic == code
    assert event.event_id == f"{SID}:{status}"


def test_parse_failure_type_follows_the_classifier_kind():
    for code in ("30001", "30002", "30004", "30008", "30034", "21211", "21614", "99999"):
        [event] = parse(status_body("undelivered", code), FORM)
        kind = classify_twilio(code).kind
        expected = {"hard": "bounced", "complaint": "complained"}.get(kind, "soft_bounced")
        assert (event.type, event.kind) == (expected, kind), code


def test_parse_error_message_goes_into_diagnostic():
    [event] = parse(status_body("undelivered", "30003", ErrorMessage="Unreachable handset"),
                       FORM)
    assert event.diagnostic == "30003: Unreachable handset"


def test_parse_empty_error_code_is_no_code():
    for code in ("", None):
        [event] = parse(status_body("undelivered", code), FORM)
        assert event.diagnostic is None
        assert (event.type, event.kind, event.reason) == ("soft_bounced", "transient", "undefined")


@pytest.mark.parametrize(("status", "expected"), [
    ("accepted", "accepted"), ("queued", "accepted"), ("sending", "accepted"),
    ("sent", "accepted"), ("read", "opened"), ("scheduled", "other"), ("canceled", "other"),
    ("partially_delivered", "other"), ("Delivered", "delivered"),
])
def test_parse_other_statuses(status, expected):
    [event] = parse(status_body(status), FORM)
    assert event.type == expected
    assert event.kind is None and event.diagnostic is None


def test_parse_timestamp_when_present():
    [event] = parse(status_body("delivered", Timestamp="Mon, 25 Nov 2024 13:39:00 +0800"), FORM)
    assert event.at == "2024-11-25T05:39:00.000Z"
    [event] = parse(status_body("delivered", Timestamp="2024-11-25T05:39:00Z"), FORM)
    assert event.at == "2024-11-25T05:39:00.000Z"
    [event] = parse(status_body("delivered", Timestamp="yesterday"), FORM)
    assert event.at.endswith("Z") and event.at != "yesterday"


def test_parse_content_type_with_charset():
    [event] = parse(status_body("sent"), "application/x-www-form-urlencoded; charset=utf-8")
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
        parse(body, content_type)
    assert issubclass(PayloadError, ValueError)


def test_event_wire_form_and_frozen():
    [event] = parse(status_body("undelivered", "30005"), FORM)
    data = json.loads(event.to_json())
    assert set(data) == set(ProviderEvent.model_fields)
    assert (data["type"], data["channel"], data["raw"]["ErrorCode"]) == ("bounced", "sms", "30005")
    assert ProviderEvent.from_json(event.to_json()) == event
    with pytest.raises(ValidationError):
        event.type = "delivered"  # type: ignore[misc]


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
    sms = parse_inbound(inbound(text), FORM)
    assert sms.keyword == keyword
    assert sms.body == text


def test_inbound_fields():
    sms = parse_inbound(inbound("Hi, can we move the meeting?", MessagingServiceSid="MG1"),
                           FORM)
    assert sms.from_ == "+85291234567"
    assert sms.to == "+85230001234"
    assert sms.message_sid == SID
    assert sms.account_sid == "AC" + "0" * 32
    assert sms.messaging_service_sid == "MG1"
    assert sms.keyword is None
    assert sms.raw["NumMedia"] == "0"


def test_inbound_without_body_is_media_only():
    sms = parse_inbound(inbound(None, NumMedia="1"), FORM)
    assert sms.body == "" and sms.keyword is None


def test_inbound_advanced_opt_out_type_wins():
    assert parse_inbound(inbound("ARRET", OptOutType="STOP"), FORM).keyword == "stop"
    assert parse_inbound(inbound("hello", OptOutType="start"), FORM).keyword == "start"
    assert parse_inbound(inbound("STOP", OptOutType="bogus"), FORM).keyword == "stop"


@pytest.mark.parametrize("missing", ["From", "To", "MessageSid"])
def test_inbound_missing_field(missing):
    fields = {"From": "+85291234567", "To": "+85230001234", "MessageSid": SID, "Body": "STOP"}
    del fields[missing]
    with pytest.raises(PayloadError, match=missing):
        parse_inbound(form(**fields), FORM)


def test_inbound_wrong_content_type():
    with pytest.raises(PayloadError):
        parse_inbound(b'{"Body": "STOP"}', "application/json")


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
