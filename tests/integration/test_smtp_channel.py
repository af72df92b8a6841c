"""The SMTP channel against real aiosmtpd servers: replies per recipient, STARTTLS with a
self-signed certificate, AUTH, implicit TLS, a relay that drops the connection mid-DATA,
and the pool's connection reuse and per-connection cap."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from config import parse_smtp_url
from sender.channels.base import OutcomeUnknown, SendFailure
from sender.channels.smtp import SmtpChannel, SmtpPool
from sender.models import EmailJob
from tests.conftest import Recorder, RecordingHandler
from tests.integration.helpers import email_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*map(str, certificate))
    return ctx


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"relay",
                                                                              b"s3cret")
    return AuthResult(success=ok, handled=False)


async def _serve(recorder: Recorder, **smtp_kwargs: Any) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    ssl_context = smtp_kwargs.pop("server_ssl", None)
    server = await loop.create_server(
        lambda: SMTP(RecordingHandler(recorder), hostname="test-mx", **smtp_kwargs),
        host="127.0.0.1", port=0, ssl=ssl_context)
    return server, server.sockets[0].getsockname()[1]


def _channel(url: str, **pool: Any) -> SmtpChannel:
    options = {"size": 4, "timeout": 5, "max_messages": 100, "idle_timeout": 30, **pool}
    return SmtpChannel(SmtpPool(parse_smtp_url(url), **options),
                       message_id_domain="mail.test")


def _job(**fields: Any) -> EmailJob:
    return EmailJob.model_validate(email_job(**fields))


async def test_replies_are_told_apart_per_recipient(smtp_server):
    url, recorder = smtp_server
    recorder.replies["full@example.com"] = "452 4.2.2 Mailbox full"
    recorder.replies["gone@example.com"] = "550 5.1.1 User unknown"
    recorder.replies["spam@example.com"] = "554 5.7.1 Message rejected: listed on Spamhaus"
    channel = _channel(url)
    result = await channel.send(_job(to="ok@example.com"))
    assert (result.provider, result.provider_message_id) == ("smtp", "Q1")
    outcomes = {}
    for rcpt in ("full@example.com", "gone@example.com", "spam@example.com"):
        with pytest.raises(SendFailure) as info:
            await channel.send(_job(to=rcpt))
        outcomes[rcpt] = (info.value.outcome.kind, info.value.outcome.reason)
    await channel.close()
    assert outcomes == {"full@example.com": ("soft", "mailboxfull"),
                        "gone@example.com": ("hard", "userunknown"),
                        "spam@example.com": ("block", "blocked")}
    assert len(recorder.messages) == 1


async def test_starttls_with_a_self_signed_certificate_and_auth(certificate):
    recorder = Recorder()
    server, port = await _serve(recorder, tls_context=_server_context(certificate),
                                require_starttls=True, auth_required=True,
                                authenticator=_authenticator)
    try:
        good = _channel(f"smtp://relay:s3cret@127.0.0.1:{port}?starttls=true&verify=false")
        await good.send(_job(to="a@example.com"))
        await good.close()
        wrong = _channel(f"smtp://relay:nope@127.0.0.1:{port}?starttls=true&verify=false")
        with pytest.raises(SendFailure) as bad_auth:
            await wrong.send(_job(to="b@example.com"))
        await wrong.close()
        strict = _channel(f"smtp://relay:s3cret@127.0.0.1:{port}?starttls=true")
        with pytest.raises(SendFailure) as untrusted:
            await strict.send(_job(to="c@example.com"))
        await strict.close()
    finally:
        server.close()
    assert [r for _, r, _ in recorder.messages] == [["a@example.com"]]
    assert bad_auth.value.outcome.code == 535
    assert untrusted.value.outcome.kind == "transient"  # a certificate we cannot trust


async def test_implicit_tls(certificate):
    recorder = Recorder()
    server, port = await _serve(recorder, server_ssl=_server_context(certificate))
    try:
        channel = _channel(f"smtps://127.0.0.1:{port}?verify=false")
        await channel.send(_job(to="tls@example.com"))
        await channel.close()
    finally:
        server.close()
    assert len(recorder.messages) == 1


class _DropOnce(RecordingHandler):
    """Drops the connection in the middle of the first DATA, then behaves."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.dropped = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.dropped:
            self.dropped += 1
            server.transport.abort()
            return "451 never seen"
        return await super().handle_DATA(server, session, envelope)


async def test_relay_dropping_the_connection_after_the_message_is_an_unknown_outcome(
        smtp_server):
    """The relay had the whole message when it hung up: it may have stored it, so this is no
    failure to retry (OutcomeUnknown: the pipeline retries it only as after a crash)."""
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    handler = _DropOnce(recorder)  # one handler for every connection: it drops only once
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = _channel(f"smtp://127.0.0.1:{port}")
    try:
        with pytest.raises(OutcomeUnknown) as info:
            await channel.send(_job(to="x@example.com"))
        assert info.value.provider == "smtp" and "no reply to the end of the message" in \
            info.value.detail
        await channel.send(_job(to="x@example.com"))  # the pool opened a fresh connection
    finally:
        await channel.close()
        server.close()
    assert len(recorder.messages) == 1


async def test_pool_reuses_connections_and_caps_messages_per_connection(smtp_server):
    url, recorder = smtp_server
    channel = _channel(url, size=2, max_messages=5)
    await asyncio.gather(*(channel.send(_job()) for _ in range(20)))
    opened = channel._pool.opened
    await channel.close()
    assert len(recorder.messages) == 20
    assert 4 <= opened <= 6  # 20 messages, at most 5 per connection, 2 at a time


async def test_connection_refused_is_a_network_error():
    channel = _channel("smtp://127.0.0.1:1")
    with pytest.raises(SendFailure) as info:
        await channel.send(_job())
    await channel.close()
    assert info.value.outcome.reason == "networkerror"


async def test_concurrency_is_bounded_per_recipient_domain(smtp_server):
    from sender.channels.smtp import DomainLimiter

    url, recorder = smtp_server
    recorder.delay = 0.05
    limiter = DomainLimiter({"slow.example": 2}, default=8)
    channel = SmtpChannel(SmtpPool(parse_smtp_url(url), size=16, timeout=5, max_messages=100,
                                   idle_timeout=30), message_id_domain="mail.test",
                          domains=limiter)
    peak = {"slow.example": 0, "fast.example": 0}

    async def watch() -> None:
        while True:
            for domain in peak:
                in_use = limiter(f"x@{domain}").free  # free slots left
                limit = 2 if domain == "slow.example" else 8
                peak[domain] = max(peak[domain], limit - in_use)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    jobs = [_job(to=f"u{i}@slow.example") for i in range(8)] + \
        [_job(to=f"u{i}@fast.example") for i in range(8)]
    await asyncio.gather(*(channel.send(j) for j in jobs))
    watcher.cancel()
    await channel.close()
    assert len(recorder.messages) == 16
    assert peak["slow.example"] == 2
    assert peak["fast.example"] > 2


async def test_an_internationalised_address_goes_out_with_smtputf8(smtp_server):
    url, recorder = smtp_server
    channel = _channel(url, size=1)
    recorder.replies["gone@example.com"] = "550 5.1.1 User unknown"
    with pytest.raises(SendFailure):
        await channel.send(_job(to="gone@example.com"))
    await channel.send(_job(to="陳大文@example.com"))  # same connection, after the RSET
    await channel.close()
    assert [r for _, r, _ in recorder.messages] == [["陳大文@example.com"]]
    assert channel._pool.opened == 1


async def test_the_end_of_data_reply_has_its_own_timeout(smtp_server):
    """Every other reply is waited for ``timeout`` (0.5 s here), the one to the message's
    end ``data_timeout``: a relay taking 1.5 s to answer it is waited for; one taking
    longer than ``data_timeout`` is an unknown outcome, and the next send gets a fresh
    connection."""
    url, recorder = smtp_server
    recorder.delay = 1.5
    patient = _channel(url, timeout=0.5, data_timeout=5)
    hasty = _channel(url, timeout=0.5, data_timeout=0.5)
    try:
        result = await patient.send(_job(to="slow@example.com"))
        assert result.detail and result.detail.startswith("2.0.0 Ok")
        with pytest.raises(OutcomeUnknown) as info:
            await hasty.send(_job(to="slow@example.com"))
        assert "SMTPReadTimeoutError" in info.value.detail
        recorder.delay = 0
        await hasty.send(_job(to="fast@example.com"))
        assert hasty._pool.opened == 2
    finally:
        await patient.close()
        await hasty.close()
