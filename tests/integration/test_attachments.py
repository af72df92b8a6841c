"""Attachments end to end (README, "Attachments"): jobs published with the client, sent by the
real worker through an aiosmtpd relay, the received bytes read by two MIME parsers that share
no code (Python's ``email`` and Debian's ``ripmime``, in C); the limits refused with their
reason by the client and by the worker; and nothing of an attachment's content left behind in
Redis, the logs, the status events or the dead letters, while a deferred job's retry still
carries it."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import uuid
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from outbox.logs import configure_logging
from sender.client import Outbox
from sender.models import InvalidJob
from tests.integration.helpers import collect, email_job, events, publish, running_worker

pytestmark = pytest.mark.integration
CHINESE = "二零二六年第四季度客戶發票及付款收據（香港分行）.pdf"


def _pdf(marker: bytes) -> bytes:
    """Bytes that look like a PDF, with ``marker`` (unique per test) and every byte value."""
    return b"%PDF-1.4\n" + marker + bytes(range(256)) * 40 + "中文內容\n".encode() + marker


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + os.urandom(600)


def _job(pdf: bytes, png: bytes, **over: Any) -> dict[str, Any]:
    return email_job(
        text="Your invoice is attached.", html='<p>Invoice <img src="cid:logo@acme.example"></p>',
        attachments=[
            {"filename": CHINESE, "content_type": "application/pdf",
             "content": base64.b64encode(pdf).decode()},
            {"filename": "logo.png", "content_type": "image/png",
             "content": base64.b64encode(png).decode(), "content_id": "logo@acme.example"}],
        **over)


def _ripmime(message: bytes, directory: Path) -> dict[str, bytes]:
    """The files Debian's ripmime (C, no code shared with Python's email) unpacks: name →
    bytes. Installed by ``make deps`` (Makefile DEBS)."""
    tool = shutil.which("ripmime")
    assert tool, "ripmime is not installed: make deps (Debian package ripmime)"
    (directory / "in.eml").write_bytes(message)
    out = directory / "out"
    out.mkdir()
    subprocess.run([tool, "-i", str(directory / "in.eml"), "-d", str(out), "--no-nameless"],
                   check=True, capture_output=True, timeout=30)
    return {p.name: p.read_bytes() for p in out.iterdir()}


async def _all_redis_values(redis_url: str) -> bytes:
    """Every key and value of the test's Redis db, concatenated (strings, hashes, lists, sets,
    sorted sets, streams)."""
    client = aioredis.Redis.from_url(redis_url)
    parts: list[bytes] = []
    try:
        async for key in client.scan_iter(count=1000):
            kind = (await client.type(key)).decode()
            parts.append(key)
            if kind == "string":
                parts.append(await client.get(key) or b"")
            elif kind == "hash":
                parts.extend(b"%s=%s" % kv for kv in (await client.hgetall(key)).items())
            elif kind == "list":
                parts.extend(await client.lrange(key, 0, -1))
            elif kind == "set":
                parts.extend(await client.smembers(key))
            elif kind == "zset":
                parts.extend(await client.zrange(key, 0, -1))
            elif kind == "stream":
                parts.extend(repr(e).encode() for e in await client.xrange(key))
    finally:
        await client.aclose()
    assert parts, "the worker wrote nothing to Redis?"
    return b"\n".join(parts)


def _traces(content: bytes) -> list[bytes]:
    """What would betray ``content``: its marker and stretches of its base64 at each of the
    three alignments (a copy of the base64 anywhere contains one of them)."""
    marker = content[9:41]
    return [marker] + [base64.b64encode(content[i:])[8:48] for i in range(3)]


async def test_a_chinese_named_attachment_and_an_inline_image_arrive_intact(
        make_settings, smtp_server, amqp_url, redis_url, tmp_path):
    log_lines = io.StringIO()
    configure_logging("DEBUG", "json", stream=log_lines)  # what `outbox worker` would write
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    pdf, png = _pdf(uuid.uuid4().hex.encode()), _png()
    job = _job(pdf, png)
    async with Outbox.from_settings(settings) as outbox:
        await outbox.enqueue(job)
    async with running_worker(settings):
        got = await collect(amqp_url, "outbox.status", lambda m: len(events(m)) >= 1)
    assert [(e["id"], e["status"]) for e in events(got)] == [(job["id"], "sent")]
    [data] = recorder.by_rcpt(job["to"])

    # Python's email parser: structure, names, bytes
    message = message_from_bytes(data, policy=default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/mixed"
    related, attached = message.get_payload()
    assert related.get_content_type() == "multipart/related"
    assert related.get_param("type") == "multipart/alternative"
    body, image = related.get_payload()
    assert body.get_content_type() == "multipart/alternative"
    assert 'src="cid:logo@acme.example"' in body.get_payload()[1].get_content()
    assert (image["Content-ID"], image.get_content_disposition(), image.get_content()) == \
        ("<logo@acme.example>", "inline", png)
    assert (attached.get_filename(), attached.get_content_disposition(),
            attached.get_content_type(), attached.get_content()) == \
        (CHINESE, "attachment", "application/pdf", pdf)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998

    # Debian's ripmime: the same files under the same names
    files = _ripmime(data, tmp_path)
    assert files[CHINESE] == pdf
    assert files["logo.png"] == png

    # nothing of the content kept: Redis (job record, timeline, history), logs, events
    kept = await _all_redis_values(redis_url)
    logged = log_lines.getvalue().encode()
    assert b'"level": "debug"' in logged or b'"level":"debug"' in logged  # DEBUG was on
    published = b"\n".join(m.body for m in got)
    for trace in _traces(pdf) + _traces(png):
        assert trace not in kept
        assert trace not in logged
        assert trace not in published


async def test_a_deferred_job_keeps_its_attachments_for_the_retry(
        make_settings, smtp_server, amqp_url):
    """The job's body waits in RabbitMQ (outbox.retry.<s>) during a retry: the relay's 451
    first, then the retry delivers the attachment byte for byte. The worker republished the
    whole body for the retry, and at DEBUG no log line holds it."""
    log_lines = io.StringIO()
    configure_logging("DEBUG", "json", stream=log_lines)
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    pdf, png = _pdf(uuid.uuid4().hex.encode()), _png()
    job = _job(pdf, png)
    recorder.replies[job["to"]] = "451 4.3.0 try again later"
    async with Outbox.from_settings(settings) as outbox:
        await outbox.enqueue(job)
    async with running_worker(settings):
        first = await collect(amqp_url, "outbox.status", lambda m: len(events(m)) >= 1)
        assert [e["status"] for e in events(first)] == ["deferred"]
        del recorder.replies[job["to"]]
        then = await collect(amqp_url, "outbox.status",
                             lambda m: any(e["status"] == "sent" for e in events(m)))
    assert [e["status"] for e in events(then)] == ["sent"]
    [data] = recorder.by_rcpt(job["to"])
    [attached] = message_from_bytes(data, policy=default).iter_attachments()
    assert (attached.get_filename(), attached.get_content()) == (CHINESE, pdf)
    logged = log_lines.getvalue().encode()
    assert b"deferred" in logged
    assert not [t for t in _traces(pdf) if t in logged]


@pytest.mark.parametrize(("change", "reason"), [
    (lambda a: [a[0]] * 3, "3 attachments, over the limit of 2 (OUTBOX_MAX_ATTACHMENTS)"),
    (lambda a: [{**a[0], "content": base64.b64encode(b"x" * 5001).decode()}],
     "attachments are 5001 bytes (decoded), over the limit of 5000"),
    (lambda a: [{**a[0], "content": a[0]["content"][:-1]}], "not strictly valid base64"),
    (lambda a: [{**a[0], "content": "aGVs bG8="}], "not strictly valid base64"),
    (lambda a: [{**a[0], "filename": "../../etc/passwd"}], "may not contain '/'"),
    (lambda a: [{**a[0], "filename": "invoice\x07.pdf"}], "may not contain '\\x07'"),
    (lambda a: [{**a[0], "content_type": "pdf"}], "is not a MIME type"),
    (lambda a: [{**a[0], "content_type": "message/rfc822"}], "message/* cannot be attached"),
    (lambda a: [{**a[0], "content_id": "<logo>"}], "is not a content id"),
    (lambda a: [a[1], a[1]], "two attachments have the same content_id"),
])
async def test_the_limits_are_refused_with_their_reason_by_client_and_worker(
        make_settings, smtp_server, amqp_url, change, reason):
    """The client refuses before publishing; a job published around it is dead-lettered by
    the worker with the same reason, a ``rejected`` event, and no content in the dead letter."""
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, max_attachments=2, max_attachment_bytes=5000)
    job = _job(b"%PDF-1.4 small", b"\x89PNG small")
    job["attachments"] = change(job["attachments"])
    async with Outbox.from_settings(settings) as outbox:
        with pytest.raises(InvalidJob, match="attachments") as refused:
            await outbox.enqueue(job)
        assert reason in refused.value.reason
    await publish(amqp_url, [job])
    async with running_worker(settings):
        got = await collect(amqp_url, "outbox.status", lambda m: len(events(m)) >= 1)
        [dead] = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
    [event] = events(got)
    assert (event["id"], event["status"], event["reason"]) == (job["id"], "rejected", "invalid")
    assert reason in event["detail"]
    assert reason in dead.headers["x-outbox-reason"]
    kept = json.loads(dead.body)["attachments"]
    assert all(a["content_removed"] and "content" not in a for a in kept)
    assert [a.get("filename") for a in kept] == [a.get("filename") for a in job["attachments"]]
    assert recorder.messages == []
