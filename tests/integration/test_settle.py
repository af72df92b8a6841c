"""One settling object (sender.settle.Settle) for the job pipeline, the provider-event applier
and the worker's guard, on a real worker with RabbitMQ and Redis: a failing job's body is
parsed once per delivery; a provider event that fails unexpectedly is settled on the
applier's own path (retried a bounded number of times, then dead-lettered as an event, with
no job status and without the pipeline's ``unexpected``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sender import pipeline as pipeline_module
from sender.bus import Bus
from sender.channels.base import SendResult
from sender.deadletters import lane_of
from sender.provider_events import ProviderEvent
from sender.settle import ERROR_DELIVERIES
from tests.integration.helpers import collect, email_job, events, publish, running_worker

pytestmark = pytest.mark.integration
REASON = "x-outbox-reason"


class _Exploding:
    """A channel whose send raises what nobody expects."""

    async def send(self, job: Any, sender: Any = None) -> SendResult:
        raise RuntimeError(f"boom for {job.id}")

    def stop(self) -> None: ...

    async def close(self) -> None: ...


async def _settled(amqp_url: str, queue: str, n: int) -> list[Any]:
    """``n`` messages from ``queue``, then a quiet second to show no more come."""
    got = await collect(amqp_url, queue, lambda m: len(m) >= n)
    return got + await collect(amqp_url, queue, lambda m: False, timeout=1.0)


async def test_the_pipeline_the_applier_and_the_worker_share_one_settle(make_settings):
    async with running_worker(make_settings()) as worker:
        assert worker.settle is worker.pipeline.settle is worker.events.settle
        assert not hasattr(worker.pipeline, "acks") and not hasattr(worker.events, "acks")


async def test_a_failing_job_is_parsed_once_per_delivery(make_settings, smtp_server, amqp_url,
                                                         monkeypatch):
    smtp_url, recorder = smtp_server
    parsed: list[bytes] = []
    real = pipeline_module.validate  # the pipeline's parse and checks of a body

    def counted(body: bytes, *args: Any, **kw: Any) -> Any:
        parsed.append(body)
        return real(body, *args, **kw)

    monkeypatch.setattr(pipeline_module, "validate", counted)
    job = email_job(metadata={"crm": 9})
    async with running_worker(make_settings(smtp_url=smtp_url)) as worker:
        worker.channels["email"] = _Exploding()
        await publish(amqp_url, [job])
        dead = await _settled(amqp_url, "outbox.dead", 1)
        status = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
    assert len(dead) == 1
    assert dead[0].headers[REASON].startswith(f"unexpected error on delivery {ERROR_DELIVERIES}")
    # one parse per delivery: the last one's failed event is made from the job it parsed
    assert len(parsed) == ERROR_DELIVERIES
    [event] = events(status)
    assert (event["id"], event["status"], event["metadata"]) == (job["id"], "failed",
                                                                {"crm": 9})
    assert recorder.messages == []


async def test_a_failing_provider_event_is_settled_on_the_appliers_own_path(
        make_settings, amqp_url, monkeypatch):
    event = ProviderEvent(provider="mailgun", type="delivered", channel="email",
                          event_id="settle-1", account_id="acct_1", job_id="job-settle-1",
                          recipient="someone@example.com", at="2026-01-01T00:00:00Z",
                          provider_message_id=None, message_id=None, kind=None, reason=None,
                          diagnostic=None)
    async with running_worker(make_settings()) as worker:
        applied: list[str] = []
        pipeline_paths: list[Any] = []

        async def broken(e: ProviderEvent) -> str | None:
            applied.append(e.event_id)
            raise RuntimeError("applier bug")

        async def not_the_pipelines(*args: Any, **kw: Any) -> None:
            pipeline_paths.append(args)

        monkeypatch.setattr(worker.events, "apply", broken)
        monkeypatch.setattr(worker.pipeline, "unexpected", not_the_pipelines)
        bus = Bus(amqp_url, retry_tiers=(1, 2))
        await bus.connect()
        try:
            await bus.publish_to_queue("outbox.events", event.to_json())
        finally:
            await bus.close()
        dead = await _settled(amqp_url, "outbox.dead", 1)
        status = await collect(amqp_url, "outbox.status", lambda m: False, timeout=1.0)
    assert len(dead) == 1
    assert dead[0].headers[REASON] == \
        f"unexpected error on delivery {ERROR_DELIVERIES}: RuntimeError: applier bug"
    assert dead[0].routing_key == "events"  # an event's dead letter, not a job's
    assert lane_of(dead[0], dict(dead[0].headers)) == ("", "outbox.events")  # replayable
    assert json.loads(dead[0].body)["event_id"] == "settle-1"
    assert applied == ["settle-1"] * ERROR_DELIVERIES
    assert pipeline_paths == []
    assert events(status) == []  # no job status for an event's failure
