"""A capturing SMTP server for development and tests: every message lands in a directory
as an ``.eml`` file (written to a temporary name, then renamed, so a reader never sees half
a message). Runs in the caller's event loop (aiosmtpd's SMTP protocol on ``create_server``).

Some recipients answer as a mailbox provider would, so development can show every outcome.
Chosen by the recipient's local part up to its first ``+`` (``bounce+1@example.com`` bounces
too, so each try can use a new address: a bounced or complaining address is suppressed), any
domain:

=================  ===========================================================  ==============
local part         the sink                                                     the job
=================  ===========================================================  ==============
``bounce``         refuses RCPT ``550 5.1.1`` (user unknown)                    ``bounced``
``softbounce``     refuses RCPT ``452 4.2.2`` (mailbox full)                    ``deferred``,
                                                                                retried
``bounce-later``   accepts, then mails a DSN (RFC 3464, ``5.1.1``) to the       ``sent``, then
                   envelope sender                                              ``bounced``
``complaint``      accepts, then mails an ARF abuse report (RFC 5965) to the     ``sent``, then
                   envelope sender                                              ``complained``
=================  ===========================================================  ==============

The reports go, :data:`REPORT_DELAY` seconds later, to the bounce listener at ``report_to``
(``outbox run --dev`` sets it to its own listener) addressed to the message's envelope sender,
the signed VERP address, exactly as a remote server's would; a message without one (no
``OUTBOX_BOUNCE_DOMAIN``) or a sink without ``report_to`` logs a WARNING instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Coroutine
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("outbox.devsinks.smtp")

#: local part → the RCPT reply that refuses it
REFUSED = {"bounce": "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown "
                     "(outbox dev sink)",
           "softbounce": "452 4.2.2 <{rcpt}>: Mailbox full, try again later (outbox dev sink)"}
#: local part → the report mailed back after the message was accepted
REPORTED = ("bounce-later", "complaint")
#: seconds between accepting a message and mailing its report (the worker records it sent)
REPORT_DELAY = 1.0


def outcome_of(address: str) -> str | None:
    """The sink's outcome for a recipient (a key of :data:`REFUSED`, one of
    :data:`REPORTED`), or None: delivered."""
    local = address.rpartition("@")[0].split("+", 1)[0].lower()
    return local if local in REFUSED or local in REPORTED else None


class MaildirHandler:
    """aiosmtpd handler writing each accepted message to ``directory``; ``report_to``
    (host, port): where the reports of :data:`REPORTED` recipients are mailed."""

    def __init__(self, directory: Path, report_to: tuple[str, int] | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.report_to = report_to
        self._counter = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self.received = 0
        self.reports_sent = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        refusal = REFUSED.get(outcome_of(address) or "")
        if refusal:
            return refusal.format(rcpt=address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        name = f"{time.time_ns()}-{os.getpid()}-{next(self._counter)}.eml"
        tmp = self.directory / f".{name}.tmp"
        data = envelope.original_content or b""
        header = (f"X-Outbox-Envelope-From: {envelope.mail_from}\r\n"
                  f"X-Outbox-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        tmp.write_bytes(header + data)
        tmp.rename(self.directory / name)
        self.received += 1
        for rcpt in envelope.rcpt_tos:
            kind = outcome_of(rcpt)
            if kind in REPORTED:
                self._later(self._report(kind, rcpt, str(envelope.mail_from or ""), data))
        return f"250 2.0.0 Ok: queued as {name[:-4]}"

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, kind: str, rcpt: str, return_path: str, original: bytes) -> None:
        await asyncio.sleep(REPORT_DELAY)
        if not return_path or self.report_to is None:
            log.warning("dev sink: no %s report for %s: %s", kind, rcpt,
                        "the message had no envelope sender" if not return_path else
                        "no bounce listener (set OUTBOX_BOUNCE_DOMAIN; `outbox run --dev` "
                        "sets one)")
            return
        report = (dsn if kind == "bounce-later" else arf)(rcpt, return_path, original)
        host, port = self.report_to
        try:
            async with aiosmtplib.SMTP(hostname=host, port=port, timeout=10) as smtp:
                await smtp.sendmail("", [return_path], report)  # MAIL FROM:<>, as reports are
            self.reports_sent += 1
        except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
            log.warning("dev sink: the %s report for %s was not taken: %s", kind, rcpt, exc)

    async def close(self) -> None:
        """Cancel the reports not mailed yet."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _headers_of(original: bytes) -> bytes:
    head, _, _ = original.replace(b"\r\n", b"\n").partition(b"\n\n")
    return head.replace(b"\n", b"\r\n")


def _report(kind: str, to: str, text: str, machine: str, original: bytes) -> bytes:
    boundary = f"=_outbox-dev-{time.time_ns()}"
    parts = (
        f"From: Mail Delivery System <MAILER-DAEMON@outbox-dev-sink>\r\nTo: <{to}>\r\n"
        f"Date: {formatdate()}\r\nSubject: {text.splitlines()[0]}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={kind}; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n"
        f"--{boundary}\r\nContent-Type: message/{kind}\r\n\r\n{machine}\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").encode()
    return parts + _headers_of(original) + f"\r\n--{boundary}--\r\n".encode()


def dsn(rcpt: str, return_path: str, original: bytes) -> bytes:
    """A delivery status notification (RFC 3464): ``rcpt`` failed, 5.1.1 user unknown."""
    return _report("delivery-status", return_path,
                   f"Undelivered Mail Returned to Sender\r\n\r\n<{rcpt}>: user unknown",
                   "Reporting-MTA: dns; outbox-dev-sink\r\n\r\n"
                   f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                   f"Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: "
                   "User unknown (outbox dev sink)\r\n", original)


def arf(rcpt: str, return_path: str, original: bytes) -> bytes:
    """An abuse feedback report (RFC 5965): ``rcpt`` marked the message as spam."""
    return _report("feedback-report", return_path,
                   f"Complaint about a message\r\n\r\n<{rcpt}> marked this message as spam.",
                   "Feedback-Type: abuse\r\nUser-Agent: outbox-dev-sink/1\r\nVersion: 1\r\n"
                   f"Original-Mail-From: <{return_path}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\n",
                   original)


async def start_smtp_sink(directory: Path, host: str = "127.0.0.1", port: int = 2525,
                          report_to: tuple[str, int] | None = None
                          ) -> tuple[asyncio.Server, MaildirHandler]:
    """Start the sink; returns the server (``.close()`` it) and the handler (counts,
    ``report_to``, ``close()`` for reports still waiting)."""
    handler = MaildirHandler(directory, report_to)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True, decode_data=False,
                     data_size_limit=50 * 1024 * 1024, hostname="outbox-dev-sink"),
        host=host, port=port)
    log.info("SMTP sink on %s:%d writing to %s", host, port, directory)
    return server, handler
