"""A local stand-in for Twilio's Programmable Messaging API (2010-04-01), driven by the real
``twilio`` client, for development and tests.

Endpoints (HTTP basic auth ``AccountSid:AuthToken``, else 401 with error 20003):

- ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form: ``To``; ``From`` and/or
  ``MessagingServiceSid``; ``Body`` and/or ``MediaUrl``; ``StatusCallback``) → 201 and the
  Message resource, or an error in Twilio's JSON format
  ``{"code": 21211, "message": "...", "more_info": "https://www.twilio.com/docs/errors/21211",
  "status": 400}``.
- ``GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}.json`` → the Message as it is now.

Point the client at it by replacing the API domain's base URL (the client builds every URL
from it and sends the credentials it was given)::

    client = Client(sid, token, http_client=AsyncTwilioHttpClient())
    client.edge = client.region = None      # or get_hostname() rewrites the host
    client.api.base_url = "http://127.0.0.1:PORT"

Numbers decide the outcome. Synchronous errors (HTTP 400 and the error JSON, nothing created) are
Twilio's documented test-credential magic numbers:

===================  ==================================================================  =====
number               answer                                                              code
===================  ==================================================================  =====
To +15005550001      invalid 'To' number                                                 21211
To +15005550002      cannot route to this number                                         21612
To +15005550003      no international permission for the region                          21408
To +15005550004      recipient replied STOP (blocked for the account)                    21610
To +15005550009      not a mobile number, cannot receive SMS                             21614
To not E.164         invalid 'To' number                                                 21211
From +15005550001    invalid 'From' number                                               21212
From +15005550007    'From' not owned by the account / not SMS-capable                   21606
From +15005550008    'From' message queue full                                           21611
no To                'To' required                                                       21604
no From, no MG…      'From' or 'MessagingServiceSid' required                            21603
no Body, no media    body required                                                       21602
Body > 1600 chars    body too long                                                       21617
===================  ==================================================================  =====

(+15005550006 and any other From are accepted.) Asynchronous outcomes (the create succeeds, the
later status callbacks tell) are ours, by the last four digits of To (e.g. +85291230005):

==========  ================================================
To ends     status callbacks, in order
==========  ================================================
``0005``    ``sent``, ``undelivered`` ErrorCode 30005 (unknown destination handset)
``0006``    ``sent``, ``undelivered`` ErrorCode 30006 (landline or unreachable carrier)
``0003``    ``sent``, ``undelivered`` ErrorCode 30003 (unreachable destination handset)
``0007``    ``failed`` ErrorCode 30007 (message filtered by the carrier; never sent)
otherwise   ``sent``, ``delivered``
==========  ================================================

As Twilio documents ("Outbound Message Status in Status Callbacks"), no callback is sent for a
message's initial status: a message sent from a number is created ``queued`` (and the callbacks
are the ones above); one sent through a Messaging Service is created ``accepted`` with
``from`` null and ``num_segments`` "0", then a ``queued`` callback (sender :attr:`pool_number`
assigned, segments counted) precedes the ones above. Callbacks are form-encoded POSTs with the
parameters Twilio sends (``AccountSid``, ``ApiVersion``, ``From``, ``MessageSid``,
``MessageStatus``, ``MessagingServiceSid`` when used, ``SmsSid``, ``SmsStatus``, ``To``,
``ErrorCode`` on failures, ``RawDlrDoneDate`` on delivered/undelivered) and ``X-Twilio-Signature``
from ``twilio.request_validator.RequestValidator``, ``callback_delay`` seconds apart. The Message
resource follows the same steps (a GET shows the current status). Callbacks are not retried; a
failed one is recorded with status ``None`` and never stops the server.

Each SMS is kept as sent (:attr:`TwilioStandIn.sms`: sid, to, from, body, segments, encoding,
status) and, with ``sms_dir``, written to ``<sms_dir>/<sid>.json`` (rewritten as its status
moves on; a temporary name, then renamed), so development can read what was sent and what it
cost (``outbox run --dev``: ``var/sms``).

Switches for tests: :meth:`TwilioStandIn.fail_next` (answer the next creates with an error, 429 /
20429 by default) and :meth:`TwilioStandIn.rate_limit` (429 / 20429 above N creates in any
second of ``clock``). ``num_segments`` is counted by :func:`sender.channels.sms_segments.segments`
(GSM-7 160/153 with extension characters counting 2, UCS-2 70/67).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from sender.channels.sms_segments import segments

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
MAX_BODY = 1600
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")

#: To → (code, message): Twilio's magic test numbers, answered synchronously with HTTP 400.
MAGIC_TO: dict[str, tuple[int, str]] = {
    "+15005550001": (21211, "The 'To' number {to} is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number: {to}, is not currently reachable using the "
                            "'From' phone number: {from_} via SMS."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for the region "
                            "indicated by the 'To' number: {to}."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number {to} is not a valid mobile number"),
}
#: From → (code, message).
MAGIC_FROM: dict[str, tuple[int, str]] = {
    "+15005550001": (21212, "The 'From' number {from_} is not a valid phone number, shortcode, "
                            "or alphanumeric sender ID."),
    "+15005550007": (21606, "The 'From' phone number provided ({from_}) is not a valid "
                            "message-capable Twilio phone number for this destination."),
    "+15005550008": (21611, "This 'From' number has exceeded the maximum number of queued "
                            "messages"),
}
#: Last four digits of To → (final status, ErrorCode, error message): asynchronous outcomes.
ASYNC_OUTCOMES: dict[str, tuple[str, int, str]] = {
    "0005": ("undelivered", 30005, "Unknown destination handset"),
    "0006": ("undelivered", 30006, "Landline or unreachable carrier"),
    "0003": ("undelivered", 30003, "Unreachable destination handset"),
    "0007": ("failed", 30007, "Message filtered"),
}
_ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
}

CallbackRecord = tuple[str, dict[str, str], int | None]


def _error_body(status: int, code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}


def _rfc2822(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC))  # "Mon, 25 Nov 2024 13:39:00 +0000"


class TwilioStandIn:
    """The stand-in server. ``clock`` (epoch seconds) dates the resources and drives
    :meth:`rate_limit`; the callback delays are real time.

    For tests: ``messages`` holds every created Message resource in order (the same dicts a
    GET returns, so they move on as the callbacks progress); ``requests`` the form fields of
    every authenticated create, accepted or not; ``callbacks_sent`` one ``(url, params,
    http_status)`` per callback POST in the order sent (``http_status`` ``None`` when the
    receiver could not be reached); :meth:`drain` waits for the pending callbacks.
    """

    #: The sender a Messaging Service "assigns" when the create named no ``From``.
    pool_number = "+15005550006"

    def __init__(self, *, account_sid: str, auth_token: str, callback_delay: float = 0.05,
                 clock: Callable[[], float] = time.time, sms_dir: Path | None = None) -> None:
        self.account_sid = account_sid
        self.sms_dir = sms_dir
        if sms_dir is not None:
            sms_dir.mkdir(parents=True, exist_ok=True)
        #: every SMS created, as sent: sid, to, from, body, segments, encoding, status
        self.sms: list[dict[str, Any]] = []
        self._sms_by_sid: dict[str, dict[str, Any]] = {}
        self.auth_token = auth_token
        self.callback_delay = callback_delay
        self.clock = clock
        self.messages: list[dict[str, Any]] = []
        self.requests: list[dict[str, str]] = []
        self.callbacks_sent: list[CallbackRecord] = []
        self.base_url: str | None = None
        self._by_sid: dict[str, dict[str, Any]] = {}
        self._failures: deque[tuple[int, int]] = deque()
        self._per_second: float | None = None
        self._admitted: deque[float] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._validator = RequestValidator(auth_token)
        self.app = web.Application()
        prefix = f"/{API_VERSION}/Accounts/{{account_sid}}"
        self.app.router.add_post(f"{prefix}/Messages.json", self._create)
        self.app.router.add_get(f"{prefix}/Messages/{{sid}}.json", self._fetch)
        self.app.router.add_route("*", "/{tail:.*}", self._not_found)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen; return the base URL (``http://127.0.0.1:PORT``) to give the client."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def drain(self) -> None:
        """Wait until every status callback scheduled so far has been sent (or has failed);
        bound it with ``asyncio.timeout`` where that matters."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Stop the pending callbacks and the server."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- switches ---------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 429, code: int = 20429) -> None:
        """Answer the next ``n`` message creates (after authentication) with this error."""
        self._failures.extend([(status, code)] * n)

    def rate_limit(self, per_second: float | None) -> None:
        """Answer 429 / 20429 to creates beyond ``per_second`` in any one second; ``None``: off."""
        self._per_second = per_second
        self._admitted.clear()

    # -- helpers ----------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    @staticmethod
    def _error(status: int, code: int, message: str | None = None) -> web.Response:
        text = message or _ERROR_MESSAGES.get(code, f"Error {code}")
        headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if status == 401 else None
        return web.json_response(_error_body(status, code, text), status=status, headers=headers)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        user_ok = hmac.compare_digest(user.encode(), self.account_sid.encode())
        password_ok = hmac.compare_digest(password.encode(), self.auth_token.encode())
        return user_ok and password_ok and request.match_info["account_sid"] == self.account_sid

    def _rate_limited(self) -> bool:
        if self._per_second is None:
            return False
        now = self.clock()
        while self._admitted and now - self._admitted[0] >= 1.0:
            self._admitted.popleft()
        if len(self._admitted) >= self._per_second:
            return True
        self._admitted.append(now)
        return False

    # -- handlers ---------------------------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(404, 20404, _ERROR_MESSAGES[20404].format(path=request.path))

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 20003)
        message = self._by_sid.get(request.match_info["sid"])
        if message is None:
            return self._error(404, 20404, _ERROR_MESSAGES[20404].format(path=request.path))
        return web.json_response(message)

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 20003)
        form = await request.post()
        fields = {key: str(form.getone(key)) for key in form.keys()}
        media = [str(v) for v in form.getall("MediaUrl", [])]
        self.requests.append(fields)
        if self._failures:
            status, code = self._failures.popleft()
            return self._error(status, code)
        if self._rate_limited():
            return self._error(429, 20429)

        to = fields.get("To", "").strip()
        from_ = fields.get("From", "").strip() or None
        service = fields.get("MessagingServiceSid", "").strip() or None
        body = fields.get("Body", "")
        callback_url = fields.get("StatusCallback", "").strip() or None
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if from_ is None and service is None:
            return self._error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is "
                                           "required to send a message.")
        if not body and not media and not fields.get("ContentSid"):
            return self._error(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY:
            return self._error(400, 21617, "The concatenated message body exceeds the "
                                           f"{MAX_BODY} character limit.")
        if from_ in MAGIC_FROM:
            code, text = MAGIC_FROM[from_]
            return self._error(400, code, text.format(to=to, from_=from_))
        if to in MAGIC_TO:
            code, text = MAGIC_TO[to]
            return self._error(400, code, text.format(to=to, from_=from_ or self.pool_number))
        if not _E164.match(to):
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")

        now = _rfc2822(self._now())
        sid = "SM" + uuid.uuid4().hex
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        message: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": service,
            "num_media": str(len(media)),
            "num_segments": "0" if service else str(segments(body)[1]),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service else "queued",
            "subresource_uris": {
                "media": uri.replace(".json", "/Media.json"),
                "feedback": uri.replace(".json", "/Feedback.json"),
            },
            "to": to,
            "uri": uri,
        }
        self.messages.append(message)
        self._by_sid[sid] = message
        self._keep(message)
        task = asyncio.get_running_loop().create_task(self._progress(message, callback_url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(message, status=201)

    # -- the message's later life -----------------------------------------------------------

    @staticmethod
    def _steps(message: dict[str, Any]) -> list[tuple[str, int | None, str | None]]:
        steps: list[tuple[str, int | None, str | None]] = []
        if message["status"] == "accepted":
            steps.append(("queued", None, None))
        outcome = ASYNC_OUTCOMES.get(message["to"][-4:])
        if outcome is None:
            steps += [("sent", None, None), ("delivered", None, None)]
        elif outcome[0] == "failed":
            steps.append(outcome)
        else:
            steps += [("sent", None, None), outcome]
        return steps

    async def _progress(self, message: dict[str, Any], callback_url: str | None) -> None:
        try:
            for status, code, text in self._steps(message):
                await asyncio.sleep(self.callback_delay)
                now = self._now()
                message.update(status=status, date_updated=_rfc2822(now))
                if status == "queued":
                    message["from"] = message["from"] or self.pool_number
                    message["num_segments"] = str(segments(message["body"])[1])
                if status == "sent":
                    message["date_sent"] = _rfc2822(now)
                if code is not None:
                    message.update(error_code=code, error_message=text)
                self._keep(message)
                if callback_url:
                    await self._send_callback(callback_url, self._callback_params(message, now))
        except asyncio.CancelledError:
            raise
        except Exception:  # never let a callback take the server down
            log.exception("status callbacks for %s stopped", message["sid"])

    def _keep(self, message: dict[str, Any]) -> None:
        """Record the SMS (new, or its status moved on) in :attr:`sms` and ``sms_dir``."""
        encoding, count = segments(message["body"])
        record = {"sid": message["sid"], "to": message["to"], "from": message["from"],
                  "messaging_service_sid": message["messaging_service_sid"],
                  "body": message["body"], "segments": count, "encoding": encoding,
                  "status": message["status"], "error_code": message["error_code"],
                  "date_created": message["date_created"]}
        known = self._sms_by_sid.get(record["sid"])
        if known is None:
            self.sms.append(record)
            self._sms_by_sid[record["sid"]] = record
        else:
            known.update(record)
        if self.sms_dir is not None:
            path = self.sms_dir / f"{message['sid']}.json"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n",
                           encoding="utf-8")
            tmp.rename(path)

    def _callback_params(self, message: dict[str, Any], now: datetime) -> dict[str, str]:
        status = message["status"]
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "From": message["from"] or "",
            "MessageSid": message["sid"],
            "MessageStatus": status,
            "SmsSid": message["sid"],
            "SmsStatus": status,
            "To": message["to"],
        }
        if message["messaging_service_sid"]:
            params["MessagingServiceSid"] = message["messaging_service_sid"]
        if message["error_code"] is not None:
            params["ErrorCode"] = str(message["error_code"])
        if status in ("delivered", "undelivered"):
            params["RawDlrDoneDate"] = now.strftime("%y%m%d%H%M")
        return params

    async def _send_callback(self, url: str, params: dict[str, str]) -> None:
        headers = {
            "X-Twilio-Signature": self._validator.compute_signature(url, params),
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        }
        if self._session is None:
            raise RuntimeError("start() was not called")
        status: int | None = None
        try:
            async with self._session.post(url, data=urlencode(params).encode("utf-8"),
                                          headers=headers, allow_redirects=False) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning("status callback to %s failed: %r", url, exc)
        self.callbacks_sent.append((url, params, status))
