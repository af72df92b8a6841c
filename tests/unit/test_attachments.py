"""Attachments of email jobs: validation (sender.models.Attachment and the job's limits), MIME
(sender.mime: multipart/mixed, multipart/related for cid: images, RFC 2231 file names) read
back with Python's email parser, and the dead-letter copy without content."""

from __future__ import annotations

import base64
import json
import re
from email import message_from_bytes
from email.policy import default
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sender.channels.registry import parse_job
from sender.mime import render_email
from sender.models import (
    ATTACHMENT_LIMITS,
    AttachmentLimits,
    EmailJob,
    InvalidJob,
    without_attachment_content,
)

DOMAIN = "mail.outbox.example"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def job(attachments: list[dict[str, Any]], **over: Any) -> EmailJob:
    return EmailJob.model_validate({
        "v": 1, "id": "job-att-1", "account_id": "acct_1", "channel": "email",
        "category": "transactional", "to": "alice@example.com",
        "from": "Acme <sales@acme.example>", "subject": "Invoice", "text": "See attached.",
        "attachments": attachments, **over})


def render(j: EmailJob) -> Any:
    r = render_email(j, message_id_domain=DOMAIN, date=1_700_000_000)
    assert all(len(line) <= 998 for line in r.data.split(b"\r\n"))
    return r, message_from_bytes(r.data, policy=default)


PDF = {"filename": "invoice.pdf", "content_type": "application/pdf",
       "content": b64(b"%PDF-1.4 one")}
LOGO = {"filename": "logo.png", "content_type": "image/png", "content": b64(b"\x89PNG two"),
        "content_id": "logo@acme.example"}


def test_the_default_limits_are_ten_files_and_ten_mebibytes() -> None:
    assert (ATTACHMENT_LIMITS.count, ATTACHMENT_LIMITS.total_bytes) == (10, 10 * 1024 * 1024)


def test_a_job_without_attachments_renders_as_before() -> None:
    r, message = render(job([]))
    assert message.get_content_type() == "text/plain"
    assert b"multipart" not in r.data


def test_files_only_make_a_multipart_mixed_with_the_body_first() -> None:
    _, message = render(job([PDF], html="<p>hi</p>"))
    assert message.get_content_type() == "multipart/mixed"
    body, pdf = message.get_payload()
    assert body.get_content_type() == "multipart/alternative"
    assert (pdf.get_filename(), pdf.get_content_disposition(), pdf.get_content()) == \
        ("invoice.pdf", "attachment", b"%PDF-1.4 one")


def test_inline_images_only_make_a_multipart_related_with_the_body_as_root() -> None:
    _, message = render(job([LOGO], text=None, html='<img src="cid:logo@acme.example">'))
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "text/html"
    html, logo = message.get_payload()
    assert html.get_content_type() == "text/html"
    assert (logo["Content-ID"], logo.get_content_disposition(), logo.get_content()) == \
        ("<logo@acme.example>", "inline", b"\x89PNG two")


def test_a_long_or_non_ascii_name_is_an_rfc2231_parameter_in_short_lines() -> None:
    name = "二零二六年第四季度客戶發票及付款收據（香港分行）最終版本 — 已簽署 “確認”.pdf"
    r, message = render(job([{**PDF, "filename": name}]))
    [pdf] = message.iter_attachments()
    assert pdf.get_filename() == name
    assert pdf.get_param("name") == name  # on Content-Type too, for older readers
    head = r.data.split(b"%PDF")[0].split(b"application/pdf")[1]
    assert b"filename*0*=utf-8''%E4%BA%8C" in head
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


def test_a_short_ascii_name_is_quoted() -> None:
    r, message = render(job([{**PDF, "filename": 'Q1 "final" report; v2.pdf'}]))
    assert b'filename="Q1 \\"final\\" report; v2.pdf"' in r.data
    assert next(message.iter_attachments()).get_filename() == 'Q1 "final" report; v2.pdf'


names = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp"),
                              blacklist_characters="/\\"), min_size=1, max_size=255
                ).filter(lambda s: s == s.strip() and s not in (".", "..")
                         # Python's get_filename() unquotes: it drops the <> or "" around a
                         # whole name (email.utils.unquote), whatever the wire says
                         and not (len(s) > 1 and (s[0], s[-1]) in (("<", ">"), ('"', '"'))))


@settings(max_examples=200, deadline=None)
@given(names)
def test_any_valid_file_name_reads_back_the_same(name: str) -> None:
    _, message = render(job([{**PDF, "filename": name}]))
    [pdf] = message.iter_attachments()
    assert pdf.get_filename() == name
    assert pdf.get_content() == b"%PDF-1.4 one"


@pytest.mark.parametrize(("field", "value", "words"), [
    ("filename", "a/b.pdf", "may not contain '/'"),
    ("filename", "a\\b.pdf", "may not contain '\\\\'"),
    ("filename", "a\nb.pdf", "may not contain '\\n'"),
    ("filename", "invoice\u202efdp.exe", "may not contain '\\u202e'"),
    ("filename", " invoice.pdf", "is not a file name"),
    ("filename", "..", "is not a file name"),
    ("filename", "", "at least 1 character"),
    ("content_type", "application", "is not a MIME type"),
    ("content_type", "application/pdf; charset", "is not a MIME type"),
    ("content_type", "text/plain; charset=\"utf-8\nX: y\"", "is not a MIME type"),
    ("content_type", "text/plain; charset=\"é\"", "is not a MIME type"),
    ("content_type", "multipart/mixed", "multipart/* cannot be attached"),
    ("content_type", "text/plain; name=x.txt", "may not set name or boundary"),
    ("content", "aGVsbG8", "Incorrect padding"),
    ("content", "aGVsbG8=\n", "not strictly valid base64"),
    ("content", "aGVs*G8=", "not strictly valid base64"),
    ("content", "=aGVsbG8", "not strictly valid base64"),
    ("content", "中文", "not strictly valid base64"),
    ("content_id", "<logo@acme.example>", "is not a content id"),
    ("content_id", "logo acme", "is not a content id"),
])
def test_a_bad_attachment_is_refused_with_its_reason(field: str, value: str, words: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(words)):
        job([{**PDF, field: value}])


def test_valid_content_types_with_parameters_are_taken() -> None:
    for value in ("text/csv; charset=utf-8", 'text/plain;charset="utf-8"',
                  "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"):
        assert job([{**PDF, "content_type": value}]).attachments[0].content_type == value


def test_the_limits_come_from_the_validation_context() -> None:
    body = job([PDF, LOGO]).model_dump_json(by_alias=True).encode()
    parsed = parse_job(body, max_bytes=1 << 20)
    assert isinstance(parsed, EmailJob) and len(parsed.attachments) == 2
    with pytest.raises(InvalidJob, match="2 attachments, over the limit of 1"):
        parse_job(body, max_bytes=1 << 20, attachment_limits=AttachmentLimits(1, 1000))
    with pytest.raises(InvalidJob, match=r"attachments are 20 bytes \(decoded\), over the "
                                         r"limit of 19 \(OUTBOX_MAX_ATTACHMENT_BYTES\)"):
        parse_job(body, max_bytes=1 << 20, attachment_limits=AttachmentLimits(10, 19))
    assert parse_job(body, max_bytes=1 << 20, attachment_limits=AttachmentLimits(2, 20))


def test_the_decoded_size_is_exact_without_decoding() -> None:
    for n in range(0, 10):
        [a] = job([{**PDF, "content": b64(b"x" * n)}]).attachments
        assert a.size == n == len(a.data())


def test_the_content_is_never_in_a_repr_or_the_metadata() -> None:
    [a] = job([PDF]).attachments
    assert PDF["content"] not in repr(a)
    assert a.meta() == {"filename": "invoice.pdf", "content_type": "application/pdf",
                        "size": 12, "content_id": None}


def test_a_dead_letter_keeps_the_metadata_not_the_content() -> None:
    body = json.dumps({"id": "j", "attachments": [PDF, LOGO, "odd"]}).encode()
    kept = json.loads(without_attachment_content(body))
    assert kept["attachments"] == [
        {"filename": "invoice.pdf", "content_type": "application/pdf", "content_removed": True,
         "size": 12},
        {"filename": "logo.png", "content_type": "image/png", "content_id": "logo@acme.example",
         "content_removed": True, "size": 8},
        None]
    for untouched in (b"not json", b'{"attachments": "x"}', b'["attachments"]', b'{"id": 1}'):
        assert without_attachment_content(untouched) is untouched
