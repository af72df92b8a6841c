"""Email over SMTP: a pool of persistent aiosmtplib connections per relay (several relays,
with failover: :mod:`sender.channels.relays`).

Connection problems (refused, dropped, timed out) are told apart from SMTP replies: the first
become a ``transient/networkerror`` failure and the connection is thrown away; the second are
classified from their code, enhanced status code and text.

The reply to the end of the message (the final ".") is waited for ``data_timeout`` seconds
(``OUTBOX_SMTP_DATA_TIMEOUT``, 10 minutes as RFC 5321 4.5.3.2.6 says: a relay may scan or store
the message before it answers), every other reply ``timeout``. When that last reply never
comes (the connection lost, or the time out) the relay may have taken the message: that is
:class:`~sender.channels.base.OutcomeUnknown`, not a failure, and the pipeline does not send
it again as it would after a failure.

DKIM: with ``EmailOptions.keys_for`` (``async def keys_for(account_id, from_domain) ->
Sequence[DkimKey]``) every rendered message is signed (:mod:`sender.dkim`) with the keys it
returns for the job's account and its From domain, before it goes to the pool; no keys, or no
``keys_for`` (``OUTBOX_DKIM=false``), and the message goes unsigned.

Return path: with a bounce domain, the envelope sender is the job's signed VERP address
(:mod:`suppression.verp`) at ``OUTBOX_BOUNCE_DOMAIN``, or, when ``EmailOptions.return_path_for``
(``async def return_path_for(account_id, from_domain) -> str | None``) names the verified
return-path subdomain of the From domain (``bounces.<domain>``), the same address at that
subdomain, so SPF aligns with From.

``stop()`` (worker shutdown): a send waiting for its domain's turn, a pool slot or a new
connection gives up with :class:`NotSent` before MAIL FROM; only transactions already started
run on, so none is cut mid-DATA by the end of the grace (a relay that stores the message
before its reply would otherwise get it again on the redelivery).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import aiosmtplib
from aiosmtplib.errors import (
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings
from aiosmtplib.response import SMTPResponse

from config import Settings, SmtpTarget
from sender.channels.base import NotSent, OutcomeUnknown, SendFailure, SendResult, Slots
from sender.channels.mx import MxChecker, Undeliverable, check_syntax
from sender.compliance import MissingSenderInfo, SenderInfo, email_compliance
from sender.dkim import DkimError, DkimKey, DkimSigner
from sender.mime import MimeError, RenderedEmail, render_email
from sender.models import BULK_CATEGORIES, EmailJob
from sender.resolver import make_resolver
from suppression.address import email_domain
from suppression.classify import Outcome, classify_smtp
from suppression.verp import verp_address

if TYPE_CHECKING:
    from sender.channels.relays import Relays

log = logging.getLogger("outbox.smtp")

# The relay's id for the message: Postfix "queued as ABC", SES "Ok 0100018...".
_QUEUE_ID = re.compile(r"queued as\s+<?([\w.@\-]+)|^(?:\d\.\d\.\d\s+)?Ok\s+<?([\w.@\-]+)",
                       re.IGNORECASE)
NETWORK_ERROR = Outcome("transient", "networkerror")
#: RFC 5321 4.5.3.2.6: the client waits 10 minutes for the reply to the end of DATA
DATA_TIMEOUT = 600.0


class RelayUnavailable(SMTPConnectError):
    """No connection to the relay could be opened (refused, timed out, a greeting other than
    220, TLS or AUTH failing): nothing was sent. ``cause`` is what aiosmtplib raised, ``why``
    a few words for the logs."""

    def __init__(self, relay: str, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.relay, self.cause = relay, cause
        self.why = f"{type(cause).__name__}: {' '.join(str(cause).split())}"[:300]


@dataclass(slots=True)
class _Conn:
    smtp: aiosmtplib.SMTP
    pipelining: bool  # the relay's EHLO offered PIPELINING and the pool may use it
    sent: int = 0
    last_used: float = field(default_factory=time.monotonic)


class SmtpPool:
    """Up to ``size`` persistent connections; each carries at most ``max_messages`` messages
    and is dropped after ``idle_timeout`` seconds unused. MAIL, RCPT and DATA are pipelined
    (RFC 2920) on a connection whose relay offers PIPELINING, unless ``pipelining=False``.
    Each reply is waited for ``timeout`` seconds, the one to the end of the message
    ``data_timeout``."""

    def __init__(self, target: SmtpTarget, *, size: int, timeout: float, max_messages: int,
                 idle_timeout: float,
                 factory: Callable[..., aiosmtplib.SMTP] = aiosmtplib.SMTP,
                 pipelining: bool = True, data_timeout: float = DATA_TIMEOUT) -> None:
        self._target = target
        self.name = target.name  # host:port, for logs and metrics
        self._pipelining = pipelining
        self._timeout = timeout
        self._data_timeout = data_timeout
        self._max_messages = max_messages
        self._idle_timeout = idle_timeout
        self._factory = factory
        self._slots = Slots(size)
        self._idle: list[_Conn] = []
        self._quitting: set[asyncio.Task[None]] = set()  # referenced until done
        self.opened = 0  # connections opened so far (tests and metrics)

    async def send(self, envelope_from: str, recipients: list[str], data: bytes,
                   *, smtputf8: bool = False, first: bool = False, stuffed: bool = False) -> str:
        """Send one message; return the relay's reply text. Raises SMTPException/OSError,
        OutcomeUnknown when the message went out whole and no reply came, NotSent when the
        pool stopped before the transaction began, :class:`RelayUnavailable` when no
        connection could be opened. ``first``: a priority-lane
        job, served before the bulk ones waiting for a connection. ``stuffed``: ``data`` is
        already CRLF and dot-stuffed (:attr:`RenderedEmail.wire`) and goes out as it is."""
        async with self._slots.turn(first=first):
            try:
                conn = await self._checkout()
            except Exception as exc:
                raise RelayUnavailable(self.name, exc) from exc
            if self._slots.closed:  # stopped while the connection was being opened
                self._checkin(conn)
                raise NotSent("stopping")
            try:
                reply = await _transaction(conn.smtp, envelope_from, recipients, data,
                                           smtputf8=smtputf8, pipelining=conn.pipelining,
                                           stuffed=stuffed, data_timeout=self._data_timeout)
            except SMTPResponseException:
                if conn.smtp.is_connected:  # reset after the refusal: still good
                    self._checkin(conn)
                else:  # a 421 ("closing transmission channel") ended it
                    self._discard(conn)
                raise
            except BaseException:
                self._discard(conn)
                raise
            conn.sent += 1
            self._checkin(conn)
            return reply

    async def _checkout(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.smtp.is_connected and now - conn.last_used < self._idle_timeout:
                return conn
            self._discard(conn)
        return await self._open()

    async def _open(self) -> _Conn:
        t = self._target
        tls_context = None
        if (t.use_tls or t.start_tls is not False) and not t.verify_tls:
            tls_context = ssl.create_default_context()
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
        smtp = self._factory(
            hostname=t.host, port=t.port, use_tls=t.use_tls,
            start_tls=False if t.use_tls else t.start_tls,
            validate_certs=t.verify_tls, tls_context=tls_context,
            username=t.username, password=t.password.get_secret_value() if t.password else None,
            timeout=self._timeout, local_hostname=t.local_hostname,
        )
        await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:  # connect() greets only when it had to (TLS, AUTH)
            try:
                await smtp.ehlo()
            except SMTPResponseException:
                await smtp.helo()
        self.opened += 1
        return _Conn(smtp, self._pipelining and smtp.supports_extension("pipelining"))

    async def probe(self) -> None:
        """Open one connection to the relay and QUIT it (a relay marked down coming back);
        :class:`RelayUnavailable` when it cannot be opened."""
        try:
            conn = await self._open()
        except Exception as exc:
            raise RelayUnavailable(self.name, exc) from exc
        await _quit(conn.smtp)

    def _checkin(self, conn: _Conn) -> None:
        if conn.sent >= self._max_messages or not conn.smtp.is_connected:
            self._discard(conn)
            return
        conn.last_used = time.monotonic()
        self._idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        if conn.smtp.is_connected:
            task = asyncio.get_running_loop().create_task(_quit(conn.smtp))
            self._quitting.add(task)
            task.add_done_callback(self._quitting.discard)

    def stop(self) -> None:
        """No new transaction starts; those waiting for a slot raise NotSent now."""
        self._slots.close()

    async def close(self) -> None:
        """QUIT every idle connection."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(c.smtp) for c in idle), *self._quitting)


_UNSAFE = re.compile(r"[\x00-\x20<>\x7f]")


async def _transaction(smtp: aiosmtplib.SMTP, sender: str, recipients: list[str], data: bytes,
                       *, smtputf8: bool, pipelining: bool, stuffed: bool,
                       data_timeout: float = DATA_TIMEOUT) -> str:
    """MAIL, RCPT, DATA and the message; with ``pipelining`` (the relay offered PIPELINING,
    RFC 2920) MAIL, every RCPT and DATA go in one write.

    ``sendmail`` would parse every address again with ``email.utils`` (four times a message,
    about a tenth of the worker's time): ours come bare from the renderer, so they are only
    checked for characters that could break the command line. ``data`` is written after the
    354 as it is when ``stuffed`` (CRLF lines, dot-stuffed: :attr:`RenderedEmail.wire`), else
    normalised and stuffed here exactly as aiosmtplib's ``data()`` would. A refusal raises the
    aiosmtplib exception with the reply after a RSET, as ``sendmail`` does. The reply to the
    message's end is waited for ``data_timeout`` seconds (:func:`_message`)."""
    encoding = "utf-8" if smtputf8 else "ascii"
    if any(_UNSAFE.search(a) for a in (sender, *recipients)):
        raise ValueError("an envelope address holds a character not allowed on a command line")
    if not stuffed:
        data = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data))
    message = data + b".\r\n"
    try:
        if pipelining:
            reply = await _pipelined(smtp, sender, recipients, message, encoding, smtputf8,
                                     data_timeout)
        else:
            reply = await _one_by_one(smtp, sender, recipients, message, encoding, smtputf8,
                                      data_timeout)
    except SMTPResponseException:
        if smtp.is_connected:  # a 421 closed it: the refusal stands, no RSET to send
            await smtp.rset()
        raise
    return reply.message


async def _one_by_one(smtp: aiosmtplib.SMTP, sender: str, recipients: list[str],
                      message: bytes, encoding: str, smtputf8: bool,
                      data_timeout: float) -> SMTPResponse:
    """One command, one reply (a relay without PIPELINING)."""
    options = (b"SMTPUTF8",) if smtputf8 else ()
    reply = await smtp.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(encoding), *options)
    if reply.code != 250:
        raise SMTPSenderRefused(reply.code, reply.message, sender)
    for rcpt in recipients:
        reply = await smtp.execute_command(b"RCPT", b"TO:<%s>" % rcpt.encode(encoding))
        if reply.code not in (250, 251):
            raise SMTPRecipientRefused(reply.code, reply.message, rcpt)
    protocol = _protocol(smtp)
    try:
        protocol.write(b"DATA\r\n")
        reply = await _reply(protocol, smtp.timeout)
        if reply.code != 354:
            raise SMTPDataError(reply.code, reply.message)
        return await _message(smtp, protocol, message, data_timeout)
    except (SMTPServerDisconnected, SMTPTimeoutError):
        smtp.close()  # as aiosmtplib's data() does: the replies are out of step now
        raise


async def _pipelined(smtp: aiosmtplib.SMTP, sender: str, recipients: list[str],
                     message: bytes, encoding: str, smtputf8: bool,
                     data_timeout: float) -> SMTPResponse:
    """MAIL, every RCPT and DATA in one write, then their replies in order (RFC 2920 3.1: the
    client reads every one of them, whatever the first said), then the message after a 354.

    The first refusal is the transaction's outcome, raised as on the unpipelined path (the
    same exception for the same reply). A 421 to MAIL or RCPT closes the connection, as
    aiosmtplib's ``execute_command`` does. A DATA that got 354 although something before it
    was refused is given an empty message (a lone ".", as RFC 2920 3.1 says) so that the
    replies stay in step; nothing of the message is sent then."""
    protocol = _protocol(smtp)
    mail = b"MAIL FROM:<%s>%s\r\n" % (sender.encode(encoding), b" SMTPUTF8" if smtputf8 else b"")
    rcpts = [b"RCPT TO:<%s>\r\n" % rcpt.encode(encoding) for rcpt in recipients]
    refused: SMTPResponseException | None = None
    seconds = smtp.timeout
    try:
        protocol.write(b"".join((mail, *rcpts, b"DATA\r\n")))
        for rcpt in (None, *recipients):  # None: MAIL's reply
            reply = await _next_reply(protocol, seconds)
            if reply.code == 250 or (reply.code == 251 and rcpt is not None):
                continue
            if refused is None:
                refused = (SMTPSenderRefused(reply.code, reply.message, sender)
                           if rcpt is None
                           else SMTPRecipientRefused(reply.code, reply.message, rcpt))
            if reply.code == 421:  # the relay is closing: the other replies may never come
                smtp.close()
                raise refused
        reply = await _next_reply(protocol, seconds)  # DATA's
        if reply.code != 354:
            raise refused or SMTPDataError(reply.code, reply.message)
        if refused is not None:
            protocol.write(b".\r\n")  # an empty message, refused for want of recipients
            await _next_reply(protocol, seconds)
            raise refused
        return await _message(smtp, protocol, message, data_timeout)
    except (SMTPServerDisconnected, SMTPTimeoutError):
        smtp.close()
        raise


async def _message(smtp: aiosmtplib.SMTP, protocol: SMTPProtocol, message: bytes,
                   data_timeout: float) -> SMTPResponse:
    """After the 354: the message with its final ".", one write, and the relay's reply,
    waited for ``data_timeout`` seconds. No reply (the connection lost, or the time out) is
    :class:`OutcomeUnknown`: the relay may have stored the message before it stopped."""
    protocol.write(message)  # SMTPServerDisconnected here: nothing went out, a plain failure
    try:
        reply = await _reply(protocol, data_timeout)
    except (SMTPServerDisconnected, SMTPTimeoutError, OSError) as exc:
        smtp.close()  # the replies are out of step now, as after aiosmtplib's data()
        raise OutcomeUnknown("smtp", f"no reply to the end of the message: "
                                     f"{type(exc).__name__}: {exc}") from exc
    if reply.code != 250:
        raise SMTPDataError(reply.code, reply.message)
    return reply


def _protocol(smtp: aiosmtplib.SMTP) -> SMTPProtocol:
    if smtp.protocol is None:
        raise SMTPServerDisconnected("Connection lost")
    return smtp.protocol


async def _next_reply(protocol: SMTPProtocol, seconds: float | None) -> SMTPResponse:
    """The next reply of a pipelined group, within ``seconds``. aiosmtplib's protocol parses
    one reply per ``data_received`` and leaves the rest in its buffer (relays send a group's
    replies in one segment), so take a complete one from there first, with the protocol's
    own parser: a reply already there is not waited for."""
    reply = protocol._read_response_from_buffer()
    if reply is not None:
        return reply
    return await _reply(protocol, seconds)


async def _reply(protocol: SMTPProtocol, seconds: float | None) -> SMTPResponse:
    """``protocol.read_response(timeout=seconds)`` with one timer handle: aiosmtplib's
    ``wait_for`` makes a future, a timer and two callbacks for every reply. When the time is
    up the reply's future fails with ``TimeoutError`` (``wait_for`` cancels it instead), which
    ``read_response`` raises as the same :class:`SMTPReadTimeoutError`."""
    waiter = getattr(protocol, "_response_waiter", None)  # aiosmtplib's: else its own way
    if seconds is None or waiter is None or waiter.done():
        return await protocol.read_response(timeout=seconds)
    timer = asyncio.get_running_loop().call_later(seconds, _time_up, waiter)
    try:
        return await protocol.read_response(timeout=None)
    finally:
        timer.cancel()


def _time_up(waiter: asyncio.Future[SMTPResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(smtp.quit(), 5)
    except (TimeoutError, SMTPException, OSError):
        smtp.close()


#: Sends in flight per recipient domain for the large mailbox providers (the rest get the
#: configured default): they throttle senders that open many parallel sessions.
DOMAIN_CONCURRENCY = {
    "gmail.com": 20, "googlemail.com": 20,
    "outlook.com": 10, "hotmail.com": 10, "live.com": 10, "msn.com": 10,
    "yahoo.com": 10, "yahoo.com.hk": 10, "icloud.com": 10, "me.com": 10,
    "qq.com": 5, "163.com": 5, "126.com": 5, "netvigator.com": 5,
}


class DomainLimiter:
    """A semaphore per recipient domain, made on first use; ``close`` makes every waiter
    (and every later send) raise NotSent."""

    def __init__(self, limits: dict[str, int], default: int) -> None:
        self._limits = {**DOMAIN_CONCURRENCY, **limits}
        self._default = default
        self._semaphores: dict[str, Slots] = {}
        self._closed = False

    def __call__(self, address: str) -> Slots:
        domain = address.rpartition("@")[2].lower()
        semaphore = self._semaphores.get(domain)
        if semaphore is None:
            semaphore = Slots(self._limits.get(domain, self._default))
            if self._closed:
                semaphore.close()
            self._semaphores[domain] = semaphore
        return semaphore

    def close(self) -> None:
        self._closed = True
        for semaphore in self._semaphores.values():
            semaphore.close()


#: ``async def keys_for(account_id, from_domain) -> Sequence[DkimKey]``: the keys to sign a
#: message of that account with, for that From domain (lower-case A-labels); none: unsigned.
KeysFor = Callable[[str, str], Awaitable[Sequence[DkimKey]]]
#: ``async def return_path_for(account_id, from_domain) -> str | None``: the verified
#: return-path subdomain the VERP envelope sender goes to for that From domain, or None
ReturnPathFor = Callable[[str, str], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class EmailOptions:
    """What the email channel needs besides the pool."""

    message_id_domain: str
    public_url: str = "http://127.0.0.1:8080"
    secret_key: str = "dev-only-secret-change-me"  # signs unsubscribe links and VERP addresses
    bounce_domain: str | None = None  # VERP envelope senders bounce+<acct>+<job>+<sig>@ this
    mx: MxChecker | None = None
    relay: str = "smtp"  # ses, sendgrid, mailgun, postmark: tag mail the way its events return
    #: DKIM keys of (account, From domain); None: messages go unsigned (OUTBOX_DKIM=false)
    keys_for: KeysFor | None = None
    #: the From domain's verified return path (with a bounce domain); None: the bounce domain
    return_path_for: ReturnPathFor | None = None


def from_domain(mailbox: str) -> str:
    """The domain of a job's ``from`` (``addr`` or ``Name <addr>``, as the renderer accepts
    it: the address comes last) as lower-case A-labels, as the From header carries it."""
    addr = mailbox.strip()
    if addr.endswith(">"):
        addr = addr[addr.rfind("<") + 1:-1]
    return email_domain(addr.rpartition("@")[2].strip())


def relay_headers(relay: str, account_id: str, job_id: str) -> tuple[tuple[str, str], ...]:
    """Headers through which an email provider's events name the job and account again
    (each provider strips its own header before delivery)."""
    pair = {"outbox_job": job_id, "outbox_account": account_id}
    if relay == "ses":
        return (("X-SES-MESSAGE-TAGS", f"outbox_job={job_id}, outbox_account={account_id}"),)
    if relay == "sendgrid":
        return (("X-SMTPAPI", json.dumps({"unique_args": pair}, separators=(",", ":"))),)
    if relay == "mailgun":
        return (("X-Mailgun-Variables", json.dumps(pair, separators=(",", ":"))),)
    if relay == "postmark":
        return (("X-PM-Metadata-outbox_job", job_id), ("X-PM-Metadata-outbox_account", account_id))
    return ()


class SmtpChannel:
    """The email channel: check the address, render the job (with the compliance footer and
    headers for marketing), hand it to the relay, classify what came back."""

    name = "email"
    provider = "smtp"

    def __init__(self, pool: SmtpPool | Relays, *, message_id_domain: str | None = None,
                 options: EmailOptions | None = None,
                 domains: DomainLimiter | None = None) -> None:
        from sender.channels.relays import Relays

        self._pool = pool
        # sends through relays name their category (OUTBOX_SMTP_ROUTES)
        self._routed = pool if isinstance(pool, Relays) else None
        self._options = options or EmailOptions(message_id_domain or "outbox.localhost")
        self._domains = domains or DomainLimiter({}, 32)
        self._signer = DkimSigner()

    async def send(self, job: EmailJob, sender: tuple[str, ...] | None = None) -> SendResult:
        """Send one email job. Raises SendFailure; OutcomeUnknown when the relay got the
        message but no reply came; MimeError for content that cannot be sent."""
        await self._check_address(job.to)
        msg = self._render(job, sender)
        if self._options.return_path_for is not None and self._options.bounce_domain:
            msg = await self._aligned(job, msg, self._options.return_path_for)
        if self._options.keys_for is not None:
            msg = await self._sign(job, msg, self._options.keys_for)
        try:
            first = job.category not in BULK_CATEGORIES
            async with self._domains(msg.recipients[0]).turn(first=first):
                send = (partial(self._routed.send, category=job.category,
                                account_id=job.account_id)
                        if self._routed is not None else self._pool.send)
                reply = await send(msg.envelope_from, list(msg.recipients), msg.wire,
                                   smtputf8=msg.smtputf8, first=first, stuffed=True)
        except RelayUnavailable as exc:  # as the connection's own error, the relay's reply
            raise self._not_sent(exc.cause) from None
        except (TimeoutError, SMTPException, OSError) as exc:
            raise self._not_sent(exc) from None
        match = _QUEUE_ID.search(reply)
        queue_id = (match.group(1) or match.group(2)) if match else None
        return SendResult(self.provider, queue_id, reply[:200])

    async def _check_address(self, address: str) -> None:
        try:
            normalised = check_syntax(address)
            if self._options.mx is not None:
                await self._options.mx.check(normalised.rpartition("@")[2])
        except Undeliverable as exc:
            raise SendFailure(Outcome("hard", exc.reason), str(exc), self.provider,
                              status="rejected") from None

    def _render(self, job: EmailJob, sender: tuple[str, ...] | None) -> RenderedEmail:
        o = self._options
        extra: tuple[tuple[str, str], ...] = (("X-Outbox-Account", job.account_id),
                                              *relay_headers(o.relay, job.account_id, job.id))
        footer_text = footer_html = None
        if job.category == "marketing":
            try:
                info = SenderInfo.require(sender)
            except MissingSenderInfo as exc:
                raise SendFailure(Outcome("hard", "notaccept"), str(exc), self.provider,
                                  status="rejected", suppress="") from None
            c = email_compliance(info, secret=o.secret_key, public_url=o.public_url,
                                 mail_domain=o.bounce_domain or o.message_id_domain,
                                 account_id=job.account_id, recipient=job.to, job_id=job.id)
            extra += c.headers
            footer_text, footer_html = c.footer_text, c.footer_html
        envelope = (verp_address(job.account_id, job.id, o.bounce_domain, o.secret_key)
                    if o.bounce_domain else None)
        return render_email(job, message_id_domain=o.message_id_domain, extra_headers=extra,
                            footer_text=footer_text, footer_html=footer_html,
                            envelope_from=envelope)

    async def _aligned(self, job: EmailJob, msg: RenderedEmail,
                       return_path_for: ReturnPathFor) -> RenderedEmail:
        """``msg`` with its VERP envelope sender at the From domain's verified return path
        (the same local part and signature), when it has one."""
        return_path = await return_path_for(job.account_id, from_domain(job.from_))
        if not return_path or not msg.envelope_from:
            return msg
        # the local part (signature or ref) covers account and job, not the domain: the
        # address _render made moves to the return path as it is, no second HMAC
        local = msg.envelope_from.rpartition("@")[0]
        return replace(msg, envelope_from=f"{local}@{return_path}")

    async def _sign(self, job: EmailJob, msg: RenderedEmail, keys_for: KeysFor) -> RenderedEmail:
        """``msg`` with a DKIM-Signature per key of the job's account and From domain
        prepended to both its forms (the signatures never start a line with a dot)."""
        keys = await keys_for(job.account_id, from_domain(job.from_))
        if not keys:
            return msg
        try:
            signatures = self._signer.signature_headers(msg.data, keys)
        except DkimError as exc:
            raise MimeError(f"the message cannot be DKIM-signed: {exc}") from None
        data = signatures + msg.data
        wire = data if msg.wire is msg.data else signatures + msg.wire
        return replace(msg, data=data, wire=wire)

    def _not_sent(self, exc: Exception) -> SendFailure:
        """The failure a refusal or a connection problem means."""
        if isinstance(exc, SMTPRecipientsRefused):
            refused = exc.recipients[0]
            return self._failure(refused.code, refused.message)
        if isinstance(exc, SMTPResponseException):
            return self._failure(exc.code, exc.message)
        return SendFailure(NETWORK_ERROR, f"{type(exc).__name__}: {exc}", self.provider)

    def _failure(self, code: int, text: str) -> SendFailure:
        outcome = classify_smtp(code, text)
        return SendFailure(outcome, f"{code} {text}"[:500], self.provider)

    @property
    def mx(self) -> MxChecker | None:
        """The MX checker (its cached hosts name a domain's provider), if MX checks are on."""
        return self._options.mx

    @property
    def relays(self) -> Relays | None:
        """The relays with their failover state (None for a bare pool)."""
        return self._routed

    def stop(self) -> None:
        """Shutdown begins: sends not yet in a transaction raise NotSent."""
        self._domains.close()
        self._pool.stop()

    async def close(self) -> None:
        await self._pool.close()


def build(settings: Settings, *, keys_for: KeysFor | None = None,
          return_path_for: ReturnPathFor | None = None) -> SmtpChannel:
    """The e-mail channel the settings configure (always: the relay is required). Messages
    are DKIM-signed with ``keys_for``'s keys unless ``OUTBOX_DKIM`` is off; with a bounce
    domain, their envelope sender is at ``return_path_for``'s return path when it names one."""
    from sender.channels.relays import Relays

    pools = [SmtpPool(relay, size=settings.smtp_pool_size, timeout=settings.smtp_timeout,
                      max_messages=settings.smtp_max_messages_per_connection,
                      idle_timeout=settings.smtp_idle_timeout,
                      data_timeout=settings.smtp_data_timeout)
             for relay in settings.smtp_relays]
    pool = Relays(pools, probe_interval=settings.smtp_relay_probe_interval,
                  routes={c: n - 1 for c, n in settings.smtp_routes.items()},
                  account_routes={a: n - 1 for a, n in settings.smtp_account_routes.items()})
    options = EmailOptions(
        message_id_domain=settings.message_id_domain, public_url=settings.public_url,
        secret_key=settings.signing_key,
        bounce_domain=settings.bounce_domain, relay=settings.smtp_relay,
        mx=MxChecker(make_resolver(settings.dns_nameservers)) if settings.email_check_mx
        else None,
        keys_for=keys_for if settings.dkim else None,
        return_path_for=return_path_for if settings.bounce_domain else None)
    domains = DomainLimiter(settings.smtp_domain_concurrency,
                            settings.smtp_domain_concurrency_default)
    return SmtpChannel(pool, options=options, domains=domains)
