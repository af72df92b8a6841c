"""What the logs say, read as an operator reads them: the real ``outbox run`` (worker and
webhook server) in a subprocess, its stderr parsed line by line, sending email through an SMTP
relay that wants a password and SMS through the Twilio stand-in, whose signed status callbacks
come back through the webhook server. And, in process: a deferral's cause, and an account
blocked by complaints that arrive as provider webhooks (logged and published)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiosmtpd.smtp import SMTP, AuthResult

from outbox.devsinks.twilio_api import TwilioStandIn
from tests.conftest import Recorder, RecordingHandler
from tests.integration.helpers import (
    cli_runner,
    collect,
    email_job,
    events,
    publish,
    running_app,
    running_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SID, FROM = "AC" + "7" * 32, "+15005550006"
SMTP_USER = "outbox-relay"
# the secrets and the content that must never be written, whatever the level
SMTP_PW = "relay-pw-Zq81xL"
TWILIO_TOKEN = "twilio-token-Kp42vW"
SECRET_KEY = "signing-key-Rt57yH-0123456789"
ADMIN_TOKEN = "admin-token-Mx93bQ"
SUBJECT = "Subject-Marker-Qv73"
TEXT = "Body-Text-Marker-Jw28"
HTML = "<p>Body-Html-Marker-Lc64</p>"
SMS_BODY = "Sms-Body-Marker-Hn19"
NEVER = {"smtp password": SMTP_PW, "twilio token": TWILIO_TOKEN, "secret key": SECRET_KEY,
         "admin token": ADMIN_TOKEN, "subject": SUBJECT, "text": "Body-Text-Marker",
         "html": "Body-Html-Marker", "sms body": SMS_BODY,
         "twilio basic credentials": base64.b64encode(f"{SID}:{TWILIO_TOKEN}".encode()).decode()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Relay:
    url: str
    recorder: Recorder
    logins: list[str] = field(default_factory=list)


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    """An SMTP relay offering AUTH; the logins it saw (the worker must use :data:`SMTP_PW`)."""
    recorder = Recorder()
    found = Relay("", recorder)

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     data: Any) -> AuthResult:
        ok = data.login.decode() == SMTP_USER and data.password.decode() == SMTP_PW
        found.logins.append("ok" if ok else "refused")
        return AuthResult(success=ok)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(RecordingHandler(recorder), hostname="relay", authenticator=authenticate,
                     auth_require_tls=False),
        host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    found.url = f"smtp://{SMTP_USER}:{SMTP_PW}@127.0.0.1:{port}"
    yield found
    server.close()
    await server.wait_closed()


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[TwilioStandIn, str]]:
    api = TwilioStandIn(account_sid=SID, auth_token=TWILIO_TOKEN, callback_delay=0.05)
    base = await api.start()
    yield api, base
    await api.close()


def _jobs(n: int = 2) -> list[dict[str, Any]]:
    email = [email_job(subject=f"{SUBJECT} {i}", text=f"{TEXT} {i}", html=HTML,
                       account_id="acct_logs") for i in range(n)]
    sms = [{"v": 1, "id": f"sms-logs-{i}", "account_id": "acct_logs", "channel": "sms",
            "category": "notification", "topic": "appointment", "to": f"+8529123000{i}",
            "body": f"{SMS_BODY} {i}"} for i in range(n)]
    return email + sms


class Outbox:
    """``python -m outbox --log-level LEVEL run`` with its stderr read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line]

    async def stop(self) -> str:
        """SIGTERM, wait for exit 0; everything it wrote (stdout and stderr)."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), 30)
        await self._reader
        out = await self.proc.stdout.read()
        assert self.proc.returncode == 0, "\n".join(self.lines)
        return out.decode() + "\n".join(self.lines)


async def _outbox(level: str, env: dict[str, str]) -> Outbox:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox", "--log-level", level, "run", env={**clean, **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    running = Outbox(proc)
    try:
        await wait_for(lambda: any('"msg": "ready"' in x for x in running.lines), 60)
    except BaseException:  # never left running: an orphan worker keeps using the test
        proc.kill()        # Redis db after the test (and the next run's, on the same port)
        await proc.wait()
        raise
    return running


def _env(amqp_url: str, redis_url: str, relay: Relay, twilio_base: str, port: int
         ) -> dict[str, str]:
    return {"OUTBOX_AMQP_URL": amqp_url, "OUTBOX_REDIS_URL": redis_url,
            "OUTBOX_SMTP_URL": relay.url, "OUTBOX_RETRY_TIERS": "1,2",
            "OUTBOX_SHUTDOWN_GRACE": "5", "OUTBOX_SMTP_TIMEOUT": "5", "OUTBOX_METRICS_PORT": "0",
            "OUTBOX_HTTP_PORT": str(port), "OUTBOX_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "OUTBOX_TWILIO_ACCOUNT_SID": SID, "OUTBOX_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "OUTBOX_TWILIO_FROM": FROM, "OUTBOX_TWILIO_API_BASE": twilio_base,
            "OUTBOX_SECRET_KEY": SECRET_KEY, "OUTBOX_ADMIN_TOKENS": ADMIN_TOKEN,
            "OUTBOX_REQUIRE_VERIFIED_SENDERS": "false"}


async def _send_and_settle(amqp_url: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Publish ``jobs``; their events until every email is sent and every SMS delivered."""
    await publish(amqp_url, jobs)
    wanted = {(j["id"], "sent" if j["channel"] == "email" else "delivered") for j in jobs}
    got = await collect(amqp_url, "outbox.status",
                        lambda m: wanted <= {(e["id"], e["status"]) for e in events(m)},
                        timeout=60)
    return events(got)


async def _admin_get(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}{path}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
        return response.status


async def test_at_debug_nothing_secret_and_no_content_is_ever_written(
        amqp_url, redis_url, relay, twilio):
    api, base = twilio
    port = _free_port()
    running = await _outbox("DEBUG", _env(amqp_url, redis_url, relay, base, port))
    try:
        await _send_and_settle(amqp_url, _jobs())
        assert await _admin_get(port, "/admin/accounts/acct_logs") == 200
    finally:
        written = await running.stop()
    assert relay.logins and set(relay.logins) == {"ok"}  # the password was used
    assert len(api.requests) == 2 and len(relay.recorder.messages) == 2
    assert SMS_BODY in json.dumps(api.requests) and SUBJECT.encode() in \
        relay.recorder.messages[0][2]  # the content was there to leak
    records = running.records()  # every line is JSON
    levels = {(r["logger"].split(".")[0], r["level"]) for r in records}
    assert {("aio_pika", "debug"), ("redis", "debug"), ("twilio", "info")} <= levels  # all on
    # but aiormq's frames (job bodies with their attachments): outbox/logs.py ALWAYS_QUIET
    assert not [r for r in records if r["logger"] == "aiormq.connection"
                and r["level"] in ("debug", "info")]
    leaked = {what: [x for x in written.splitlines() if value in x]
              for what, value in NEVER.items() if value in written}
    assert leaked == {}


async def test_at_info_one_json_line_per_job_outcome_and_libraries_are_quiet(
        amqp_url, redis_url, relay, twilio):
    api, base = twilio
    port = _free_port()
    jobs = _jobs()
    running = await _outbox("INFO", _env(amqp_url, redis_url, relay, base, port))
    try:
        published = await _send_and_settle(amqp_url, jobs)
    finally:
        await running.stop()
    records = running.records()
    assert records and all(TS.match(r["ts"]) for r in records)
    assert all(set(r) >= {"ts", "level", "logger", "msg"} for r in records)
    # the Twilio library logs about 11 INFO lines per SMS when let: none here, nor any other
    # library's below WARNING
    assert [r for r in records if not r["logger"].startswith("outbox")
            and r["level"] in ("debug", "info")] == []
    assert not any(r["logger"].startswith("twilio") for r in records)
    outcomes = [r for r in records if r["logger"] == "outbox.pipeline" and "status" in r]
    by_job = {(r["job_id"], r["status"]): r for r in outcomes}
    assert len(outcomes) == len(jobs) == len(by_job)
    for job in jobs:
        line = by_job[(job["id"], "sent")]
        assert line["level"] == "info" and line["msg"] == f"job {job['id']} sent"
        assert (line["account_id"], line["channel"], line["attempt"]) == \
            ("acct_logs", job["channel"], 1)
        assert line["provider"] == ("smtp" if job["channel"] == "email" else "twilio")
        assert "reason" in line and isinstance(line["ms"], int) and 0 <= line["ms"] < 30000
    assert {e["status"] for e in published if e["id"].startswith("sms-")} >= {"delivered"}


# --- in process --------------------------------------------------------------------------------

async def test_a_deferral_is_a_warning_naming_its_cause(make_settings, amqp_url, caplog):
    caplog.set_level(logging.INFO, logger="outbox")
    closed = _free_port()  # a relay that refuses connections
    settings = make_settings(smtp_url=f"smtp://127.0.0.1:{closed}", retry_tiers=(60, 120))
    job = email_job(account_id="acct_defer")
    async with running_worker(settings):
        await publish(amqp_url, [job])
        [event] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
        await wait_for(lambda: any(getattr(r, "status", None) == "deferred"
                                   for r in caplog.records))
    assert event["status"] == "deferred"
    [line] = [r for r in caplog.records if getattr(r, "status", None) == "deferred"]
    assert (line.name, line.levelname, line.job_id, line.account_id, line.channel) == \
        ("outbox.pipeline", "WARNING", job["id"], "acct_defer", "email")
    assert line.detail == event["detail"] and str(closed) in line.detail
    assert f"deferred: SMTPConnectError: Error connecting to 127.0.0.1 on port {closed}" in \
        line.getMessage()
    assert line.reason == event["reason"] and isinstance(line.ms, int)


PM_USER, PM_PASSWORD = "postmark", "pm-password-logs"


def _complaint(job: dict[str, Any], n: int) -> bytes:
    return json.dumps({
        "RecordType": "SpamComplaint", "MessageStream": "outbound", "ID": 9000 + n,
        "Type": "SpamComplaint", "TypeCode": 512, "MessageID": f"pm-{n}",
        "Metadata": {"outbox_account": job["account_id"], "outbox_job": job["id"]},
        "Email": job["to"], "From": "sales@acme.example", "BouncedAt": "2026-01-02T03:04:05Z",
        "Description": "The subscriber explicitly marked this message as spam."}).encode()


async def test_a_block_caused_by_complaint_webhooks_is_published_and_logged(
        make_settings, smtp_server, amqp_url, redis_url, unused_tcp_port, caplog, monkeypatch,
        capsys):
    caplog.set_level(logging.INFO, logger="outbox")
    smtp_url, recorder = smtp_server
    settings = make_settings(
        smtp_url=smtp_url, smtp_relay="postmark", postmark_webhook_user=PM_USER,
        postmark_webhook_password=PM_PASSWORD, min_complaint_volume=5,
        early_complaint_volume=5, throttle_complaint_rate=0.1, block_complaint_rate=0.2)
    jobs = [email_job(account_id="acct_spam") for _ in range(10)]
    auth = "Basic " + base64.b64encode(f"{PM_USER}:{PM_PASSWORD}".encode()).decode()
    async with running_worker(settings), running_app(settings, unused_tcp_port) as web:
        sent = await _send_only(amqp_url, jobs)
        assert {e["status"] for e in sent} == {"sent"}  # the sends moved nothing
        assert not _account_lines(caplog)
        seen: list[Any] = []
        async with aiohttp.ClientSession(headers={"Authorization": auth}) as session:
            for n, job in enumerate(jobs):
                async with session.post(f"{web}/webhooks/postmark", data=_complaint(job, n),
                                        headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 200, await r.text()
                seen += await collect(amqp_url, "outbox.status", _complained(job["id"]),
                                      timeout=10)
                if any(m.routing_key == "email.blocked" for m in seen):
                    break
    blocks = [m for m in seen if m.routing_key == "email.blocked"]
    assert len(blocks) == 1, [m.routing_key for m in seen]
    block = json.loads(blocks[0].body)
    assert (block["account_id"], block["status"], block["channel"], block["actor"]) == \
        ("acct_spam", "blocked", "email", "system")
    assert block["id"].startswith("acct_spam:") and block["reason"]
    assert block["from"] in ("active", "throttled")
    complained = [e for e in events(seen) if e["status"] == "complained"]
    assert 1 <= len(complained) < len(jobs)  # blocked on the way, by the webhooks alone
    [line] = [r for r in _account_lines(caplog) if r.to == "blocked"]
    assert (line.name, line.levelname, line.account_id, line.reason, line.actor) == \
        ("outbox.accounts", "WARNING", "acct_spam", block["reason"], "system")
    assert getattr(line, "from") == block["from"]
    assert f"{block['from']} -> blocked" in line.getMessage()
    assert block["id"] == f"acct_spam:{line.audit_id}"

    # the support action that lifts it is logged (the CLI's own JSON line) and published too
    run = cli_runner(monkeypatch, amqp_url, redis_url)
    capsys.readouterr()
    assert await run("accounts", "unblock", "acct_spam", "--reason", "list cleaned",
                     "--actor", "alice@support") == 0
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    [unblock] = [x for x in lines if x["logger"] == "outbox.accounts"]
    assert (unblock["level"], unblock["account_id"], unblock["from"], unblock["to"],
            unblock["actor"], unblock["reason"]) == \
        ("warning", "acct_spam", "blocked", "active", "alice@support", "list cleaned")
    got = await collect(amqp_url, "outbox.status",
                        lambda m: any(x.routing_key == "account.active" for x in m))
    [published] = [x for x in got if x.routing_key == "account.active"]
    assert json.loads(published.body)["id"] == f"acct_spam:{unblock['audit_id']}"


def _complained(job_id: str) -> Any:
    """Until the job's ``complained`` event: what its webhook caused comes before it."""
    return lambda m: any((e["id"], e["status"]) == (job_id, "complained") for e in events(m))


def _account_lines(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if r.name == "outbox.accounts"]


async def _send_only(amqp_url: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    await publish(amqp_url, jobs)
    return events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= len(jobs)))
