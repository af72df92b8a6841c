"""SMTP PIPELINING (RFC 2920) and pre-stuffed bodies, against real servers on real sockets.

``_Relay`` is a small scripted SMTP server that logs every chunk it reads and every command
line, and answers all the commands of one chunk in one write (as Postfix does): the tests
assert on what it received. Postfix's ``smtp-sink`` is the real PIPELINING relay; aiosmtpd
(which un-stuffs DATA and does not offer PIPELINING unless told to through its EHLO hook)
checks that arbitrary bodies arrive byte for byte as ``sender.mime`` rendered them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiosmtpd.smtp import SMTP as AioSMTPD
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from config import parse_smtp_url
from sender.channels.base import SendFailure, SendResult
from sender.channels.smtp import SmtpChannel, SmtpPool
from sender.mime import render_email
from sender.models import EmailJob
from tests.conftest import Recorder, RecordingHandler
from tests.integration.helpers import email_job

pytestmark = pytest.mark.integration

SENDER = b"MAIL FROM:<sales@acme.example>"


# ------------------------------------------------------------------------- a scripted relay
@dataclass
class Relay:
    """What the relay answers (``rcpt``: address -> reply; ``data_despite_no_rcpt``: 354 to a
    DATA with no accepted recipient, which RFC 2920 says some servers do) and what it saw."""

    pipelining: bool = True
    mail: str = "250 2.1.0 Ok"
    rcpt: dict[str, str] = field(default_factory=dict)
    data: str | None = None  # a refusal for DATA itself
    final: str | None = None  # a refusal for the message
    data_despite_no_rcpt: bool = False
    drop_after_mail: int = 0  # connections still to drop right after answering MAIL
    #: verb (MAIL, RCPT, DATA, "." for the message's end) -> seconds its reply comes after
    #: the one before it (the replies before it go at once)
    delays: dict[str, float] = field(default_factory=dict)
    chunks: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, bytes read)
    commands: list[tuple[int, str]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)  # un-stuffed, as received
    connections: int = 0

    def verbs(self) -> list[str]:
        return [line.split(" ", 1)[0].split(":", 1)[0] for _, line in self.commands]


class _RelayProtocol(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        relay.connections += 1
        self.conn = relay.connections
        self.buffer = b""
        self.lines: list[bytes] | None = None  # message lines while in DATA
        self.mail = False
        self.rcpts: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(b"220 relay ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.relay.chunks.append((self.conn, data))
        self.buffer += data
        out: list[str] = []
        self.hang_up: str | None = None  # "close" after the replies, or "abort"
        verbs: list[str] = []  # of each reply in out
        while b"\r\n" in self.buffer and self.hang_up is None:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if self.lines is not None:
                self._data_line(line, out)
                verb = "."
            else:
                self._command(line.decode("utf-8"), out)
                verb = line[:4].decode().upper()
            verbs += [verb] * (len(out) - len(verbs))
        if out and not self.relay.delays:  # every reply to this chunk in one write
            self.transport.write("".join(f"{r}\r\n" for r in out).encode())
        elif out:
            self._write_late(list(zip(verbs, out, strict=True)))
        if self.hang_up == "close":
            self.transport.close()
        elif self.hang_up == "abort":
            self.transport.abort()

    def _write_late(self, replies: list[tuple[str, str]]) -> None:
        """The replies in order, each delayed one after its ``delays`` (the others of a
        run without a delay in one write)."""
        loop = asyncio.get_running_loop()
        at, run = 0.0, []

        def write(data: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(data)

        for verb, reply in replies:
            delay = self.relay.delays.get(verb, 0.0)
            if delay and run:
                loop.call_later(at, write, "".join(run).encode())
                run = []
            at += delay
            run.append(f"{reply}\r\n")
        loop.call_later(at, write, "".join(run).encode())

    def _command(self, line: str, out: list[str]) -> None:
        r = self.relay
        r.commands.append((self.conn, line))
        verb = line[:4].upper()
        if verb == "EHLO":
            out.append("250-relay" + ("\r\n250-PIPELINING" if r.pipelining else "")
                       + "\r\n250-SMTPUTF8\r\n250 8BITMIME")
        elif verb == "MAIL":
            out.append(r.mail)
            self.mail = r.mail.startswith("250")
            if r.drop_after_mail:
                r.drop_after_mail -= 1
                self.hang_up = "abort"
        elif verb == "RCPT":
            addr = re.match(r"RCPT TO:<([^>]*)>", line)
            reply = r.rcpt.get(addr.group(1) if addr else "", "250 2.1.5 Ok")
            if not self.mail:
                reply = "503 5.5.1 Error: need MAIL command"
            elif reply.startswith("25") and addr:
                self.rcpts.append(addr.group(1))
            out.append(reply)
        elif verb == "DATA":
            if r.data:
                out.append(r.data)
            elif self.rcpts or (self.mail and r.data_despite_no_rcpt):
                out.append("354 End data with <CR><LF>.<CR><LF>")
                self.lines = []
            else:
                out.append("503 5.5.1 Error: need RCPT command" if not self.mail
                           else "554 5.5.1 Error: no valid recipients")
        elif verb == "RSET":
            self.mail, self.rcpts = False, []
            out.append("250 2.0.0 Ok")
        elif verb == "QUIT":
            out.append("221 2.0.0 Bye")
            self.hang_up = "close"
        else:
            out.append("250 Ok")
        if out[-1].startswith("421"):  # as a real relay does: say so, then hang up
            self.hang_up = "close"

    def _data_line(self, line: bytes, out: list[str]) -> None:
        assert self.lines is not None
        if line == b".":
            r = self.relay
            if not self.rcpts:
                out.append("554 5.5.1 Error: no valid recipients")
            elif r.final:
                out.append(r.final)
            else:
                r.messages.append(b"".join(x + b"\r\n" for x in self.lines))
                out.append(f"250 2.0.0 Ok: queued as R{len(r.messages)}")
            self.lines, self.mail, self.rcpts = None, False, []
            return
        self.lines.append(line[1:] if line.startswith(b".") else line)


@asynccontextmanager
async def serving(relay: Relay) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _RelayProtocol(relay), "127.0.0.1", 0)
    try:
        yield f"smtp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _channel(url: str, **pool: Any) -> SmtpChannel:
    options = {"size": 1, "timeout": 5, "max_messages": 100, "idle_timeout": 30, **pool}
    return SmtpChannel(SmtpPool(parse_smtp_url(url), **options), message_id_domain="mail.test")


def _job(**fields: Any) -> EmailJob:
    return EmailJob.model_validate(email_job(**fields))


async def _outcome(channel: SmtpChannel, job: EmailJob) -> tuple[Any, ...]:
    try:
        result = await channel.send(job)
    except SendFailure as exc:
        o = exc.outcome
        return ("failure", o.kind, o.reason, o.code, exc.detail)
    assert isinstance(result, SendResult)
    return ("sent", result.provider_message_id, result.detail)


async def _refused_then_ok(relay: Relay) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The outcomes of a job to gone@example.com, then one to ok@example.com, on one
    connection of ``relay``."""
    async with serving(relay) as url:
        channel = _channel(url)
        refused = await _outcome(channel, _job(to="gone@example.com"))
        after = await _outcome(channel, _job(to="ok@example.com"))
        await channel.close()
    return refused, after


def _groups(relay: Relay) -> list[bytes]:
    """The chunks that began a transaction (MAIL ...)."""
    return [c for _, c in relay.chunks if c.startswith(b"MAIL ")]


# ----------------------------------------------------------------------------------- tests
async def test_mail_rcpt_and_data_go_in_one_write_and_the_message_arrives_intact():
    relay = Relay()
    text = ".leading dot\n..two dots\n.\nlast line without a newline"
    async with serving(relay) as url:
        channel = _channel(url)
        sent = [await _outcome(channel, _job(to="a@example.com", text=text, html=None)),
                await _outcome(channel, _job(to="陳大文@example.com", text=text, html=None))]
        await channel.close()
    assert [s[:2] for s in sent] == [("sent", "R1"), ("sent", "R2")]
    assert _groups(relay) == [
        SENDER + b"\r\nRCPT TO:<a@example.com>\r\nDATA\r\n",
        SENDER + " SMTPUTF8\r\nRCPT TO:<陳大文@example.com>\r\nDATA\r\n".encode(),
    ]
    # the message and its final "." in one write after the 354, stuffed on the wire
    bodies = [c for _, c in relay.chunks if c.endswith(b"\r\n.\r\n")]
    assert len(bodies) == 2 and all(b"\r\n..leading dot\r\n...two dots\r\n..\r\n" in b
                                    for b in bodies)
    for message in relay.messages:
        assert message.endswith(b"\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n"
                                b"last line without a newline\r\n")
    assert relay.connections == 1


async def test_a_refused_recipient_in_a_pipelined_group_resets_and_keeps_the_connection():
    relay = Relay(rcpt={"gone@example.com": "550 5.1.1 <gone@example.com>: User unknown"})
    refused, after = await _refused_then_ok(relay)
    assert refused[:4] == ("failure", "hard", "userunknown", 550)
    assert after[:2] == ("sent", "R1")
    assert relay.connections == 1
    assert relay.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA",
                             "QUIT"]
    assert len(relay.messages) == 1 and b"ok@example.com" in relay.messages[0]
    assert not any(b"gone@example.com" in m for m in relay.messages)


async def test_a_refused_sender_in_a_pipelined_group_reads_every_reply_then_resets():
    relay = Relay(mail="553 5.7.1 <sales@acme.example>: Sender address rejected")
    async with serving(relay) as url:
        channel = _channel(url)
        first = await _outcome(channel, _job(to="a@example.com"))
        relay.mail = "250 2.1.0 Ok"
        second = await _outcome(channel, _job(to="b@example.com"))
        await channel.close()
    assert first[0] == "failure" and first[3] == 553 and "Sender address rejected" in first[4]
    assert second[:2] == ("sent", "R1")  # the 503s to RCPT and DATA did not shift the replies
    assert relay.connections == 1
    assert relay.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA",
                             "QUIT"]


async def test_data_accepted_after_every_recipient_was_refused_gets_a_lone_dot():
    """RFC 2920 3.1: a DATA accepted although no RCPT was is answered with a single "."."""
    relay = Relay(rcpt={"gone@example.com": "550 5.1.1 User unknown"}, data_despite_no_rcpt=True)
    refused, after = await _refused_then_ok(relay)
    assert refused[:4] == ("failure", "hard", "userunknown", 550)
    assert after[:2] == ("sent", "R1")
    chunks = [c for _, c in relay.chunks]
    i = chunks.index(SENDER + b"\r\nRCPT TO:<gone@example.com>\r\nDATA\r\n")
    assert chunks[i + 1:i + 3] == [b".\r\n", b"RSET\r\n"]  # nothing of the message
    assert relay.connections == 1 and len(relay.messages) == 1


async def test_without_pipelining_one_command_goes_per_write():
    relay = Relay(pipelining=False, rcpt={"gone@example.com": "550 5.1.1 User unknown"})
    async with serving(relay) as url:
        channel = _channel(url)
        refused = await _outcome(channel, _job(to="gone@example.com"))
        sent = await _outcome(channel, _job(to="ok@example.com", text=".dot\n", html=None))
        await channel.close()
    assert refused[:4] == ("failure", "hard", "userunknown", 550)
    assert sent[:2] == ("sent", "R1")
    commands = [c for _, c in relay.chunks if not c.endswith(b"\r\n.\r\n")]
    assert all(c.count(b"\r\n") == 1 for c in commands), commands
    assert [c.split(b" ")[0].split(b"\r")[0] for c in commands] == [
        b"EHLO", b"MAIL", b"RCPT", b"RSET", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
    assert relay.messages[0].endswith(b"\r\n\r\n.dot\r\n")
    assert relay.connections == 1


#: Relay answers, and what the job must get for them on either path: (relay fields, job's
#: recipient). The pipelined and the one-by-one outcomes are compared whole (kind, reason,
#: code, detail), so "the same outcome as today" is checked, not assumed.
SCRIPTS: list[tuple[dict[str, Any], str]] = [
    ({}, "ok@example.com"),
    ({"rcpt": {"full@example.com": "452 4.2.2 Mailbox full"}}, "full@example.com"),
    ({"rcpt": {"gone@example.com": "550 5.1.1 User unknown"}}, "gone@example.com"),
    ({"rcpt": {"fwd@example.com": "251 2.1.5 User not local; will forward"}}, "fwd@example.com"),
    ({"rcpt": {"spam@example.com": "554 5.7.1 Listed on Spamhaus"}}, "spam@example.com"),
    ({"mail": "553 5.7.1 Sender address rejected: not owned by user"}, "a@example.com"),
    ({"mail": "451 4.3.0 Try again later"}, "a@example.com"),
    ({"mail": "421 4.3.2 Service shutting down"}, "a@example.com"),
    ({"rcpt": {"busy@example.com": "421 4.7.0 Too many connections"}}, "busy@example.com"),
    ({"data": "554 5.5.1 No valid recipients"}, "a@example.com"),
    ({"final": "552 5.3.4 Message size exceeds fixed limit"}, "a@example.com"),
    ({"final": "550 5.7.1 Message content rejected"}, "a@example.com"),
    ({"rcpt": {"gone@example.com": "550 5.1.1 User unknown"}, "data_despite_no_rcpt": True},
     "gone@example.com"),
]


@pytest.mark.parametrize(("script", "to"), SCRIPTS)
async def test_pipelined_outcomes_are_the_unpipelined_outcomes(script: dict[str, Any], to: str):
    outcomes, seen = {}, {}
    for pipelining in (True, False):
        relay = Relay(pipelining=pipelining, **script)
        async with serving(relay) as url:
            channel = _channel(url)
            outcomes[pipelining] = await _outcome(channel, _job(to=to))
            then = await _outcome(channel, _job(to="next@example.com"))  # still usable
            await channel.close()
        seen[pipelining] = (relay.connections, len(relay.messages), then[0])
    assert outcomes[True] == outcomes[False]
    assert seen[True] == seen[False]


async def test_a_relay_dropping_mid_pipeline_is_a_network_error_and_the_pool_reconnects():
    relay = Relay(drop_after_mail=1)
    async with serving(relay) as url:
        channel = _channel(url)
        dropped = await _outcome(channel, _job(to="a@example.com"))
        after = await _outcome(channel, _job(to="a@example.com"))
        opened = channel._pool.opened
        await channel.close()
    assert dropped[:3] == ("failure", "transient", "networkerror")
    assert after[:2] == ("sent", "R1")
    assert opened == 2 and relay.connections == 2
    assert len(relay.messages) == 1  # the dropped one was never sent


# ----------------------------------------------------------------------- Postfix smtp-sink
SMTP_SINK = "/usr/sbin/smtp-sink"


@contextmanager
def smtp_sink(*options: str) -> Iterator[str]:
    """Postfix's smtp-sink on a free loopback port (stopped by its PID)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = ["-u", "root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([SMTP_SINK, *user, *options, f"127.0.0.1:{port}", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError("smtp-sink did not start")
            time.sleep(0.01)
        yield f"smtp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


needs_sink = pytest.mark.skipif(not shutil.which(SMTP_SINK), reason="smtp-sink not installed")


@needs_sink
async def test_smtp_sink_offers_pipelining_and_takes_pipelined_messages():
    with smtp_sink() as url:
        pool = SmtpPool(parse_smtp_url(url), size=4, timeout=5, max_messages=100,
                        idle_timeout=30)
        channel = SmtpChannel(pool, message_id_domain="mail.test")
        results = await asyncio.gather(*(channel.send(_job(text=f".{i}\n..x\n", html=None))
                                         for i in range(40)))
        offered = [c.smtp.supports_extension("pipelining") for c in pool._idle]
        used = [c.pipelining for c in pool._idle]
        await channel.close()
    assert offered and all(offered) and all(used)
    assert all(r.detail.startswith("2.0.0 Ok") or r.detail.startswith("Ok") for r in results)
    assert pool.opened <= 4


@needs_sink
async def test_smtp_sink_hanging_up_on_data_is_a_network_error():
    with smtp_sink("-q", "DATA") as url:
        channel = _channel(url)
        outcome = await _outcome(channel, _job())
        await channel.close()
    assert outcome[:3] == ("failure", "transient", "networkerror")


# ------------------------------------------- arbitrary bodies arrive as rendered (aiosmtpd)
class _PipeliningHandler(RecordingHandler):
    """aiosmtpd does not offer PIPELINING by itself (it reads commands line by line, so it
    copes with them): its EHLO hook adds the keyword."""

    def __init__(self, recorder: Recorder, pipelining: bool) -> None:
        super().__init__(recorder)
        self.pipelining = pipelining

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining \
            else responses


_LINE = st.one_of(
    st.sampled_from([".", "..", ". ", ".\r", "..x", ".From x", "From here", "", " ", "\t",
                     "é.", "=2E", "x" * 997, "." + "y" * 997, "z" * 1200]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
)
_BREAK = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\r\n"])


@st.composite
def _body(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.tuples(_LINE, _BREAK), min_size=1, max_size=12))
    body = "".join(a + b for a, b in lines)
    return body if draw(st.booleans()) else body.rstrip("\r\n") or "."


@asynccontextmanager
async def _aiosmtpd(recorder: Recorder, pipelining: bool) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AioSMTPD(_PipeliningHandler(recorder, pipelining), enable_SMTPUTF8=True,
                         hostname="test-mx"),
        "127.0.0.1", 0)
    try:
        yield f"smtp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _round_trip(bodies: list[tuple[str, str | None, str]]) -> None:
    for pipelining in (True, False):
        recorder = Recorder()
        async with _aiosmtpd(recorder, pipelining) as url:
            pool = SmtpPool(parse_smtp_url(url), size=1, timeout=5, max_messages=1000,
                            idle_timeout=30)
            rendered = []
            for text, html, to in bodies:
                msg = render_email(_job(text=text, html=html, to=to),
                                   message_id_domain="mail.test", date=0)
                await pool.send(msg.envelope_from, list(msg.recipients), msg.wire,
                                smtputf8=msg.smtputf8, stuffed=True)
                rendered.append((msg.envelope_from, list(msg.recipients), msg.data))
            conn = pool._idle[0]
            await pool.close()
        assert conn.pipelining is pipelining
        assert recorder.messages == rendered  # aiosmtpd's original_content, un-stuffed


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bodies=st.lists(st.tuples(_body(), st.none() | _body(),
                                 st.sampled_from(["a@example.com", "陳大文@example.com"])),
                       min_size=1, max_size=4))
@example(bodies=[(".a\n..b\r\n.\rc", None, "a@example.com"),
                 ("x\r\n.y\n\nz", ".\n<p>\n.</p>", "陳大文@example.com")])
def test_arbitrary_bodies_arrive_byte_identical_over_both_paths(bodies):
    asyncio.run(_round_trip(bodies))


async def test_a_relay_silent_after_the_commands_is_given_up_on_after_the_reply_timeout():
    """The replies to a pipelined group are waited for ``timeout`` (0.5 s here): a relay
    that takes 3 s to answer MAIL is a network error at 0.5 s, not a 3 s wait, and its
    connection is dropped (its replies are out of step); the next send opens a fresh one."""
    relay = Relay(delays={"MAIL": 3.0})
    async with serving(relay) as url:
        channel = _channel(url, timeout=0.5)
        started = time.monotonic()
        outcome = await _outcome(channel, _job(to="slow@example.com"))
        took = time.monotonic() - started
        relay.delays = {}
        after = await _outcome(channel, _job(to="ok@example.com"))
        await channel.close()
    assert outcome[:3] == ("failure", "transient", "networkerror")
    assert "SMTPReadTimeoutError" in outcome[4]
    assert 0.4 < took < 2.5
    assert after[0] == "sent"
    assert relay.connections == 2
    assert len(relay.messages) == 1


async def test_each_reply_of_a_group_is_waited_for_the_whole_timeout():
    """The timeout is per reply, as aiosmtplib's own: three replies 0.6 s apart (1.8 s in
    all) with a 1 s timeout are each in time, and the message goes out."""
    relay = Relay(delays={"MAIL": 0.6, "RCPT": 0.6, "DATA": 0.6})
    async with serving(relay) as url:
        channel = _channel(url, timeout=1.0)
        started = time.monotonic()
        outcome = await _outcome(channel, _job(to="patient@example.com"))
        took = time.monotonic() - started
        await channel.close()
    assert outcome[0] == "sent", outcome
    assert took >= 1.7
    assert len(relay.messages) == 1
