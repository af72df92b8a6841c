"""No sender stalls ``outbox bounces`` (issue 25, item 1), through the real listener over real
SMTP, against the real RabbitMQ and Redis.

A second connection is greeted within 0.5 s while a 2 MB message that is not a bounce is being
read; a source that sends many large messages, or messages costly to read, is refused (450)
once over its budget while another source is still served; a connection that only trickles
(idle, a slow DATA, or commands forever) is closed with 421 by its timeout; a message that takes
too long to read is kept as evidence and its reader restarted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiosmtplib
import pytest

from tests.integration.helpers import collect
from tests.integration.test_bounces_listener import counted, listening

pytestmark = pytest.mark.integration
DOMAIN = "bounces.outbox.example"
ATTACKER = "someone@mx.attacker.example"
OTHER_PEER = "127.0.0.2"  # another source address on the loopback


def _settings(make_settings: Any, **overrides: Any) -> Any:
    base = {"bounce_domain": DOMAIN, "message_id_domain": "mail.outbox.example",
            "secret_key": "current-key-0123456789abcdef", "bounces_burst": 10_000}
    return make_settings(**{**base, **overrides})


def junk(size: int, subject: str = "hello") -> bytes:
    """About ``size`` bytes that are no report: lines of spaces (what cost minutes of CPU
    before the scan was linear)."""
    line = b" " * 990 + b"x\r\n"
    head = f"From: {ATTACKER}\r\nTo: postmaster@{DOMAIN}\r\nSubject: {subject}\r\n\r\n"
    return head.encode() + line * -(-size // len(line))


async def send(port: int, data: bytes, *, source: str | None = None) -> tuple[int, str]:
    """One message to postmaster@; the final reply (code, text), an error's code included."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60,
                           source_address=(source, 0) if source else None)
    await smtp.connect()
    try:
        errors, text = await smtp.sendmail(ATTACKER, [f"postmaster@{DOMAIN}"], data)
        return 250, text
    except aiosmtplib.SMTPRecipientsRefused as exc:
        return exc.recipients[0].code, exc.recipients[0].message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        smtp.close()


async def greeting_seconds(port: int) -> float:
    """Seconds from connecting to the 220 greeting."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    assert line.startswith(b"220 "), line
    return time.perf_counter() - started


# --- the event loop stays free --------------------------------------------------------------


@pytest.mark.parametrize("subject", ["hello", "Undelivered Mail Returned to Sender"])
async def test_a_second_connection_is_greeted_within_half_a_second_during_a_2_mb_non_bounce(
        make_settings, amqp_url, unused_tcp_port, subject):
    settings = _settings(make_settings)
    async with listening(settings, unused_tcp_port) as registry:
        sending = asyncio.create_task(send(unused_tcp_port, junk(2_000_000, subject)))
        waits = []
        while not sending.done():
            waits.append(await greeting_seconds(unused_tcp_port))
            await asyncio.sleep(0.02)
        code, _ = await sending
        [kept] = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
    assert code == 250 and counted(registry, "not_report") == 1
    print(f"greetings during the message: {len(waits)}, slowest {max(waits):.3f} s")
    assert len(waits) >= 3, waits  # the greetings did overlap the message
    assert max(waits) < 0.5, waits
    assert kept.headers["x-outbox-size"] >= 2_000_000 > len(kept.body)


# --- the per-source budget ------------------------------------------------------------------


async def test_a_source_over_its_byte_budget_is_refused_and_another_still_served(
        make_settings, amqp_url, unused_tcp_port):
    settings = _settings(make_settings, bounces_source_bytes=2_900_000,
                         bounces_source_window=600)
    async with listening(settings, unused_tcp_port) as registry:
        codes = [(await send(unused_tcp_port, junk(1_000_000)))[0] for _ in range(6)]
        other, _ = await send(unused_tcp_port, junk(1_000_000), source=OTHER_PEER)
        kept = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 4, timeout=3)
    assert codes == [250, 250, 250, 450, 450, 450], codes
    assert other == 250  # another source is still served
    assert len(kept) == 4 and counted(registry, "not_report") == 4


async def test_a_source_over_its_cpu_budget_is_refused(make_settings, unused_tcp_port):
    settings = _settings(make_settings, bounces_source_cpu=0.02, bounces_source_window=600)
    costly = junk(2_000_000, "Undelivered Mail Returned to Sender")  # read up to its budget
    async with listening(settings, unused_tcp_port) as registry:
        first, _ = await send(unused_tcp_port, costly)
        spent = registry.get_sample_value("outbox_bounces_read_cpu_seconds_total")
        second, text = await send(unused_tcp_port, costly)
        other, _ = await send(unused_tcp_port, costly, source=OTHER_PEER)
    assert spent is not None and spent > 0.02, spent  # the first read cost more than the budget
    assert (first, second, other) == (250, 450, 250), text
    assert "Too much mail to read" in text


# --- timeouts -------------------------------------------------------------------------------


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        trickle: bytes, every: float, limit: float) -> tuple[float, bytes]:
    """Write ``trickle`` every ``every`` seconds until the server closes; (seconds, what it
    said last)."""
    started = time.perf_counter()
    said = b""
    while time.perf_counter() - started < limit:
        try:
            line = await asyncio.wait_for(reader.readline(), every)
        except TimeoutError:
            if trickle:
                writer.write(trickle)
            continue
        if not line:
            return time.perf_counter() - started, said
        said = line
    raise AssertionError(f"still open after {limit} s")


async def _connect(port: int, *commands: bytes) -> tuple[asyncio.StreamReader,
                                                         asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reader.readline()).startswith(b"220")
    for command in commands:
        writer.write(command)
        reply = await reader.readline()
        while reply[3:4] == b"-":
            reply = await reader.readline()
        assert reply[:1] in (b"2", b"3"), reply
    return reader, writer


@pytest.mark.parametrize(("commands", "trickle", "every", "closed_after"), [
    ((), b"", 0.25, (0.8, 3.0)),  # silent: the idle timeout (1 s)
    ((b"EHLO x\r\n",), b"NOOP\r\n", 0.5, (3.5, 6.0)),  # a command now and then: the whole (4 s)
    ((b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n", f"RCPT TO:<postmaster@{DOMAIN}>\r\n"
      .encode(), b"DATA\r\n"), b"x", 0.25, (1.8, 3.5)),  # a slow message: the DATA timeout (2 s)
], ids=["idle", "slow-commands", "slow-data"])
async def test_a_slow_loris_connection_is_closed_by_its_timeout(
        make_settings, unused_tcp_port, commands, trickle, every, closed_after):
    settings = _settings(make_settings, bounces_idle_timeout=1, bounces_data_timeout=2,
                         bounces_connection_timeout=4)
    async with listening(settings, unused_tcp_port) as registry:
        reader, writer = await _connect(unused_tcp_port, *commands)
        try:
            seconds, said = await _until_closed(reader, writer, trickle, every, limit=10)
        finally:
            writer.close()
        greeted = await greeting_seconds(unused_tcp_port)  # the listener itself is fine
    low, high = closed_after
    assert low <= seconds <= high, seconds
    assert said.startswith(b"421 4.4.2"), said
    assert counted(registry, "deferred") >= 1 and greeted < 0.5


# --- the read timeout -----------------------------------------------------------------------


async def test_a_message_that_takes_too_long_to_read_is_kept_and_its_reader_restarted(
        make_settings, amqp_url, unused_tcp_port):
    settings = _settings(make_settings, bounces_read_timeout=0.001)
    costly = junk(1_000_000, "Undelivered Mail Returned to Sender")
    async with listening(settings, unused_tcp_port) as registry:
        first, _ = await send(unused_tcp_port, costly)
        second, _ = await send(unused_tcp_port, costly)  # a new reader takes it
        kept = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 2)
    assert (first, second) == (250, 250)
    assert all("not read: reading took over 0.001 s" in m.headers["x-outbox-reason"]
               for m in kept), [m.headers["x-outbox-reason"] for m in kept]
    assert counted(registry, "not_report") == 2
