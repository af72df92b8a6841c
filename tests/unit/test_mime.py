"""sender.mime: render, then parse back with the stdlib's modern parser and compare."""

from __future__ import annotations

import re
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser, Parser

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sender import job_headers
from sender.mime import MimeError, RenderedEmail, dot_stuff, render_email
from sender.models import EmailJob

DOMAIN = "mail.outbox.example"
BPARSER = BytesParser(policy=policy.default)
SPARSER = Parser(policy=policy.default)


def job_dict(**over):
    base = {
        "v": 1, "id": "01JD6Y3M9Q0B8ZP6X2N4K7R1TC", "account_id": "acct_1042", "channel": "email",
        "category": "marketing", "to": "alice@example.com",
        "from": "Acme Sales <sales@acme.example>",
        "subject": "Spring offer", "text": "Hello\n", "html": None, "headers": {},
    }
    base.update(over)
    return base


def make_job(**over) -> EmailJob:
    return EmailJob.model_validate(job_dict(**over))


def raw_job(**over) -> EmailJob:
    """An EmailJob that skipped validation, as a buggy caller could hand it over."""
    d = job_dict(**over)
    d["from_"] = d.pop("from")
    return EmailJob.model_construct(**d)


def parse(r: RenderedEmail):
    if r.smtputf8:  # raw UTF-8 in headers (RFC 6532): the str parser reads it as text
        return SPARSER.parsestr(r.data.decode("utf-8"))
    return BPARSER.parsebytes(r.data)


def nl(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n")


def with_final_nl(s: str) -> str:
    s = nl(s)
    return s if s.endswith("\n") else s + "\n"


def nospace(s: str) -> str:
    return re.sub(r"[ \t]+", "", s)


def rfc2047_display_name(r: RenderedEmail, header: str = "From") -> str | None:
    """The display name decoded per RFC 2047 (``email.header.decode_header``), when encoded.

    Python's ``headerregistry`` is lossy here: it puts a space between adjacent encoded-words of
    a phrase (RFC 2047 6.2 says the white space between them is ignored) and collapses runs of
    spaces inside them, so for encoded names the exact check uses ``decode_header``.
    """
    head = r.data.split(b"\r\n\r\n", 1)[0].decode("utf-8").replace("\r\n ", " ")
    (value,) = [line[len(header) + 2:] for line in head.split("\r\n")
                if line.startswith(header + ": ")]
    display = value[: value.rfind("<")].strip() if value.endswith(">") else ""
    if not display.startswith("=?"):
        return None
    return str(make_header(decode_header(display)))


def check_wire_format(r: RenderedEmail) -> None:
    assert r.data.endswith(b"\r\n")
    for line in r.data.split(b"\r\n"):
        assert len(line) <= 998
        assert b"\r" not in line and b"\n" not in line
    if not r.smtputf8:
        assert r.data.isascii()
    assert b"\x00" not in r.data


# --------------------------------------------------------------------------------- strategies

HEADER_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00")
ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
ascii_local = st.from_regex(rf"[{ATEXT}]{{1,12}}(\.[{ATEXT}]{{1,8}}){{0,2}}", fullmatch=True)
utf8_local = st.sampled_from(["用户", "josé.ñ", "ü", "δοκιμή", "陳大文"])
domains = st.sampled_from([
    ("example.com", "example.com"), ("acme.example", "acme.example"),
    ("a-b.c0.example", "a-b.c0.example"),
    ("例子.广告", "xn--fsqu00a.xn--4rr70v"), ("bücher.example", "xn--bcher-kva.example"),
])


@st.composite
def addresses(draw, allow_utf8: bool = True):
    """(address as given, address as rendered)."""
    local = draw(st.one_of(ascii_local, utf8_local) if allow_utf8 else ascii_local)
    given_dom, wire_dom = draw(domains)
    return f"{local}@{given_dom}", f"{local}@{wire_dom}"


def shown(name: str) -> str:
    """The display name a reader must get back: RFC 5322 3.2.3 allows no control character
    but white space in a phrase's words (3.2.4's obs-qtext only as obsolete syntax, which s. 4
    forbids generating), so they are dropped, and a name of white space alone is no name."""
    visible = re.sub(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]", "", name)
    return visible if visible.strip(" \t") else ""


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


names = st.one_of(
    st.just(""),
    st.sampled_from(["Acme Sales", "陳大文", "Doe, John", 'The "Best" Shop', "O'Brien \\ Co.",
                     "Acme (HK) Ltd", "sales@acme.example", "=?utf-8?q?not_a_word?=", "🎉 Party"]),
    st.text(HEADER_CHARS, min_size=1, max_size=80).filter(lambda s: s.strip(" \t")),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=120)
    .filter(lambda s: s.strip(" ")),
)

line_text = st.one_of(
    st.text(HEADER_CHARS, max_size=60),
    st.sampled_from(["From here on", ".", "..", "From ", "trailing   ", "tab\t", "--", "=3D",
                     "<p>x</p>"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "中", "é", " ", "😀", "=", "ab cd "]),
              st.integers(900, 2100)),
)
line_end = st.sampled_from(["\n", "\r\n", "\r"])
bodies = st.lists(st.tuples(line_text, line_end), min_size=1, max_size=8).map(
    lambda parts: "".join(a + b for a, b in parts)
) | st.text(HEADER_CHARS, min_size=1, max_size=300)

header_names = st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True).filter(
    lambda n: job_headers.refusal(n) is None)  # X-SES-..., X-PM-...: tests/unit/test_job_headers.py
header_values = st.text(HEADER_CHARS, max_size=200)


@st.composite
def jobs(draw):
    name = draw(names)
    from_given, from_wire = draw(addresses())
    to_given, to_wire = draw(addresses())
    kind = draw(st.sampled_from(["text", "html", "both"]))
    text = draw(bodies) if kind in ("text", "both") else None
    html = draw(bodies) if kind in ("html", "both") else None
    if html is not None and draw(st.booleans()):
        html = "<html><body>" + html + "</BODY >\n</html>"
    hdrs = draw(st.dictionaries(header_names, header_values, max_size=4))
    lowered = {}
    for k, v in hdrs.items():
        lowered.setdefault(k.lower(), (k, v))
    hdrs = dict(lowered.values())
    job = make_job(
        id=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True)),
        subject=draw(st.text(HEADER_CHARS, max_size=300)),
        **{"from": f"{quote(name)} <{from_given}>" if name else from_given},
        to=to_given, text=text or None, html=html or None, headers=hdrs,
    )
    if not job.text and not job.html:
        job = job.model_copy(update={"text": "x"})
    return job, name, from_wire, to_wire


footers = st.one_of(st.none(), st.text(HEADER_CHARS | st.sampled_from(["\n", "\r"]),
                                       min_size=1, max_size=120))


# ----------------------------------------------------------------------------- property tests


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs(), footers, footers, st.text(HEADER_CHARS, max_size=100))
@example((make_job(**{"from": '"\t\x1f" <a@b.example>'}, to="c@d.example"), "\t\x1f",
          "a@b.example", "c@d.example"), None, None, "")
def test_round_trip(generated, footer_text, footer_html, unsub):
    job, name, from_wire, to_wire = generated
    name = shown(name)
    extra = [("List-Unsubscribe", "<https://u.example/u/" + unsub.encode().hex() + ">"),
             ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"), ("X-Outbox-Note", unsub)]
    r = render_email(job, message_id_domain=DOMAIN, extra_headers=extra,
                     footer_text=footer_text, footer_html=footer_html, date=1_700_000_000)
    check_wire_format(r)
    assert r.envelope_from == from_wire
    assert r.recipients == (to_wire,)
    assert r.message_id == f"<{job.id}@{DOMAIN}>"
    assert r.smtputf8 == (not (from_wire + to_wire).isascii())

    msg = parse(r)
    assert str(msg["Subject"]) == job.subject
    (frm,) = msg["From"].addresses
    assert frm.addr_spec == from_wire
    assert nospace(frm.display_name) == nospace(name)
    encoded = rfc2047_display_name(r)
    assert frm.display_name == name if encoded is None else encoded == name
    (to,) = msg["To"].addresses
    assert to.addr_spec == to_wire and to.display_name == ""
    assert str(msg["Message-ID"]) == r.message_id
    assert str(msg["Date"]) == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert str(msg["MIME-Version"]) == "1.0"
    for hname, value in extra:
        assert str(msg[hname]) == value
    for hname, value in job.headers.items():
        assert str(msg[hname]) == value

    expected = {}
    if job.text:
        expected["text/plain"] = (with_final_nl(job.text)
                                  + (with_final_nl(footer_text) if footer_text else ""))
    if job.html:
        html = job.html
        if footer_html:
            i = html.rfind("</BODY >")
            html = html[:i] + footer_html + html[i:] if i >= 0 else html + footer_html
        expected["text/html"] = with_final_nl(html)
    if len(expected) == 2:
        assert msg.get_content_type() == "multipart/alternative"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    else:
        assert not msg.is_multipart()
        parts = [msg]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert nl(part.get_content()) == expected[part.get_content_type()]
        assert not part.defects
    assert not msg.defects


dotted_bodies = st.lists(st.sampled_from([".", "..", ".x", "x.", "\n", "\r", "\r\n", "é", "x"]),
                         max_size=30).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs(), dotted_bodies, dotted_bodies)
def test_wire_is_data_dot_stuffed(generated, text, html):
    """What the SMTP channel writes after DATA: every line of ``data``, a leading "." doubled
    (so the server's un-stuffing gives ``data`` back), and ``data`` itself when none starts
    with "."."""
    job = generated[0].model_copy(update={"text": text or None, "html": html or None})
    if not job.text and not job.html:
        job = job.model_copy(update={"text": "."})
    r = render_email(job, message_id_domain=DOMAIN, date=1_700_000_000)
    check_wire_format(r)
    lines = r.wire.split(b"\r\n")
    assert all(line[:2] == b".." for line in lines if line[:1] == b".")
    assert b"\r\n".join(line[1:] if line[:1] == b"." else line for line in lines) == r.data
    if not any(line[:1] == b"." for line in r.data.split(b"\r\n")):
        assert r.wire is r.data


def test_dot_stuff():
    assert dot_stuff(b".a\r\n..b\r\n.\r\nc.\r\n") == b"..a\r\n...b\r\n..\r\nc.\r\n"
    data = b"a\r\nb.\r\n"
    assert dot_stuff(data) is data


@settings(max_examples=200, deadline=None)
@given(st.text(HEADER_CHARS, max_size=998), header_names, header_values)
def test_headers_fold_and_decode(subject, hname, value):
    r = render_email(make_job(subject=subject, headers={hname: value}), message_id_domain=DOMAIN,
                     date=0)
    check_wire_format(r)
    msg = parse(r)
    assert str(msg["Subject"]) == subject
    assert str(msg[hname]) == value
    head = r.data.split(b"\r\n\r\n", 1)[0].decode()
    for line in head.split("\r\n"):
        if "=?utf-8?" in line:  # encoded-word lines always fit in 78
            assert len(line) <= 78, line


@settings(max_examples=300, deadline=None)
@given(st.text(HEADER_CHARS, min_size=1, max_size=300), st.integers(0, 78))
def test_encoded_words_hold_whole_characters(text, first_room):
    from sender.mime import _encoded_words

    words = _encoded_words(text, first_room)
    decoded = []
    for k, word in enumerate(words):
        assert len(word) <= (75 if k or first_room < 32 else first_room), (first_room, word)
        ((raw, charset),) = decode_header(word)
        assert charset == "utf-8"
        decoded.append(raw.decode("utf-8"))  # strict: each word is whole characters
    assert "".join(decoded) == text


# ---------------------------------------------------------------------------------- unit tests


def test_simple_text_message_bytes():
    r = render_email(make_job(), message_id_domain=DOMAIN, date=0)
    assert r.data == (
        b"From: Acme Sales <sales@acme.example>\r\n"
        b"To: alice@example.com\r\n"
        b"Subject: Spring offer\r\n"
        b"Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        b"Message-ID: <01JD6Y3M9Q0B8ZP6X2N4K7R1TC@mail.outbox.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n"
        b"\r\n"
        b"Hello\r\n"
    )
    assert r.envelope_from == "sales@acme.example"
    assert r.recipients == ("alice@example.com",)
    assert r.message_id == "<01JD6Y3M9Q0B8ZP6X2N4K7R1TC@mail.outbox.example>"
    assert r.smtputf8 is False


def test_header_order():
    job = make_job(reply_to="Support <help@acme.example>", headers={"X-Campaign": "spring"})
    r = render_email(job, message_id_domain=DOMAIN, extra_headers=[("List-Unsubscribe", "<https://u/x>")])
    names = [line.split(b":", 1)[0] for line in r.data.split(b"\r\n\r\n")[0].split(b"\r\n")]
    assert names == [b"From", b"To", b"Reply-To", b"Subject", b"Date", b"Message-ID",
                     b"MIME-Version", b"List-Unsubscribe", b"X-Campaign", b"Content-Type",
                     b"Content-Transfer-Encoding"]


def test_non_ascii_display_name_and_subject():
    job = make_job(**{"from": "陳大文 <tai@acme.example>"}, subject="春季優惠 " * 20)
    r = render_email(job, message_id_domain=DOMAIN)
    assert r.data.isascii() and not r.smtputf8
    msg = parse(r)
    assert msg["From"].addresses[0].display_name == "陳大文"
    assert str(msg["Subject"]) == "春季優惠 " * 20
    assert all(len(line) <= 78 for line in r.data.split(b"\r\n\r\n")[0].split(b"\r\n"))


def test_multipart_alternative_structure():
    job = make_job(text="Hi 你好", html="<html><body><p>Hi</p></body></html>")
    r = render_email(job, message_id_domain=DOMAIN, footer_text="Unsubscribe: https://u/x",
                     footer_html="<p><a href='https://u/x'>Unsubscribe</a></p>")
    msg = parse(r)
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert nl(text.get_content()) == "Hi 你好\nUnsubscribe: https://u/x\n"
    assert html.get_content_type() == "text/html"
    assert nl(html.get_content()) == "<html><body><p>Hi</p><p><a href='https://u/x'>Unsubscribe</a></p></body></html>\n"
    boundary = msg.get_boundary()
    assert boundary.startswith("=_")
    assert r.data.count(b"--" + boundary.encode()) == 3


@pytest.mark.parametrize("kind", ["text", "html"])
def test_single_part_and_foreign_footer_ignored(kind):
    job = make_job(text="plain" if kind == "text" else None,
                   html="<b>x</b>" if kind == "html" else None)
    r = render_email(job, message_id_domain=DOMAIN, footer_text="FT", footer_html="<i>FH</i>")
    msg = parse(r)
    assert not msg.is_multipart()
    if kind == "text":
        assert msg.get_content_type() == "text/plain"
        assert nl(msg.get_content()) == "plain\nFT\n"
    else:
        assert msg.get_content_type() == "text/html"
        assert nl(msg.get_content()) == "<b>x</b><i>FH</i>\n"


def test_transfer_encodings_chosen_by_size():
    def cte(text):
        rendered = render_email(make_job(text=text), message_id_domain=DOMAIN)
        return parse(rendered)["Content-Transfer-Encoding"]
    assert cte("plain ascii\n" * 10) == "7bit"
    assert cte("x" * 1000) == "quoted-printable"  # line too long for 7bit
    assert cte("Café au lait, s'il vous plaît\n" * 5) == "quoted-printable"
    assert cte("春季優惠，只限今天。" * 50) == "base64"
    assert cte("nul\x00byte") == "quoted-printable"


def test_boundary_never_in_7bit_body(monkeypatch):
    import sender.mime as mime
    tokens = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr(mime.secrets, "token_hex", lambda n: next(tokens))
    job = make_job(text="--=_" + "a" * 32 + "\n", html="<p>x</p>")
    r = render_email(job, message_id_domain=DOMAIN)
    assert parse(r).get_boundary() == "=_" + "b" * 32


@pytest.mark.parametrize("value", ["a\r\nBcc: x@evil.example", "a\nb", "a\rb", "a\x00b"])
def test_header_injection_in_values_refused(value):
    with pytest.raises(MimeError, match="X-Campaign"):
        render_email(raw_job(headers={"X-Campaign": value}), message_id_domain=DOMAIN)
    with pytest.raises(MimeError, match="X-Ours"):
        render_email(make_job(), message_id_domain=DOMAIN, extra_headers=[("X-Ours", value)])


@pytest.mark.parametrize("field", ["subject", "from", "to", "reply_to"])
def test_header_injection_in_job_fields(field):
    value = {"subject": "Hi\r\nBcc: x@evil.example", "from": "a@b.example\r\nBcc: x@evil.example",
             "to": "a@b.example\nBcc: x@evil.example",
             "reply_to": "a@b.example\rBcc: x@evil.example"}[field]
    with pytest.raises(ValueError):  # the model refuses it...
        make_job(**{field: value})
    with pytest.raises(MimeError):  # ...and so does the renderer when validation was skipped
        render_email(raw_job(**{field: value}), message_id_domain=DOMAIN)


@pytest.mark.parametrize("name", ["Bad Name", "Bad:Name", "", "Naïve", "X\x7f", "X" * 77])
def test_bad_header_names_refused(name):
    with pytest.raises(MimeError):
        render_email(raw_job(headers={name: "v"}), message_id_domain=DOMAIN)


@pytest.mark.parametrize("name", [
    "From", "to", "CC", "Bcc", "Subject", "date", "Message-Id", "MIME-Version", "content-type",
    "Content-Transfer-Encoding", "Reply-To", "Sender", "Return-Path", "Received", "DKIM-Signature",
    "List-Unsubscribe", "list-unsubscribe-post", "Content-Disposition",
])
def test_reserved_names_refused(name):
    with pytest.raises(ValueError, match=f"header {name} is refused"):  # the model refuses...
        make_job(headers={name: "v"})
    with pytest.raises(MimeError, match=f"header {name} is refused"):  # ...and the renderer
        render_email(raw_job(headers={name: "v"}), message_id_domain=DOMAIN)
    if name.lower() not in ("list-unsubscribe", "list-unsubscribe-post"):
        with pytest.raises(MimeError, match="reserved"):
            render_email(make_job(), message_id_domain=DOMAIN, extra_headers=[(name, "v")])


def test_extra_headers_may_set_list_unsubscribe_and_win_over_job_headers():
    job = make_job(headers={"X-Campaign": "job", "X-Other": "kept"})
    r = render_email(job, message_id_domain=DOMAIN, extra_headers=[
        ("List-Unsubscribe", "<https://u.example/u/t>, <mailto:u@u.example>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"), ("x-campaign", "ours")])
    msg = parse(r)
    assert msg["List-Unsubscribe"] == "<https://u.example/u/t>, <mailto:u@u.example>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_all("X-Campaign") == ["ours"]
    assert msg["X-Other"] == "kept"


@pytest.mark.parametrize("from_", [
    "no-at-sign", "Name <>", "a@b.example, c@d.example", "Doe, John <j@x.example>",
    "a@b.example <c@d.example>", "alice@example.org)<bob@example.com>", "Name <a@b@c.example>",
    "<a@-bad-.example>", "Name <a..b@c.example>", '"Unclosed <a@b.example>', "a@b.example>",
    "Name <a b@c.example>", "x" * 65 + "@b.example",
])
def test_bad_from_refused(from_):
    with pytest.raises(MimeError):
        render_email(raw_job(**{"from": from_}), message_id_domain=DOMAIN)


def test_encoded_display_name_hiding_crlf_refused():
    with pytest.raises(MimeError, match="CR, LF"):
        forged = "=?utf-8?q?a=0D=0ABcc=3A_x=40evil=2Eexample?= <a@b.example>"
        render_email(make_job(**{"from": forged}), message_id_domain=DOMAIN)


@pytest.mark.parametrize(("from_", "name", "addr"), [
    ("sales@acme.example", "", "sales@acme.example"),
    ("<sales@acme.example>", "", "sales@acme.example"),
    ("  Acme   Sales  <sales@acme.example> ", "Acme Sales", "sales@acme.example"),
    ('"Doe, John" <j@x.example>', "Doe, John", "j@x.example"),
    ("John Q. Public <j@x.example>", "John Q. Public", "j@x.example"),
    ("Acme (HK) Ltd <x@y.example>", "Acme (HK) Ltd", "x@y.example"),
    ("=?utf-8?b?6Zmz5aSn5paH?= <tai@acme.example>", "陳大文", "tai@acme.example"),
    ("陳大文 <tai@acme.example>", "陳大文", "tai@acme.example"),
])
def test_from_forms(from_, name, addr):
    r = render_email(make_job(**{"from": from_}), message_id_domain=DOMAIN)
    (a,) = parse(r)["From"].addresses
    assert (a.display_name, a.addr_spec) == (name, addr)
    assert r.envelope_from == addr


def test_idn_domain_is_punycoded_and_utf8_local_part_needs_smtputf8():
    r = render_email(make_job(to="bob@bücher.example"), message_id_domain=DOMAIN)
    assert r.recipients == ("bob@xn--bcher-kva.example",) and not r.smtputf8
    assert r.data.isascii()
    r = render_email(make_job(to="用户@例子.广告"), message_id_domain=DOMAIN)
    assert r.recipients == ("用户@xn--fsqu00a.xn--4rr70v",) and r.smtputf8
    assert "To: 用户@xn--fsqu00a.xn--4rr70v\r\n".encode() in r.data
    with pytest.raises(ValueError, match="domain"):
        make_job(to="bob@xn--bad-.example")
    with pytest.raises(MimeError, match="domain"):
        render_email(raw_job(to="bob@xn--bad-.example"), message_id_domain=DOMAIN)


def test_reply_to_list_and_envelope_override():
    job = make_job(reply_to='"Help, Desk" <help@acme.example>, ops@acme.example')
    r = render_email(job, message_id_domain=DOMAIN,
                     envelope_from="bounce+01JD@bounces.acme.example")
    assert [a.addr_spec for a in parse(r)["Reply-To"].addresses] == ["help@acme.example",
                                                                      "ops@acme.example"]
    assert parse(r)["Reply-To"].addresses[0].display_name == "Help, Desk"
    assert r.envelope_from == "bounce+01JD@bounces.acme.example"
    with pytest.raises(MimeError):
        render_email(job, message_id_domain=DOMAIN, envelope_from="not an address")


def test_oversize_refused():
    job = make_job(text="x" * 5000)
    size = len(render_email(job, message_id_domain=DOMAIN).data)
    with pytest.raises(MimeError,
                       match=rf"^message is {size} bytes, over the limit of {size - 1}$"):
        render_email(job, message_id_domain=DOMAIN, max_bytes=size - 1)
    with pytest.raises(MimeError, match="over the limit of 100$"):
        render_email(job, message_id_domain=DOMAIN, max_bytes=100)
    assert len(render_email(job, message_id_domain=DOMAIN, max_bytes=size).data) == size


def test_bad_ids_domain_date_and_unicode():
    with pytest.raises(MimeError, match="Message-ID"):
        render_email(raw_job(id="<evil>"), message_id_domain=DOMAIN)
    with pytest.raises(MimeError, match="message_id_domain"):
        render_email(make_job(), message_id_domain="bad domain>")
    with pytest.raises(MimeError, match="date"):
        render_email(make_job(), message_id_domain=DOMAIN, date=float("nan"))
    with pytest.raises(MimeError, match="Unicode"):
        render_email(raw_job(text="lone \ud800 surrogate"), message_id_domain=DOMAIN)
    with pytest.raises(MimeError):
        render_email(raw_job(text=None, html=None), message_id_domain=DOMAIN)


def test_long_unbreakable_ascii_header_uses_encoded_words():
    value = "x" * 1500
    r = render_email(raw_job(headers={"X-Long": value}), message_id_domain=DOMAIN)
    check_wire_format(r)
    assert str(parse(r)["X-Long"]) == value


def test_same_as_emailmessage_semantics():
    """What we render reads back like what EmailMessage would have built."""
    job = make_job(subject="春季優惠 Spring", text="Hi\n", html="<p>Hi</p>\n")
    ours = parse(render_email(job, message_id_domain=DOMAIN))
    ref = EmailMessage()
    ref["Subject"] = job.subject
    ref.set_content(job.text)
    ref.add_alternative(job.html, subtype="html")
    ref = BPARSER.parsebytes(ref.as_bytes(policy=policy.SMTP))
    assert str(ours["Subject"]) == str(ref["Subject"])
    for a, b in zip(ours.iter_parts(), ref.iter_parts(), strict=True):
        assert a.get_content_type() == b.get_content_type()
        assert nl(a.get_content()) == nl(b.get_content())


@pytest.mark.parametrize(("given", "header"), [
    ('"\t\x1f" <a@b.example>', "From: a@b.example"),  # only white space left: no name
    ('"Ann\x07 Lee" <a@b.example>', 'From: Ann Lee <a@b.example>'),
    ("=?utf-8?q?Ann=1F?= <a@b.example>", "From: Ann <a@b.example>"),  # decoded, then dropped
])
def test_control_characters_never_reach_a_display_name(given, header):
    r = render_email(make_job(**{"from": given}, to="c@d.example", text="x"),
                     message_id_domain=DOMAIN, date=1_700_000_000)
    assert header.encode() in r.data.split(b"\r\n")
