"""Node loss, measured: a worker (in this process) draining a backlog of email jobs on a
3-node RabbitMQ cluster, a Redis Cluster with a replica per master and two relays, while one
node is lost mid-run.

    .venv/bin/python -m benchmarks.faults                       # the three runs (~2 min)
    .venv/bin/python -m benchmarks.faults --jobs 3000 --runs relay,redis,rabbitmq

Runs (each on the same clusters, one after the other):

* ``relay``: the primary relay of ``OUTBOX_SMTP_URL`` crashes (its port closed, every session
  aborted: replies not yet sent are lost, as with a killed process);
* ``redis``: a Redis master is SIGKILLed; its replica takes over (cluster-node-timeout 2 s);
* ``rabbitmq``: the RabbitMQ node the worker is connected to is SIGKILLed.

For each: jobs, received by the relays (counted by job id from the Message-ID), lost (never
received), duplicated (received more than once), the sends in flight bound (the worker's
concurrency), seconds to resume (from the kill to the first reception that cannot have been
in flight at the kill), the longest pause in receptions after the kill, the final statuses,
and what the metrics and the WARNING log lines said.
``--json PATH`` writes them. The clusters are throw-away (benchmarks.clusters), stopped by
PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks.clusters import RabbitCluster, RedisCluster
from benchmarks.relay import StoppableRelay

_MESSAGE_ID = re.compile(rb"^Message-ID: <([^@>]+)@", re.MULTILINE | re.IGNORECASE)
RUNS = ("relay", "redis", "rabbitmq")


class Relay(StoppableRelay):
    """A relay recording (time, job id) per message; ``stop(abort=True)`` is its crash (the
    port closed, every session aborted: what a killed relay process does)."""

    def __init__(self) -> None:
        super().__init__(self)
        self.received: list[tuple[float, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        match = _MESSAGE_ID.search(envelope.original_content or b"")
        self.received.append((time.monotonic(), match.group(1).decode() if match else "?"))
        return f"250 2.0.0 Ok: queued as R{len(self.received)}"


@dataclass
class Result:
    """One run's figures."""

    run: str
    jobs: int
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    in_flight_bound: int = 0
    resume_seconds: float = 0.0
    total_seconds: float = 0.0
    killed: str = ""
    statuses: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    longest_pause: list[float] = field(default_factory=list)  # seconds, ended at (after kill)
    per_relay: list[int] = field(default_factory=list)  # received by the primary, the fallback
    first_after: list[float] = field(default_factory=list)  # first receptions after the kill


class _Lines(logging.Handler):
    """WARNING lines of ``outbox`` (and aio-pika's) with their time."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), f"{record.name}: {record.getMessage()}"[:220]))


def _jobs(n: int, run: str) -> list[dict[str, Any]]:
    stamp = int(time.time())
    return [{"v": 1, "id": f"fault-{run}-{stamp}-{i}", "account_id": "acct_fault",
             "channel": "email", "category": "transactional", "to": f"user{i}@example.com",
             "from": "Acme <sales@acme.example>", "subject": f"Receipt {i}",
             "text": f"Thank you {i}"} for i in range(n)]


def _samples(registry: CollectorRegistry, names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name in names:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


_WATCHED = ("outbox_relay_up", "outbox_dependency_up", "outbox_dependency_wait_seconds_total",
            "outbox_provider_replies_total", "outbox_duplicate_deliveries_total",
            "outbox_retries_total")


async def run_one(run: str, rabbit: RabbitCluster, redis: RedisCluster, *, jobs: int,
                  kill_at: float = 0.3, concurrency: int = 32, deadline: float = 120.0
                  ) -> Result:
    """One run: ``jobs`` enqueued, a worker draining them, the ``run``'s node lost once
    ``kill_at`` of them were received; until every job was received or ``deadline``
    seconds after the kill."""
    from config import load_settings
    from sender.client import Outbox
    from sender.service import started_worker

    primary, fallback = await Relay().start(), await Relay().start()
    settings = load_settings(
        amqp_url=rabbit.urls(), redis_url=redis.url, redis_cluster=True,
        smtp_url=f"{primary.url},{fallback.url}", smtp_relay_probe_interval=1.0,
        smtp_timeout=5.0, retry_tiers=(1, 2, 5), concurrency=concurrency,
        prefetch=concurrency, shutdown_grace=5.0, require_verified_senders=False)
    batch = _jobs(jobs, run)
    result = Result(run, jobs, in_flight_bound=concurrency)
    async with Outbox(rabbit.urls()) as outbox:
        for job in batch:
            await outbox.enqueue(job)
    lines = _Lines()
    watched = [logging.getLogger(n) for n in ("outbox", "aio_pika", "aiormq")]
    levels = [logger.level for logger in watched]
    for logger in watched:
        logger.addHandler(lines)
        logger.setLevel(logging.WARNING)
    registry = CollectorRegistry()
    relays = (primary, fallback)

    def received() -> list[tuple[float, str]]:
        return sorted(primary.received + fallback.received)

    started = time.monotonic()
    try:
        async with started_worker(settings, registry=registry) as worker:
            while len(received()) < kill_at * jobs:
                await asyncio.sleep(0.02)
            killed_at = time.monotonic()
            result.killed = await _kill(run, rabbit, redis, primary, worker)
            ids = {job["id"] for job in batch}
            while not ids <= {i for _, i in received()} and \
                    time.monotonic() - killed_at < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # late copies
            result.total_seconds = round(time.monotonic() - started, 1)
            result.metrics = _samples(registry, _WATCHED)
    finally:
        for logger, level in zip(watched, levels, strict=True):
            logger.removeHandler(lines)
            logger.setLevel(level)
        for relay in relays:
            if relay.serving:
                await relay.stop()
    got = received()
    counts = Counter(i for _, i in got)
    result.received = len(got)
    result.lost = sum(1 for job in batch if counts[job["id"]] == 0)
    result.duplicated = sum(n - 1 for n in counts.values() if n > 1)
    times = [t for t, _ in got]
    result.resume_seconds = _resume(killed_at, times, concurrency)
    result.longest_pause = list(_longest_pause(killed_at, times))
    result.per_relay = [len(primary.received), len(fallback.received)]
    result.first_after = [round(t - killed_at, 2) for t, _ in got if t > killed_at][:5]
    result.statuses = await _statuses(rabbit.urls(), ids)
    result.logs = _summary(lines.lines, killed_at)
    return result


async def _kill(run: str, rabbit: RabbitCluster, redis: RedisCluster, primary: Relay,
                worker: Any) -> str:
    if run == "relay":
        await primary.stop(abort=True)
        return f"relay 127.0.0.1:{primary.port} (primary)"
    if run == "redis":
        port = redis.masters()[0]
        await asyncio.to_thread(redis.kill, port)
        return f"redis master 127.0.0.1:{port}"
    node = worker.bus.connection.node
    await asyncio.to_thread(rabbit.kill, rabbit.index(node))
    return f"rabbitmq node {rabbit.names[rabbit.index(node)]} ({node}, the worker's)"


def _resume(killed_at: float, times: list[float], in_flight: int) -> float:
    """Seconds from the kill to the first reception the worker can only have started after
    it: the ``in_flight + 1``-th (at most ``in_flight`` sends were under way at the kill).
    An upper bound: it includes the time to send that many at full speed."""
    after = [t for t in times if t > killed_at]
    return round(after[in_flight] - killed_at, 2) if len(after) > in_flight else float("nan")


def _longest_pause(killed_at: float, times: list[float]) -> tuple[float, float]:
    """The longest pause between receptions after the kill: (seconds, when it ended)."""
    after = [killed_at] + [t for t in times if t > killed_at]
    gaps = [(round(b - a, 2), round(b - killed_at, 2)) for a, b in zip(after, after[1:],
                                                                          strict=False)]
    return max(gaps) if gaps else (float("nan"), float("nan"))


async def _statuses(urls: str, ids: set[str]) -> dict[str, int]:
    """The final status of each job from ``outbox.status`` (consumed)."""
    from sender.nodes import connect_amqp

    connection = await connect_amqp(urls, name="faults")
    final: dict[str, str] = {}
    try:
        channel = await connection.channel()
        queue = await channel.get_queue("outbox.status", ensure=True)
        idle = time.monotonic()
        while time.monotonic() - idle < 1.5:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            idle = time.monotonic()
            event = json.loads(message.body)
            if event.get("id") in ids and event.get("status") != "deferred":
                final[event["id"]] = event["status"]
    finally:
        await connection.close()
    return dict(Counter(final.values()))


def _summary(lines: list[tuple[float, str]], killed_at: float) -> list[str]:
    """The distinct WARNING lines after the kill (digits folded), each with when it first
    came and how many times."""
    seen: dict[str, list[Any]] = {}
    for t, line in lines:
        if t < killed_at:
            continue
        key = re.sub(r"\d+", "N", line)[:120]
        if key not in seen:
            seen[key] = [round(t - killed_at, 1), line, 0]
        seen[key][2] += 1
    return [f"+{t}s x{n}: {line}" for t, line, n in list(seen.values())[:12]]


async def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    runs = [r for r in args.runs.split(",") if r]
    logging.basicConfig(level=logging.ERROR)
    print("starting a 3-node RabbitMQ cluster and a Redis Cluster (3 masters, 3 replicas)...")
    rabbit, redis = RabbitCluster(), RedisCluster()
    results = []
    try:
        t = time.monotonic()
        await asyncio.gather(asyncio.to_thread(rabbit.start), asyncio.to_thread(redis.start))
        print(f"clusters up in {time.monotonic() - t:.0f} s")
        for run in runs:
            result = await run_one(run, rabbit, redis, jobs=args.jobs,
                                   concurrency=args.concurrency)
            results.append(result)
            _print(result)
    finally:
        await asyncio.gather(asyncio.to_thread(rabbit.stop), asyncio.to_thread(redis.stop))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return results


def _print(r: Result) -> None:
    print(f"\n== {r.run}: killed {r.killed}\n"
          f"jobs {r.jobs}, received {r.received}, lost {r.lost}, duplicated {r.duplicated} "
          f"(in flight at most {r.in_flight_bound}), resumed after {r.resume_seconds} s, "
          f"longest pause {r.longest_pause[0]} s (ended {r.longest_pause[1]} s after the kill), "
          f"all in {r.total_seconds} s; statuses {r.statuses}; primary/fallback "
          f"{r.per_relay}, first receptions after the kill at {r.first_after} s")
    for name, value in r.metrics.items():
        print(f"  {name} {value:g}")
    for line in r.logs:
        print(f"  {line}")


if __name__ == "__main__":
    asyncio.run(main())
