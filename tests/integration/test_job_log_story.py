"""A job's log is its whole story (sender.provider_event_applier): a job sent by the real
worker and later bounced through the real bounce listener (a DSN to its signed VERP address,
over SMTP) has two worker lines with its id, "sent" and "bounced", with the same field
names; a repeat of the report adds no INFO line; and every line is found by grepping the id
in the JSON log."""

from __future__ import annotations

import io
import json
import logging

import pytest

from outbox.logs import JsonFormatter
from tests.integration.helpers import collect, events, running_worker
from tests.integration.test_bounces_listener import _settings, dsn, listening, sent_job, smtp_send

pytestmark = pytest.mark.integration
#: the worker's loggers: the pipeline's line per settled job, the applier's per event
WORKER = ("outbox.pipeline", "outbox.events")
FIELDS = ("job_id", "account_id", "channel", "status", "reason", "provider", "detail")


def _lines_of(job_id: str, records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.INFO and getattr(r, "job_id", None)
            == job_id]


async def test_a_job_sent_then_bounced_has_two_worker_lines_with_its_id(
        make_settings, smtp_server, amqp_url, unused_tcp_port, caplog):
    caplog.set_level(logging.INFO)
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, verp = await sent_job(settings, amqp_url, recorder, account_id="acct_story",
                               to="bob@example.net")
    async with listening(settings, unused_tcp_port), running_worker(settings):
        report = dsn(job_id=job["id"], recipient="bob@example.net")
        await smtp_send(unused_tcp_port, [verp], report)
        [bounced] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
        await smtp_send(unused_tcp_port, [verp], report)  # the relay repeats itself
        assert await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=2) == []
    assert bounced["status"] == "bounced"

    mine = _lines_of(job["id"], caplog.records)
    worker = [r for r in mine if r.name in WORKER]
    assert [(r.name, r.levelname, r.status) for r in worker] == [
        ("outbox.pipeline", "INFO", "sent"), ("outbox.events", "INFO", "bounced")]
    sent, bounce = worker
    for line in worker:
        assert all(hasattr(line, f) for f in FIELDS), [f for f in FIELDS if not hasattr(line, f)]
        assert (line.job_id, line.account_id, line.channel) == (job["id"], "acct_story",
                                                                "email")
    assert bounce.getMessage() == f"job {job['id']} bounced: smtp event, applied"
    assert (bounce.provider, bounce.reason, bounce.event, bounce.result) == (
        "smtp", "userunknown", "bounced", "applied")
    assert sent.provider == "smtp" and sent.reason is None
    # the listener's own line (its process's log) names the job the same way
    assert [r.getMessage() for r in mine if r.name == "outbox.bounces"] == [
        f"report accepted (signed) for job {job['id']}"] * 2

    # grepping the id in Outbox's JSON log finds them, each with the id in its field
    out = io.StringIO()
    formatter = JsonFormatter()
    for record in caplog.records:
        if record.name.startswith("outbox.") and record.levelno >= logging.INFO:
            out.write(formatter.format(record) + "\n")
    found = [json.loads(line) for line in out.getvalue().splitlines() if job["id"] in line]
    assert [(f["logger"], f.get("status")) for f in found if f["logger"] in WORKER] == [
        ("outbox.pipeline", "sent"), ("outbox.events", "bounced")]
    assert all(f["job_id"] == job["id"] for f in found)
