"""DKIM signatures of messages rendered by sender.mime, checked by two verifiers that share no
code with the signer: dkimpy and Debian's OpenDKIM (``opendkim-testmsg`` against a DNS server
on loopback, tests/dkim_verifiers.py), RSA and Ed25519, each signature of a dual-signed
message on its own; and on the bytes an aiosmtpd relay received after SMTP (dot-stuffed on
the way, unstuffed by the relay)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import pytest

from config import parse_smtp_url
from sender.channels.smtp import EmailOptions, SmtpChannel, SmtpPool, from_domain
from sender.dkim import DkimKey, DkimSigner, generate_ed25519, generate_rsa
from sender.mime import render_email
from sender.models import EmailJob
from tests.dkim_verifiers import OpenDkim, dkimpy_results, records_of, split_signatures

pytestmark = pytest.mark.integration

DOMAIN = "acme.example"
UNSUBSCRIBE = (("List-Unsubscribe", "<https://outbox.acme.example/u/tok123>, "
                "<mailto:unsub@acme.example?subject=tok123>"),
               ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
HTML = ("<!doctype html><html><body>\n  <p style=\"color:#444\">Spring  sale\t20% off</p>\n"
        "  <p>親愛的顧客：春季新品已經到店</p>\n</body></html>\n")


def job(**over: Any) -> EmailJob:
    base: dict[str, Any] = {
        "v": 1, "id": "01JD6Y3M9Q0B8ZP6X2N4K7R1TC", "account_id": "acct_1042",
        "channel": "email", "category": "marketing", "to": "alice@example.com",
        "from": "Acme Sales <sales@acme.example>", "subject": "Spring offer",
        "text": "Hello\n", "headers": {}}
    return EmailJob.model_validate({**base, **over})


#: name -> (job fields, extra headers): the shapes the issue names, rendered for real
MESSAGES: dict[str, tuple[dict[str, Any], tuple[tuple[str, str], ...]]] = {
    "utf8-subject": ({"subject": "【春季優惠】全場八折 — Grüße, señor! " * 3,
                      "from": "亞克美 Acme <sales@acme.example>"}, ()),
    "html-only": ({"text": None, "html": HTML}, UNSUBSCRIBE),
    "body-starts-with-dot": ({"text": ".hidden by a careless relay\n..two\n.\nend  \t\n\n\n"},
                             ()),
    "multipart": ({"text": "Hello \t there\n\n", "html": HTML,
                   "reply_to": "Support <help@acme.example>, \"Sales, HK\" <hk@acme.example>",
                   "headers": {"X-Campaign": "spring-2026",
                               "List-Id": "Spring  news <spring.acme.example>",
                               "References": " ".join(f"<m{i}@acme.example>" for i in range(9))}},
                  UNSUBSCRIBE),
    "utf8-address": ({"to": "josé@example.com", "text": "Olá\n" * 40}, ()),
    # multipart/mixed around multipart/related (an inline image by cid:) and an attachment
    # whose Chinese name is an RFC 2231 parameter in continuations
    "attachments": ({"html": HTML.replace("</body>", '<img src="cid:logo@acme.example">'
                                                     "</body>"),
                     "attachments": [
                         {"filename": "二零二六年春季價目表（香港）.pdf",
                          "content_type": "application/pdf",
                          "content": base64.b64encode(b"%PDF-1.4\n" * 300).decode()},
                         {"filename": "logo.png", "content_type": "image/png",
                          "content": base64.b64encode(bytes(range(256)) * 4).decode(),
                          "content_id": "logo@acme.example"}]}, UNSUBSCRIBE),
}


@pytest.fixture(scope="module")
def keys() -> dict[str, DkimKey]:
    return {"rsa": DkimKey.from_pem(DOMAIN, "s2026", generate_rsa()),
            "ed25519": DkimKey.from_pem(DOMAIN, "e2026", generate_ed25519())}


@pytest.fixture(scope="module")
def opendkim(keys: dict[str, DkimKey]) -> Iterator[OpenDkim]:
    with OpenDkim(records_of(keys.values())) as od:
        yield od


def rendered(name: str) -> bytes:
    fields, extra = MESSAGES[name]
    return render_email(job(**fields), message_id_domain="mail.acme.example",
                        extra_headers=(("X-Outbox-Account", "acct_1042"), *extra)).data


def keyset(keys: dict[str, DkimKey], which: str) -> list[DkimKey]:
    return list(keys.values()) if which == "both" else [keys[which]]


@pytest.mark.parametrize("which", ["rsa", "ed25519", "both"])
@pytest.mark.parametrize("name", list(MESSAGES))
def test_both_verifiers_accept_every_signature(name: str, which: str, keys: dict[str, DkimKey],
                                               opendkim: OpenDkim) -> None:
    chosen = keyset(keys, which)
    signed = DkimSigner().sign(rendered(name), chosen)
    assert len(split_signatures(signed)[0]) == len(chosen)
    assert dkimpy_results(signed, opendkim.records) == [True] * len(chosen)
    assert opendkim.results(signed) == [(0, "")] * len(chosen)
    assert {f"{k.selector}._domainkey.{DOMAIN}." for k in chosen} <= set(opendkim.queries)


BAD_SIGNATURE = "dkim_eom(): Bad signature"
TWO_FROM = "dkim_chunk(): Syntax error"  # OpenDKIM refuses two From before any signature


def _tampered(signed: bytes) -> dict[str, tuple[bytes, str]]:
    """What an attacker might do to the message, and what OpenDKIM says then."""
    evil = b"\r\nFrom: boss@evil.example"
    return {
        "body": (signed.replace(b"\r\n\r\nHello", b"\r\n\r\nHallo"), BAD_SIGNATURE),
        "subject": (signed.replace(b"Subject: Spring", b"Subject: Sprung"), BAD_SIGNATURE),
        "List-Unsubscribe renamed": (signed.replace(b"List-Unsubscribe: ", b"X-Gone: "),
                                     BAD_SIGNATURE),
        "Reply-To added": (signed.replace(b"\r\nTo:", b"\r\nReply-To: e@x.example\r\nTo:"),
                           BAD_SIGNATURE),
        "second From on top": (signed.replace(b"\r\nFrom:", evil + b"\r\nFrom:", 1), TWO_FROM),
        "second From below": (signed.replace(b"\r\nTo:", evil + b"\r\nTo:", 1), TWO_FROM),
    }


@pytest.mark.parametrize("which", ["rsa", "ed25519"])
def test_both_verifiers_refuse_a_changed_message(which: str, keys: dict[str, DkimKey],
                                                 opendkim: OpenDkim) -> None:
    """The checks above can fail: each verifier refuses every change. (A second From is
    refused by both whatever h= says: dkimpy always checks one From more than h= lists, and
    OpenDKIM refuses the message; that From is oversigned is tested in tests/unit.)"""
    message = render_email(job(), message_id_domain="mail.acme.example",
                           extra_headers=UNSUBSCRIBE).data
    signed = DkimSigner().sign(message, [keys[which]])
    assert opendkim.verify(signed) == (0, "")
    for what, (bad, expected) in _tampered(signed).items():
        assert bad != signed, what
        assert dkimpy_results(bad, opendkim.records) == [False], what
        status, out = opendkim.verify(bad)
        assert status != 0 and out.endswith(expected), (what, out)


def test_both_verifiers_refuse_a_key_that_is_not_published(keys: dict[str, DkimKey],
                                                           opendkim: OpenDkim) -> None:
    rotated = DkimKey.from_pem(DOMAIN, "s2026", generate_rsa())  # same selector, other key
    signed = DkimSigner().sign(rendered("multipart"), [rotated])
    assert dkimpy_results(signed, opendkim.records) == [False]
    status, out = opendkim.verify(signed)
    assert status != 0 and "dkim_eom()" in out, out


def test_after_rotation_old_and_new_selectors_both_verify(keys: dict[str, DkimKey],
                                                          opendkim: OpenDkim) -> None:
    """``rotate``: a new selector is published beside the old one; mail signed before and
    after verifies."""
    new = DkimKey.from_pem(DOMAIN, "s2027", generate_rsa())
    opendkim.records.update(records_of([new]))
    try:
        for key in (keys["rsa"], new):
            signed = DkimSigner().sign(rendered("html-only"), [key])
            assert dkimpy_results(signed, opendkim.records) == [True]
            assert opendkim.verify(signed) == (0, "")
        assert f"s2027._domainkey.{DOMAIN}." in opendkim.queries
    finally:
        opendkim.records.pop(f"s2027._domainkey.{DOMAIN}")


@pytest.mark.parametrize("name", list(MESSAGES))
async def test_what_the_relay_received_verifies(name: str, keys: dict[str, DkimKey],
                                                opendkim: OpenDkim,
                                                smtp_server: tuple[str, Any]) -> None:
    """Signed bytes through aiosmtplib to aiosmtpd: DATA is dot-stuffed on the way and
    unstuffed by the relay; what it received is what was signed, and both verifiers accept
    both signatures."""
    url, recorder = smtp_server
    parts = urlsplit(url)
    signed = DkimSigner().sign(rendered(name), list(keys.values()))
    await aiosmtplib.send(signed, sender="bounce@acme.example", recipients=["rcpt@example.com"],
                          hostname=parts.hostname, port=parts.port, start_tls=False)
    [(_, _, received)] = recorder.messages
    assert received == signed
    assert dkimpy_results(received, opendkim.records) == [True, True]
    assert opendkim.results(received) == [(0, ""), (0, "")]


# ---------------------------------------------------------------- the SMTP channel's hook


class KeysFor:
    """A stand-in for the domain store: keys per (account, From domain), and the calls."""

    def __init__(self, keys: dict[tuple[str, str], list[DkimKey]]) -> None:
        self.keys = keys
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, account_id: str, from_domain: str) -> list[DkimKey]:
        self.calls.append((account_id, from_domain))
        return self.keys.get((account_id, from_domain), [])


def email_channel(url: str, keys_for: KeysFor | None) -> SmtpChannel:
    pool = SmtpPool(parse_smtp_url(url), size=2, timeout=5, max_messages=100, idle_timeout=30)
    return SmtpChannel(pool, options=EmailOptions("mail.acme.example", keys_for=keys_for))


async def test_the_smtp_channel_signs_with_the_keys_of_the_account_and_from_domain(
        keys: dict[str, DkimKey], opendkim: OpenDkim, smtp_server: tuple[str, Any]) -> None:
    """What the relay received from the channel (rendered, signed, dot-stuffed once, sent
    over a pooled connection) verifies with both verifiers; the From domain is asked for as
    its A-label, per account."""
    url, recorder = smtp_server
    idn = DkimKey.from_pem("bücher.example", "s1", generate_ed25519())
    opendkim.records.update(records_of([idn]))
    keys_for = KeysFor({("acct_1042", DOMAIN): list(keys.values()), ("acct_7", idn.domain): [idn]})
    channel = email_channel(url, keys_for)
    try:
        await channel.send(job(category="transactional", text=".dot first\n..two\n"))
        await channel.send(job(category="transactional", account_id="acct_7",
                               **{"from": "Bücher <verkauf@Bücher.example>"}))
        await channel.send(job(category="transactional", account_id="acct_7"))  # no key
    finally:
        await channel.close()
    assert keys_for.calls == [("acct_1042", DOMAIN), ("acct_7", "xn--bcher-kva.example"),
                              ("acct_7", DOMAIN)]
    first, second, third = (data for _, _, data in recorder.messages)
    assert b"\r\n.dot first\r\n..two\r\n" in first  # unstuffed again by the relay
    assert dkimpy_results(first, opendkim.records) == [True, True]
    assert opendkim.results(first) == [(0, ""), (0, "")]
    assert dkimpy_results(second, opendkim.records) == [True]
    assert opendkim.results(second) == [(0, "")]
    assert b"DKIM-Signature" not in third


def test_outbox_dkim_false_leaves_messages_unsigned() -> None:
    from config import load_settings
    from sender.channels import smtp

    keys_for = KeysFor({})
    on = smtp.build(load_settings(), keys_for=keys_for)
    off = smtp.build(load_settings(dkim=False), keys_for=keys_for)
    assert load_settings().dkim is True
    assert on._options.keys_for is keys_for and off._options.keys_for is None


@pytest.mark.parametrize("mailbox, domain", [
    ("a@Acme.Example", "acme.example"),
    ("Acme <sales@acme.example>", "acme.example"),
    ('"Sales @ HK" <hk@mail.acme.example>', "mail.acme.example"),
    ("Bücher <verkauf@bücher.example> ", "xn--bcher-kva.example"),
])
def test_from_domain(mailbox: str, domain: str) -> None:
    assert from_domain(mailbox) == domain
