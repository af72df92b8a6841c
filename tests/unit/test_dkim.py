"""sender.dkim: canonicalisation equal to dkimpy's, keys and records, the signature header,
signatures dkimpy verifies on generated messages. OpenDKIM and the relay:
tests/integration/test_dkim_signing.py."""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sender.dkim import (
    DEFAULT_HEADERS,
    DkimError,
    DkimKey,
    DkimSigner,
    _fields,
    _plain,
    generate_ed25519,
    generate_rsa,
    public_record,
    relaxed_body,
    relaxed_header,
    txt_strings,
)
from tests.dkim_verifiers import dkimpy_results, records_of, split_signatures

MESSAGE = (b"From: Acme <sales@acme.example>\r\nTo: alice@example.com\r\n"
           b"Subject: Spring  offer\r\n\tfolded\r\nDate: Mon, 07 Dec 2026 12:00:00 +0000\r\n"
           b"Message-ID: <j1@mail.acme.example>\r\nMIME-Version: 1.0\r\n"
           b"X-Campaign: spring\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 7bit\r\n\r\n.Hello  \r\n\r\n\r\n")


@pytest.fixture(scope="module")
def rsa_key() -> DkimKey:
    return DkimKey.from_pem("acme.example", "rsa1", generate_rsa())


@pytest.fixture(scope="module")
def ed_key() -> DkimKey:
    return DkimKey.from_pem("acme.example", "ed1", generate_ed25519())


def h_tag(signature: bytes) -> list[str]:
    value = re.search(rb"\bh=([^;]*);", signature)
    assert value is not None
    return [n.strip().decode() for n in value.group(1).split(b":")]


# ------------------------------------------------------------------- canonicalisation


_WSP = st.sampled_from([" ", "\t", "  ", " \t ", "\t\t"])
_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)
_CHUNK = st.one_of(_TEXT, _WSP, st.just("é"), st.just("優"))
_LINE = st.lists(_CHUNK, max_size=8).map("".join)
#: a header value: lines joined by folds (CRLF + WSP), so whitespace-only lines, trailing
#: whitespace and leading tabs all occur
_VALUE = st.lists(st.tuples(_WSP, _LINE), max_size=4).flatmap(
    lambda folds: _LINE.map(lambda first: first + "".join(f"\r\n{w}{t}" for w, t in folds)))
_NAME = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
                min_size=1, max_size=20)


@given(name=_NAME, before_colon=st.sampled_from(["", " ", "\t", " \t"]), value=_VALUE)
@example(name="Subject", before_colon=" ", value=" \t hello \r\n\t  world\t ")
@example(name="X-Empty", before_colon="", value="")
@example(name="X-Blank", before_colon="", value="   \r\n \t ")
@settings(max_examples=500)
def test_relaxed_header_is_dkimpys(name: str, before_colon: str, value: str) -> None:
    raw_name = (name + before_colon).encode()
    raw_value = value.encode()
    [(c_name, c_value)] = Relaxed.canonicalize_headers([(raw_name, raw_value)])
    assert relaxed_header(raw_name, raw_value) == c_name + b":" + c_value


_BODY_LINE = st.lists(st.one_of(_CHUNK, st.just("."), st.just("..")), max_size=10).map("".join)


@given(lines=st.lists(_BODY_LINE, max_size=12), final_crlf=st.booleans(),
       extra_crlfs=st.integers(0, 3))
@example(lines=[], final_crlf=False, extra_crlfs=0)  # empty body
@example(lines=[""], final_crlf=True, extra_crlfs=3)  # only CRLFs
@example(lines=[" \t ", ""], final_crlf=True, extra_crlfs=0)  # whitespace-only lines
@example(lines=[".starts with a dot", "x \t"], final_crlf=False, extra_crlfs=0)
@settings(max_examples=500)
def test_relaxed_body_is_dkimpys(lines: list[str], final_crlf: bool, extra_crlfs: int) -> None:
    body = ("\r\n".join(lines) + ("\r\n" if final_crlf else "") + "\r\n" * extra_crlfs).encode()
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@given(st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b" ")))
@example(b"a\r\r\n \r\n\r\n")
@example(b"\r\n \r")
@settings(max_examples=500)
def test_relaxed_body_is_dkimpys_on_any_bytes(body: bytes) -> None:
    """Bare CR and LF, 8-bit bytes: canonicalisation treats them as text, as dkimpy does."""
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


def test_relaxed_examples_from_rfc6376_3_4_5() -> None:
    assert relaxed_header(b"A", b" X\r\n") == b"a:X\r\n"
    assert relaxed_header(b"B ", b" Y\t\r\n\tZ  ") == b"b:Y Z\r\n"
    assert relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""


# -------------------------------------------------------------- signatures on messages


_SIGNED_NAMES = ["From", "from", "FROM", "To", "Cc", "Subject", "Reply-To", "References",
                 "List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID", "Content-Type",
                 "X-Other", "Received", "Sender"]


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A message with a From, other headers (repeated, any case, folded, tabs, trailing
    whitespace, some not signed) and a body of any of the shapes above."""
    fields = [("From", " a@acme.example")]
    fields += draw(st.lists(st.tuples(st.sampled_from(_SIGNED_NAMES), _VALUE), max_size=10))
    order = draw(st.permutations(fields))
    head = "".join(f"{n}:{v}\r\n" for n, v in order).encode()
    body = "\r\n".join(draw(st.lists(_BODY_LINE, max_size=6))).encode()
    return head + b"\r\n" + body + draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))


@given(message=messages())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_dkimpy_verifies_every_generated_message(message: bytes, rsa_key: DkimKey,
                                                 ed_key: DkimKey) -> None:
    signed = DkimSigner().sign(message, [ed_key, rsa_key], now=1_700_000_000)
    assert dkimpy_results(signed, records_of([rsa_key, ed_key])) == [True, True]
    head = message.split(b"\r\n\r\n", 1)[0]
    if _plain(head):  # the fast path canonicalises exactly as the general one
        signer = DkimSigner()
        assert signer._select(_fields(head), True) == signer._select(_fields(head), False)
    names = h_tag(split_signatures(signed)[0][0])
    for name in ("From", "Reply-To"):  # oversigned
        present = len(re.findall(rb"(?mi)^" + name.encode() + rb"[ \t]*:", message))
        assert names.count(name) == present + 1


def test_signed_headers_in_order_once_per_instance_from_oversigned(rsa_key: DkimKey) -> None:
    message = b"Received: x\r\nTo: b@x.example\r\nTo: c@x.example\r\n" + MESSAGE
    [signature], rest = split_signatures(DkimSigner().sign(message, [rsa_key]))
    assert rest == message
    assert h_tag(signature) == ["From", "From", "Reply-To", "Subject", "Date", "To", "To", "To",
                                "Message-ID", "MIME-Version", "Content-Type",
                                "Content-Transfer-Encoding"]


def test_dual_signature_rsa_first_then_ed25519(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    signer = DkimSigner()
    signed = signer.sign(MESSAGE, [ed_key, rsa_key], now=1_700_000_000)
    sigs, rest = split_signatures(signed)
    assert rest == MESSAGE
    assert [re.search(rb"a=([\w-]+)", s).group(1) for s in sigs] == [  # type: ignore[union-attr]
        b"rsa-sha256", b"ed25519-sha256"]
    for sig in sigs:
        assert b" t=1700000000;" in sig and b"c=relaxed/relaxed;" in sig
        assert b" d=acme.example;" in sig
        assert max(map(len, sig.split(b"\r\n"))) <= 78
        assert sig.endswith(b"\r\n") and b"\n\r\n" not in sig
    bh = {re.search(rb"bh=([^;]+);", s).group(1) for s in sigs}  # type: ignore[union-attr]
    assert bh == {base64.b64encode(__import__("hashlib").sha256(b".Hello\r\n").digest())}
    assert signer.signature_headers(MESSAGE, [ed_key, rsa_key], now=1_700_000_000) + MESSAGE \
        == signed  # deterministic signatures (PKCS#1 v1.5, Ed25519)
    assert dkimpy_results(signed, records_of([rsa_key, ed_key])) == [True, True]


def test_tampering_is_seen(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    records = records_of([rsa_key, ed_key])
    signed = DkimSigner().sign(MESSAGE, [rsa_key, ed_key])
    for bad in (signed.replace(b".Hello", b".Hallo"),
                signed.replace(b"Subject: Spring", b"Subject: Sprung"),
                signed.replace(b"From: Acme", b"From: Evil <e@evil.example>\r\nFrom: Acme")):
        assert dkimpy_results(bad, records) == [False, False]
    other = DkimKey.from_pem("acme.example", "rsa1", generate_rsa())
    assert dkimpy_results(signed, {**records, **records_of([other])})[0] is False


def test_no_keys_leaves_the_message_as_it_is(rsa_key: DkimKey) -> None:
    assert DkimSigner().sign(MESSAGE, []) == MESSAGE


@pytest.mark.parametrize("message, why", [
    (b"To: a@x.example\r\n\r\nbody\r\n", "no From"),
    (b"\r\nbody\r\n", "no header"),
    (b"From: a@x.example\r\nnot a header\r\n\r\nbody\r\n", "without a name"),
    (b"From: a@x.example", "does not end with CRLF"),
])
def test_messages_that_cannot_be_signed(rsa_key: DkimKey, message: bytes, why: str) -> None:
    with pytest.raises(DkimError, match=why):
        DkimSigner().sign(message, [rsa_key])


def test_a_message_without_body(rsa_key: DkimKey) -> None:
    message = b"From: a@acme.example\r\nSubject: x\r\n"
    assert dkimpy_results(DkimSigner().sign(message, [rsa_key]), records_of([rsa_key])) == [True]


def test_signer_configuration() -> None:
    assert DkimSigner(oversign=iter(["from"]))._plan[0] == (b"from", "From", 1)
    with pytest.raises(DkimError, match="must cover From"):
        DkimSigner(["Subject"])
    with pytest.raises(DkimError, match="listed twice"):
        DkimSigner(["From", "subject", "Subject"])
    with pytest.raises(DkimError, match="invalid header name"):
        DkimSigner(["From", "Bad Name"])
    assert DEFAULT_HEADERS[0] == "From" and "List-Unsubscribe-Post" in DEFAULT_HEADERS


def test_now_must_be_seconds(rsa_key: DkimKey) -> None:
    with pytest.raises(DkimError, match="seconds"):
        DkimSigner().sign(MESSAGE, [rsa_key], now=-1)


# ------------------------------------------------------------------------ keys, records


def test_from_pem_reads_both_kinds_and_converts_an_idn() -> None:
    rsa_k = DkimKey.from_pem("Bücher.Example", "s2026", generate_rsa(1024))
    assert (rsa_k.domain, rsa_k.algorithm) == ("xn--bcher-kva.example", "rsa-sha256")
    assert isinstance(rsa_k.private_key, rsa.RSAPrivateKey)
    assert rsa_k.private_key.key_size == 1024
    ed_k = DkimKey.from_pem("acme.example", "ed", generate_ed25519())
    assert ed_k.algorithm == "ed25519-sha256"
    assert "PRIVATE" not in repr(ed_k) and "private_key" not in repr(ed_k)


def test_bad_keys_and_names_are_refused_without_echoing_the_key() -> None:
    pem = generate_rsa()
    with pytest.raises(DkimError) as exc:
        DkimKey.from_pem("acme.example", "s1", pem[:200] + pem[201:])
    assert "PRIVATE" not in str(exc.value) and pem[40:60].decode() not in str(exc.value)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(DkimError, match="RSA or Ed25519"):
        DkimKey.from_pem("acme.example", "s1", ec_pem)
    with pytest.raises(DkimError, match="selector"):
        DkimKey.from_pem("acme.example", "bad selector", pem)
    with pytest.raises(DkimError, match="domain"):
        DkimKey.from_pem("no dots here", "s1", pem)
    with pytest.raises(DkimError, match="does not match"):
        DkimKey("acme.example", "s1", "ed25519-sha256",
                rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(DkimError, match="1024"):
        generate_rsa(512)


def test_public_records_hold_the_public_keys(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    rec = public_record(rsa_key)
    assert rec.startswith("v=DKIM1; k=rsa; p=")
    spki = serialization.load_der_public_key(base64.b64decode(rec.split("p=")[1]))
    assert isinstance(rsa_key.private_key, rsa.RSAPrivateKey)
    assert spki.public_numbers() == rsa_key.private_key.public_key().public_numbers()  # type: ignore[union-attr]
    rec = public_record(ed_key)
    assert rec.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(rec.split("p=")[1])
    assert isinstance(ed_key.private_key, ed25519.Ed25519PrivateKey)
    assert raw == ed_key.private_key.public_key().public_bytes_raw()
    strings = txt_strings(public_record(rsa_key))
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == public_record(rsa_key)


def test_an_added_reply_to_breaks_the_signature_because_it_is_oversigned(
        rsa_key: DkimKey) -> None:
    """Why Reply-To is in OVERSIGNED: on a message without one, a Reply-To added by whoever
    replays the message would divert the replies and still pass without it."""
    records = records_of([rsa_key])

    def added(signer: DkimSigner) -> bytes:
        signed = signer.sign(MESSAGE, [rsa_key])
        return signed.replace(b"\r\nTo:", b"\r\nReply-To: thief@evil.example\r\nTo:")

    assert dkimpy_results(added(DkimSigner()), records) == [False]
    assert dkimpy_results(added(DkimSigner(oversign=("From",))), records) == [True]
