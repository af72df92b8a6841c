"""``outbox dev``: development tools beside the dev sinks.

``outbox dev sms-reply FROM [TO] BODY [--account ACCOUNT]`` sends an inbound SMS to the webhook
server as Twilio would: a form POST to ``OUTBOX_PUBLIC_URL/webhooks/twilio/inbound`` (with
``?a=ACCOUNT``, the account the number's webhook URL names), signed ``X-Twilio-Signature`` with
the Twilio auth token (``OUTBOX_TWILIO_AUTH_TOKEN``, else the stand-in's development token that
``outbox run --dev`` uses). ``TO`` defaults to ``OUTBOX_TWILIO_FROM`` (the stand-in's number).
A ``STOP`` opts the number out for the account (suppression ``sms_stop``, a recipient event, the
consent revoked); ``START`` opts it back in. Exit 0 when the server answered 2xx, 1 otherwise
(its answer on stderr; the server unreachable: one line).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any
from urllib.parse import urlencode

from outbox.runtime import CliError, account_arg, settings

#: seconds to wait for the webhook server's answer
TIMEOUT = 10.0
#: Credentials of the local Twilio stand-in (``outbox run --dev`` uses them when no real
#: Twilio account is configured; ``sms-reply`` signs with them then).
DEV_TWILIO = {"twilio_account_sid": "AC" + "0" * 32, "twilio_auth_token": "dev-auth-token",
              "twilio_from": "+15005550006"}


class Unreachable(Exception):
    """The webhook server did not answer (exit 1, one line)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dev`` to the ``outbox`` parser."""
    dev = sub.add_parser("dev", help="development tools (with `outbox run --dev`)"
                         ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dev.add_parser("sms-reply", help="send a signed inbound SMS (e.g. STOP) to the "
                       "webhook server, as Twilio does")
    p.add_argument("from_", metavar="FROM", help="the number replying (E.164)")
    p.add_argument("words", metavar="[TO] BODY", nargs="+",
                   help="our number it replies to (default OUTBOX_TWILIO_FROM) and the text")
    p.add_argument("--account", type=account_arg, metavar="ID",
                   help="the account named in the inbound webhook URL (?a=ID)")
    p.set_defaults(func=cmd_sms_reply)


def inbound_form(from_: str, to: str, body: str, account_sid: str) -> dict[str, str]:
    """The fields Twilio posts for an inbound SMS (a subset: what Outbox reads and signs)."""
    sid = "SM" + uuid.uuid4().hex
    return {"AccountSid": account_sid, "ApiVersion": "2010-04-01", "Body": body,
            "From": from_, "MessageSid": sid, "NumMedia": "0", "NumSegments": "1",
            "SmsMessageSid": sid, "SmsSid": sid, "SmsStatus": "received", "To": to}


def signed_request(url: str, form: dict[str, str], auth_token: str) -> dict[str, str]:
    """The headers of Twilio's request: the form's content type and its signature
    (``twilio.request_validator.RequestValidator``, Twilio's own algorithm)."""
    from twilio.request_validator import RequestValidator

    return {"Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, form),
            "User-Agent": "TwilioProxy/1.1"}


def cmd_sms_reply(args: argparse.Namespace) -> int:
    cfg = settings()
    to, body = _to_and_body(args.words, cfg.twilio_from or DEV_TWILIO["twilio_from"])
    token = (cfg.twilio_auth_token.get_secret_value() if cfg.twilio_auth_token
             else DEV_TWILIO["twilio_auth_token"])
    sid = cfg.twilio_account_sid or DEV_TWILIO["twilio_account_sid"]
    query = f"?{urlencode({'a': args.account})}" if args.account else ""
    url = f"{cfg.public_url.rstrip('/')}/webhooks/twilio/inbound{query}"
    form = inbound_form(args.from_, to, body, sid)
    try:
        status, answer = asyncio.run(_post(url, form, signed_request(url, form, token)))
    except Unreachable as exc:
        print(f"outbox: {exc}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        print(f"{url}: {status} ({form['From']} -> {form['To']}: {body!r})")
        return 0
    print(f"outbox: {url} answered {status}: {answer.strip()[:300]}", file=sys.stderr)
    return 1


def _to_and_body(words: list[str], default_to: str) -> tuple[str, str]:
    if len(words) == 1:
        return default_to, words[0]
    if len(words) == 2:
        return words[0], words[1]
    raise CliError("give FROM, then TO and BODY or BODY alone (quote a body with spaces)")


async def _post(url: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, Any]:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http, \
                http.post(url, data=urlencode(form).encode(), headers=headers) as response:
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        why = str(exc) or type(exc).__name__
        raise Unreachable(f"cannot reach the webhook server at {url} (OUTBOX_PUBLIC_URL): "
                          f"{why}; is `outbox run --dev` running?") from None
