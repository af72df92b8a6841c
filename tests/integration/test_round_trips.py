"""Redis round trips per job, counted client-side: every packet the worker's Redis
connections send is one round trip (a pipeline is one). At most one before the send and one
after (README, "What happens to a job")."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import AbstractConnection

from tests.integration.helpers import collect, email_job, publish, running_worker

pytestmark = pytest.mark.integration


@pytest.fixture
def round_trips(monkeypatch) -> list[int]:
    """Counts ``send_packed_command`` calls of every async Redis connection, except the
    handshake of a new pool connection (HELLO/CLIENT SETINFO/SELECT, once per connection)."""
    count = [0]
    original_send = AbstractConnection.send_packed_command
    original_connect = AbstractConnection.on_connect_check_health

    async def counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
        if not getattr(self, "_in_handshake", False):
            count[0] += 1
        return await original_send(self, command, check_health)

    async def handshake(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._in_handshake = True
        try:
            return await original_connect(self, *args, **kwargs)
        finally:
            self._in_handshake = False

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    monkeypatch.setattr(AbstractConnection, "on_connect_check_health", handshake)
    return count


async def _run(amqp_url: str, jobs: list[dict], round_trips: list[int], worker) -> int:
    """The jobs' round trips: all the worker's but those of its mover (sender.schedule),
    which looks for due scheduled jobs every 0.2 s whatever the jobs."""
    before, mover = round_trips[0], worker.mover.round_trips
    await publish(amqp_url, jobs)
    got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= len(jobs), timeout=30)
    assert len(got) == len(jobs)
    return round_trips[0] - before - (worker.mover.round_trips - mover)


async def test_at_most_two_round_trips_per_sent_job(make_settings, smtp_server, amqp_url,
                                                    round_trips):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    async with running_worker(settings) as worker:
        # warm-up: the first job loads the scripts (NOSCRIPT → SCRIPT LOAD → retry)
        await _run(amqp_url, [email_job()], round_trips, worker)
        sent = await _run(amqp_url, [email_job() for _ in range(20)], round_trips, worker)
        refused = await _run(amqp_url, [email_job(category="marketing") for _ in range(10)],
                             round_trips, worker)
        bounced_jobs = [email_job(to=f"gone{i}@example.com") for i in range(5)]
        for job in bounced_jobs:
            recorder.replies[job["to"]] = "550 5.1.1 User unknown"
        bounced = await _run(amqp_url, bounced_jobs, round_trips, worker)
    print(f"\nround trips: {sent} for 20 sent jobs, {refused} for 10 refused (no consent), "
          f"{bounced} for 5 hard-bounced", file=__import__("sys").__stderr__)
    assert len(recorder.messages) == 21
    assert sent <= 2 * 20
    assert refused <= 10  # refused in the pre-send round trip, nothing after
    assert bounced <= 2 * 5  # the global suppression write rides in the post-send pipeline
