"""``outbox worker --processes 2``, a real supervisor and two real workers on the test
RabbitMQ, Redis and SMTP server: every job sent once, a child SIGKILLed mid-run replaced by a
new process with nothing lost, SIGTERM draining both, one ``/metrics`` counting both, a refused
start said once with exit 2, children that outlive a SIGKILLed supervisor stopping by
themselves.

As in test_crash_recovery.py, the relay holds its DATA replies after a set number of messages,
so a kill or a stop lands while every slot of both children is in a send."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sender.client import Outbox
from tests.integration.helpers import collect, email_job, events, wait_for

pytestmark = pytest.mark.integration
CONCURRENCY = 8  # per child: prefetch, concurrency and SMTP pool
_MID = re.compile(rb"^Message-ID: <([^@>]+)@", re.MULTILINE | re.IGNORECASE)


def _mids(messages: list[tuple[str, list[str], bytes]]) -> Counter[str]:
    """How often each job (by its Message-ID) reached the relay."""
    return Counter(m.group(1).decode() for _, _, data in messages
                   for m in [_MID.search(data)] if m)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(amqp_url: str, redis_url: str, smtp_url: str, log: Path, *args: str,
           **env: str) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    clean.update(OUTBOX_AMQP_URL=amqp_url, OUTBOX_REDIS_URL=redis_url, OUTBOX_SMTP_URL=smtp_url,
                 OUTBOX_PREFETCH=str(CONCURRENCY), OUTBOX_CONCURRENCY=str(CONCURRENCY),
                 OUTBOX_SMTP_POOL_SIZE=str(CONCURRENCY),
                 OUTBOX_SHUTDOWN_GRACE="10", OUTBOX_SMTP_TIMEOUT="10",
                 OUTBOX_REQUIRE_VERIFIED_SENDERS="false", **env)
    return subprocess.Popen([sys.executable, "-m", "outbox", "worker", *args], env=clean,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _lines(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines written so far."""
    out = []
    for raw in log.read_bytes().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


def _started_pids(log: Path) -> list[int]:
    """Pids of the children that said ``worker ... started``, in order."""
    return [line["pid"] for line in _lines(log)
            if line["logger"] == "outbox.service" and line["msg"].endswith(")")
            and " started (" in line["msg"]]


async def _two_started(log: Path) -> list[int]:
    await wait_for(lambda: len(_started_pids(log)) >= 2, timeout=30)
    return _started_pids(log)


async def _enqueue(amqp_url: str, n: int) -> set[str]:
    jobs = [email_job() for _ in range(n)]
    async with Outbox(amqp_url) as outbox:
        await asyncio.gather(*(outbox.enqueue(j) for j in jobs))
    return {j["id"] for j in jobs}


async def _all_sent(amqp_url: str, expected: set[str], timeout: float = 60) -> list[str]:
    """Consume outbox.status until every expected job has its sent event: the sent ids."""
    got: list[Any] = []
    seen: set[str] = set()

    def done(messages: list[Any]) -> bool:
        seen.update(e["id"] for e in events(messages[len(got):]) if e["status"] == "sent")
        got[:] = messages
        return expected <= seen

    messages = await collect(amqp_url, "outbox.status", done, timeout=timeout)
    return [e["id"] for e in events(messages) if e["status"] == "sent"]


async def _exited(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    for _ in range(int(timeout / 0.05)):
        if proc.poll() is not None:
            return proc.returncode
        await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError(f"process did not exit within {timeout} s")


def _alive(pid: int) -> bool:
    """Running (an exited child not yet reaped by its new parent is a zombie: not alive)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _sent_counter(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "outbox_jobs_total" and sample.labels.get("status") == "sent")


async def test_two_processes_send_every_job_once_and_one_metrics_port_counts_both(
        amqp_url: str, redis_url: str, smtp_server: Any, tmp_path: Path) -> None:
    smtp_url, recorder = smtp_server
    log, port = tmp_path / "worker.log", _free_port()
    proc = _start(amqp_url, redis_url, smtp_url, log, "--processes", "2",
                  OUTBOX_METRICS_PORT=str(port))
    try:
        children = await _two_started(log)
        ids = await _enqueue(amqp_url, 300)
        sent_events = await _all_sent(amqp_url, ids)
        await wait_for(lambda: _sent_counter(port) >= len(ids), timeout=10)
        assert _sent_counter(port) == len(ids), "one /metrics sums both children"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await _exited(proc) == 0
    received = _mids(recorder.messages)
    assert set(received) == ids and max(received.values()) == 1, "every job once"
    assert Counter(sent_events) == Counter(ids), "one sent event each"
    by_pid = Counter(line["pid"] for line in _lines(log)
                     if line.get("status") == "sent" and line["logger"] == "outbox.pipeline")
    assert set(by_pid) == set(children) and sum(by_pid.values()) == len(ids), \
        "both processes sent, and each line names its process"
    assert not any(_alive(pid) for pid in children)


async def test_a_child_killed_mid_run_is_replaced_and_nothing_is_lost(
        amqp_url: str, redis_url: str, smtp_server: Any, tmp_path: Path) -> None:
    smtp_url, recorder = smtp_server
    recorder.hold_after = 40  # then every slot of both children waits in a send
    log = tmp_path / "worker.log"
    proc = _start(amqp_url, redis_url, smtp_url, log, "--processes", "2")
    try:
        victim, survivor = await _two_started(log)
        ids = await _enqueue(amqp_url, 200)
        await wait_for(lambda: recorder.held == 2 * CONCURRENCY, timeout=30)
        in_flight = set(_mids(recorder.messages[40:]))
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: len(_started_pids(log)) == 3, timeout=20)
        replacement = _started_pids(log)[2]
        assert replacement not in (victim, survivor) and _alive(survivor)
        warning = next(line for line in _lines(log) if line["level"] == "warning"
                       and line["logger"] == "outbox.supervisor")
        assert warning["msg"].startswith(
            f"worker process {victim} exited unexpectedly (killed by SIGKILL)")
        recorder.release()
        sent_events = await _all_sent(amqp_url, ids)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await _exited(proc) == 0
    received = _mids(recorder.messages)
    assert set(received) == ids, "nothing lost"
    twice = {mid for mid, count in received.items() if count > 1}
    assert twice <= in_flight and len(twice) <= CONCURRENCY, \
        "only the killed child's sends in flight may go twice"
    assert max(received.values()) <= 2
    assert set(sent_events) == ids
    print(f"\nkilled {victim} with {len(in_flight)} sends in flight (both children); "
          f"sent twice: {len(twice)}; replaced by {replacement}")


async def test_sigterm_drains_both_children_and_leaves_the_rest_queued(
        amqp_url: str, redis_url: str, smtp_server: Any, tmp_path: Path) -> None:
    smtp_url, recorder = smtp_server
    recorder.hold_after = 30
    log = tmp_path / "worker.log"
    proc = _start(amqp_url, redis_url, smtp_url, log, "--processes", "2")
    children = await _two_started(log)
    ids = await _enqueue(amqp_url, 150)
    await wait_for(lambda: recorder.held == 2 * CONCURRENCY, timeout=30)
    proc.send_signal(signal.SIGTERM)
    stopping = f"stopping: {CONCURRENCY} jobs in flight"
    await wait_for(lambda: sum(line["msg"] == stopping for line in _lines(log)) == 2,
                   timeout=20)
    recorder.release()
    assert await _exited(proc, timeout=25) == 0, "within the grace, exit status 0"
    assert not any(_alive(pid) for pid in children)
    assert len(recorder.messages) == 30 + 2 * CONCURRENCY, "nothing taken after the stop"
    again = _start(amqp_url, redis_url, smtp_url, log)
    try:
        await _all_sent(amqp_url, ids)
    finally:
        again.send_signal(signal.SIGTERM)
        assert await _exited(again) == 0
    received = _mids(recorder.messages)
    assert set(received) == ids and max(received.values()) == 1, \
        "the rest went back to the queue; a graceful stop sends nothing twice"


async def test_a_refused_start_is_one_line_and_exit_2(amqp_url: str, redis_url: str,
                                                      smtp_server: Any, tmp_path: Path) -> None:
    smtp_url, _ = smtp_server
    parts = urlsplit(amqp_url)
    nowhere = urlunsplit(parts._replace(path="/no-such-vhost"))
    log = tmp_path / "worker.log"
    proc = _start(nowhere, redis_url, smtp_url, log, "--processes", "2")
    assert await _exited(proc) == 2
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("outbox: RabbitMQ at ") and "refused" in lines[0]
    assert "no-such-vhost" in lines[0] and "OUTBOX_AMQP_URL" in lines[0]


async def test_children_stop_by_themselves_when_the_supervisor_is_killed(
        amqp_url: str, redis_url: str, smtp_server: Any, tmp_path: Path) -> None:
    smtp_url, _ = smtp_server
    log = tmp_path / "worker.log"
    proc = _start(amqp_url, redis_url, smtp_url, log, "--processes", "2")
    children = await _two_started(log)
    proc.kill()
    proc.wait()
    await wait_for(lambda: not any(_alive(pid) for pid in children), timeout=20)
    assert sum("is gone: stopping" in line["msg"] for line in _lines(log)) == 2


async def test_outbox_run_runs_its_worker_part_as_processes_with_their_metrics_on_http(
        amqp_url: str, redis_url: str, smtp_server: Any, tmp_path: Path) -> None:
    smtp_url, recorder = smtp_server
    log, port = tmp_path / "run.log", _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    clean.update(OUTBOX_AMQP_URL=amqp_url, OUTBOX_REDIS_URL=redis_url, OUTBOX_SMTP_URL=smtp_url,
                 OUTBOX_HTTP_PORT=str(port), OUTBOX_WORKER_PROCESSES="2",
                 OUTBOX_SHUTDOWN_GRACE="10", OUTBOX_SMTP_TIMEOUT="10",
                 OUTBOX_REQUIRE_VERIFIED_SENDERS="false")
    proc = subprocess.Popen([sys.executable, "-m", "outbox", "run"], env=clean,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        children = await _two_started(log)
        assert proc.pid not in children
        ids = await _enqueue(amqp_url, 40)
        await _all_sent(amqp_url, ids)
        await wait_for(lambda: _sent_counter(port) == len(ids), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await _exited(proc) == 0
    assert set(_mids(recorder.messages)) == ids
    assert not any(_alive(pid) for pid in children)
