"""Start-up errors in one line (sender.connect), the CRM client's job building and validation
(sender.client), the StatusEvent model and the dev ready banner — no service needed."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime
from typing import Any

import pytest
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from config import load_settings
from outbox.commands import DEV_ADMIN_TOKEN, EXAMPLE_JOB, dev_overrides, ready_banner
from sender.channels.registry import parse_job
from sender.client import InvalidBatch, Outbox, email_job, routing_key, sms_job
from sender.connect import (
    ServiceRefused,
    ServiceUnreachable,
    amqp_error,
    mask_url,
    redis_error,
    wait_for_services,
    why,
)
from sender.models import EmailJob, InvalidJob, SmsJob, StatusEvent


@pytest.mark.parametrize(("url", "masked"), [
    ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
    ("amqp://u:p%40ss@rabbit:5672/vh", "amqp://u:***@rabbit:5672/vh"),
    ("amqp://u:p@ss@rabbit:5672/", "amqp://u:***@rabbit:5672/"),  # an unescaped @ in it
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss://user:s3cret@redis.example:6380/2", "rediss://user:***@redis.example:6380/2"),
    ("redis://127.0.0.1:6379/0?password=s3cret&db=1", "redis://127.0.0.1:6379/0?password=***&db=1"),
    ("amqp://guest@127.0.0.1/", "amqp://guest@127.0.0.1/"),  # no password: nothing to hide
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_the_password_is_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_unreachable_is_one_line_naming_the_setting_the_masked_url_and_what_to_do() -> None:
    refused = AMQPConnectionError(111, "Connect call failed")
    refused.__cause__ = ConnectionRefusedError(111, "Connect call failed")
    exc = amqp_error("amqp://guest:s3cret@127.0.0.1:5672/", refused)
    assert isinstance(exc, ServiceUnreachable)
    assert str(exc) == (
        "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:5672/ (OUTBOX_AMQP_URL): "
        "connection refused; is RabbitMQ running? start it with `make services` or set "
        "OUTBOX_AMQP_URL")
    down = redis_error("redis://:s3cret@10.0.0.9:6379/0",
                       RedisConnectionError("Error -2 connecting"))
    assert isinstance(down, ServiceUnreachable)
    assert "\n" not in str(down) and "s3cret" not in str(down)
    assert "OUTBOX_REDIS_URL" in str(down) and "is Redis running?" in str(down)


def test_a_refused_login_is_not_called_unreachable() -> None:
    login = amqp_error("amqp://guest:bad@h/", ProbableAuthenticationError("ACCESS_REFUSED"))
    assert isinstance(login, ServiceRefused)
    assert str(login).startswith("RabbitMQ at amqp://guest:***@h/ (OUTBOX_AMQP_URL) refused "
                                 "the connection: login refused")
    assert isinstance(redis_error("redis://:x@h/0", AuthenticationError("invalid password")),
                      ServiceRefused)
    db = redis_error("redis://h/99", ResponseError("DB index is out of range"))
    assert isinstance(db, ServiceRefused) and "DB index is out of range" in str(db)


def test_the_client_names_no_setting_it_does_not_have() -> None:
    exc = amqp_error("amqp://crm:pw@mq:5672/", OSError(111, "x"), setting=None)
    assert "OUTBOX_" not in str(exc) and "amqp://crm:***@mq:5672/" in str(exc)


@pytest.mark.parametrize(("exc", "text"), [
    (ConnectionRefusedError(111, "Connect call failed"), "connection refused"),
    (socket.gaierror(-2, "Name or service not known"), "unknown host (Name or service not known)"),
    (TimeoutError(), "timed out"),
    (RuntimeError("odd\n  thing"), "odd thing"),
])
def test_why_says_it_in_a_few_words(exc: BaseException, text: str) -> None:
    assert why(exc) == text


async def test_waiting_for_services_ends_at_once_when_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, stop.set)
    started = loop.time()
    # a closed loopback port: refused at once, then waiting 30 s, cut short by stop
    assert await wait_for_services({"redis": "redis://127.0.0.1:1/0"}, stop,
                                   delays=(30.0,)) is False
    assert loop.time() - started < 2


# --- the client -----------------------------------------------------------------------------


def _email(**fields: Any) -> EmailJob:
    base: dict[str, Any] = dict(id="order-1-receipt", account_id="acct_1",
                                   category="transactional", to="ana@example.com",
                                   from_="Shop <shop@example.com>", subject="Your receipt",
                                   text="Thanks")
    return email_job(**{**base, **fields})


def test_email_job_builds_the_job_the_worker_reads() -> None:
    job = _email(metadata={"order": 1}, not_after=datetime(2030, 1, 1, tzinfo=UTC))
    assert isinstance(job, EmailJob) and job.from_ == "Shop <shop@example.com>"
    assert routing_key(job) == "email"
    body = Outbox("amqp://x@h/").validate(job)[1]
    assert parse_job(body, max_bytes=10**6) == job
    assert json.loads(body)["from"] == "Shop <shop@example.com>"
    sms = sms_job(id="sms-1", account_id="acct_1", category="notification", topic="meeting",
                  to="+85291234567", body="See you at 10")
    assert isinstance(sms, SmsJob) and routing_key(sms) == "sms"


@pytest.mark.parametrize(("fields", "reason"), [
    ({"to": "not an address"}, "to: "),
    ({"text": None}, "an email job needs text or html"),
    ({"id": "has spaces"}, "id: job id must be 1-128 characters"),
    ({"category": "notification"}, "a notification job needs a topic"),
    ({"metadata": {"score": float("nan")}}, "a number is out of range (not finite)"),
    ({"metadata": {"when": object()}}, "not JSON: object is not JSON serialisable"),
    ({"not_after": datetime(2030, 1, 1)}, "not_after: must be an RFC 3339 date-time with a "
                                          "timezone"),
    ({"headers": {"Bcc": "x@example.com"}}, "headers: "),
])
def test_an_invalid_job_is_refused_with_a_readable_reason(fields: dict[str, Any],
                                                          reason: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        _email(**fields)
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


def test_a_model_changed_behind_validation_is_still_checked() -> None:
    bad = _email().model_copy(update={"metadata": {"x": float("inf")}})
    with pytest.raises(InvalidJob, match="not finite"):
        Outbox("amqp://x@h/").validate(bad)
    with pytest.raises(InvalidJob, match="over the limit"):
        Outbox("amqp://x@h/", max_job_bytes=100).validate(_email())


async def test_a_batch_with_an_invalid_job_names_it_and_publishes_nothing() -> None:
    outbox = Outbox("amqp://x@h/")  # not connected: any publish would fail loudly
    jobs = [_email(id="ok-1"), {"v": 1, "id": "bad-2", "channel": "email"}, _email(id="ok-3")]
    with pytest.raises(InvalidBatch) as caught:
        await outbox.publish_many(jobs)
    assert [i for i, _ in caught.value.problems] == [1]
    assert str(caught.value).startswith("1 of 3 jobs invalid, none published: job 1 (bad-2): ")
    assert isinstance(caught.value, InvalidJob)


async def test_events_refuse_a_binding_that_is_not_a_pattern() -> None:
    outbox = Outbox("amqp://x@h/")
    with pytest.raises(ValueError, match="not a routing key pattern"):
        await anext(outbox.events("email.*", "email sent"))
    with pytest.raises(ValueError, match="give no bindings"):
        await anext(outbox.events("email.*", queue="outbox.status"))


def test_status_events_parse_typed_with_their_extra_fields() -> None:
    body = json.dumps({"v": 1, "id": "j1", "account_id": "a", "channel": "sms",
                       "status": "sent", "reason": None, "detail": None, "provider": "twilio",
                       "provider_message_id": "SM1", "attempt": 1,
                       "at": "2026-01-02T03:04:05.678Z", "metadata": {"k": 1},
                       "segments": 2, "encoding": "GSM-7"}).encode()
    event = StatusEvent.parse(body, "sms.sent")
    assert event.at == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert event.routing_key == "sms.sent" and event.metadata == {"k": 1}
    assert event.model_extra == {"segments": 2, "encoding": "GSM-7"}
    with pytest.raises(ValueError):
        StatusEvent.parse(b'{"v": 1, "id": "x"}')


# --- make run's banner ----------------------------------------------------------------------


def test_dev_run_gets_a_development_admin_token_and_prints_it() -> None:
    cfg = load_settings()
    dev = load_settings(**dev_overrides(cfg))
    assert [(t.name, t.role, t.token.get_secret_value()) for t in dev.admin_tokens] == [
        ("token-0", "admin", DEV_ADMIN_TOKEN)]
    banner = ready_banner(dev)
    assert "var/mail/*.eml" in banner
    assert f"http://127.0.0.1:8080/admin/   token: {DEV_ADMIN_TOKEN}" in banner
    line = next(x for x in banner.splitlines() if "outbox enqueue -" in x)
    assert json.loads(line.split("'")[1]) == EXAMPLE_JOB
    parse_job(json.dumps(EXAMPLE_JOB).encode(), max_bytes=10**6)  # the example is valid
    # configured tokens are kept; a server that is not loopback only gets a random one
    mine = load_settings(admin_tokens="mine-1234567890")
    assert "admin_tokens" not in dev_overrides(mine)
    public = dev_overrides(load_settings(http_host="0.0.0.0"))["admin_tokens"]
    assert public != DEV_ADMIN_TOKEN and len(public) >= 20
