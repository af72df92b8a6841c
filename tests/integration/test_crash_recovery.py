"""A real `outbox worker` process killed mid-blast (SIGKILL) or stopped (SIGTERM), restarted:
every job reaches the SMTP server, none twice beyond those on the wire at the kill.

No race with the worker's speed: the relay holds its DATA replies after a set number of
messages, so the kill or stop lands while exactly ``CONCURRENCY`` sends are in flight (received
by the relay, not yet confirmed to the worker)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sender.client import Outbox
from tests.integration.helpers import collect, email_job, events, wait_for

pytestmark = pytest.mark.integration
CONCURRENCY = 16
_MID = re.compile(rb"^Message-ID: <([^@>]+)@", re.MULTILINE | re.IGNORECASE)


def _mids(messages: list[tuple[str, list[str], bytes]]) -> Counter[str]:
    """How often each job (by its Message-ID) reached the relay."""
    return Counter(m.group(1).decode() for _, _, data in messages
                   for m in [_MID.search(data)] if m)


def _start_worker(amqp_url: str, redis_url: str, smtp_url: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(OUTBOX_AMQP_URL=amqp_url, OUTBOX_REDIS_URL=redis_url, OUTBOX_SMTP_URL=smtp_url,
               OUTBOX_PREFETCH=str(CONCURRENCY), OUTBOX_CONCURRENCY=str(CONCURRENCY),
               OUTBOX_SMTP_POOL_SIZE=str(CONCURRENCY),
               OUTBOX_SHUTDOWN_GRACE="10", OUTBOX_SMTP_TIMEOUT="10",
               OUTBOX_REQUIRE_VERIFIED_SENDERS="false")
    return subprocess.Popen([sys.executable, "-m", "outbox", "worker"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def _enqueue(amqp_url: str, n: int) -> list[dict]:
    jobs = [email_job() for _ in range(n)]
    async with Outbox(amqp_url) as outbox:
        for i in range(0, n, 200):
            await asyncio.gather(*(outbox.enqueue(j) for j in jobs[i:i + 200]))
    return jobs


async def _sent_ids(amqp_url: str, expected: set[str], timeout: float) -> list[str]:
    seen: set[str] = set()

    def done(messages: list) -> bool:
        for m in messages[len(seen_list):]:
            seen_list.append(m)
        seen.update(e["id"] for e in events(seen_list) if e["status"] == "sent")
        return expected <= seen

    seen_list: list = []
    got = await collect(amqp_url, "outbox.status", done, timeout=timeout)
    return [e["id"] for e in events(got) if e["status"] == "sent"]


async def _stop(proc: subprocess.Popen, sig: int) -> int:
    proc.send_signal(sig)
    return await _exited(proc)


async def _exited(proc: subprocess.Popen) -> int:
    for _ in range(400):
        if proc.poll() is not None:
            return proc.returncode
        await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("worker did not exit within 20 s")


async def test_sigkill_midway_then_restart_sends_every_job(amqp_url, redis_url, smtp_server,
                                                           tmp_path):
    smtp_url, recorder = smtp_server
    recorder.hold_after = 700  # then the relay stops replying: those sends stay in flight
    jobs = await _enqueue(amqp_url, 2000)
    ids = {j["id"] for j in jobs}
    log = tmp_path / "worker.log"
    first = _start_worker(amqp_url, redis_url, smtp_url, log)
    try:
        await wait_for(lambda: recorder.held == CONCURRENCY, timeout=60)
    finally:
        first.kill()
        first.wait()
    assert len(recorder.messages) == 700 + CONCURRENCY, "every slot was in a held send"
    in_flight = set(_mids(recorder.messages[700:]))
    recorder.release()
    second = _start_worker(amqp_url, redis_url, smtp_url, log)
    try:
        sent_events = await _sent_ids(amqp_url, ids, timeout=120)
    finally:
        assert await _stop(second, signal.SIGTERM) == 0
    received = _mids(recorder.messages)
    assert set(received) == ids, "every job reached the SMTP server"
    twice = {mid for mid, count in received.items() if count > 1}
    assert twice <= in_flight, "only a send in flight at the kill may go twice"
    assert max(received.values()) <= 2, "and at most twice"
    assert set(sent_events) == ids, "every job has its sent event"
    print(f"\nkilled with {len(in_flight)} sends in flight; sent twice: {len(twice)}; "
          f"events: {len(sent_events)} ({len(set(sent_events))} distinct)")


async def test_sigterm_drains_in_flight_and_loses_nothing(amqp_url, redis_url, smtp_server,
                                                          tmp_path):
    smtp_url, recorder = smtp_server
    recorder.hold_after = 50
    jobs = await _enqueue(amqp_url, 300)
    ids = {j["id"] for j in jobs}
    log = tmp_path / "worker.log"
    first = _start_worker(amqp_url, redis_url, smtp_url, log)
    await wait_for(lambda: recorder.held == CONCURRENCY, timeout=60)
    first.send_signal(signal.SIGTERM)
    # the worker has stopped taking jobs when it says so; only then the held sends complete
    stopping = f"stopping: {CONCURRENCY} jobs in flight".encode()
    await wait_for(lambda: stopping in log.read_bytes(), timeout=20)
    recorder.release()
    assert await _exited(first) == 0
    assert len(recorder.messages) == 50 + CONCURRENCY, "nothing taken after the stop"
    second = _start_worker(amqp_url, redis_url, smtp_url, log)
    try:
        await _sent_ids(amqp_url, ids, timeout=60)
    finally:
        assert await _stop(second, signal.SIGTERM) == 0
    received = _mids(recorder.messages)
    assert set(received) == ids
    assert max(received.values()) == 1, "a graceful stop sends nothing twice"
