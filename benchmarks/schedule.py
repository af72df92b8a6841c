"""python -m benchmarks.schedule [--jobs 100000] [--lead 90]

Scheduled jobs (README, "Send later"): what N jobs cost while they wait for their ``send_at``,
and how late they leave when they all come due in the same millisecond.

1. a ``redis-server`` of its own (a free loopback port, AOF ``everysec`` as production runs,
   started and stopped by PID), so its ``INFO memory`` delta is the run's alone; the bench
   profile's RabbitMQ (``scripts/services.py``), a vhost of its own, the topology declared;
2. a mover in a process of its own (``sender.schedule.Mover``, the worker's own task and code,
   on its own Redis pool and AMQP connection), its RSS read from ``/proc`` while idle;
3. N email jobs (~600 bytes of JSON each, 100 accounts) made to wait exactly as the pipeline
   makes a job read before its ``send_at`` wait (``Schedule.add``: the job's record, the
   shard's sorted set and hash), all due at the same millisecond, ``--lead`` seconds after the
   start; ``used_memory`` before and after, divided by N; the mover's RSS while they wait;
4. when they come due: the benchmark consumes the lane (``outbox.email``) and takes each
   job's lateness when it arrives there (its arrival minus its due time, carried by
   ``x-outbox-released``); the mover's own figure (publish confirmed minus due) beside it,
   and its peak RSS (``VmHWM``).

The lateness measured is the delay mechanism's: the job is in its lane, where a worker takes it
like any job (a worker process sends about 1,000 jobs/s: N jobs due together then take N/1,000
s of sending on top; benchmarks/README.md, "Throughput").

Writes ``benchmarks/results/schedule-<stamp>.json`` and prints the table recorded in
benchmarks/README.md ("Scheduled jobs").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.env import PROFILE, Services, services
from benchmarks.memory import RedisServer, memory_info

RESULTS = Path(__file__).resolve().parent / "results"
LOGS = Path(__file__).resolve().parent.parent / "var" / "bench"
ACCOUNTS = 100
WRITERS = 256  # Schedule.add calls in flight at once (as a worker's slots would make them)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def job_body(i: int) -> tuple[str, str, bytes]:
    """(account, id, body) of the i-th job: a transactional email of ~600 bytes."""
    account, job_id = f"acct_{i % ACCOUNTS}", f"sched-{i:07d}-{uuid.uuid4().hex[:8]}"
    body = {"v": 1, "id": job_id, "account_id": account, "channel": "email",
            "category": "transactional", "to": f"customer{i}@example.com",
            "from": "Clinic <reminders@clinic.example>",
            "subject": f"Your appointment tomorrow at 10:{i % 60:02d}",
            "text": "Dear customer,\n\nthis is a reminder of your appointment tomorrow. "
                    "Reply to this message to move it.\n\nYour clinic",
            "html": "<p>Dear customer,</p><p>this is a reminder of your appointment "
                    "tomorrow. Reply to this message to move it.</p><p>Your clinic</p>",
            "metadata": {"crm_message_id": i}, "send_at": "set below"}
    return account, job_id, json.dumps(body).encode()


def rss(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def stop(server: RedisServer) -> None:
    """Stop our redis-server and remove its directory (with the AOF directory, which
    RedisServer.stop does not expect)."""
    if server.proc is not None and server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(30)
    shutil.rmtree(Path(server.dir) / "appendonlydir", ignore_errors=True)
    server.stop()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"p50": at(0.50), "p99": at(0.99), "max": ordered[-1], "min": ordered[0],
            "mean": statistics.fmean(ordered)}


# --- the mover's process -------------------------------------------------------------------


async def mover_process(amqp: str, redis_url: str, out: Path, n: int) -> None:
    """Run a mover until it has released ``n`` jobs; write its latenesses and peak RSS."""
    from sender.bus import Bus
    from sender.connect import redis_client
    from sender.schedule import Mover
    from suppression.schedule import Schedule

    bus = Bus(amqp, retry_tiers=(10,))
    await bus.connect(declare=False)
    redis = redis_client(redis_url, socket_timeout=None, max_connections=64)
    late: list[float] = []
    mover = Mover(Schedule(redis, idempotency_ttl=3 * 86400), bus,
                  on_release=lambda _, s: late.append(s))
    mover.start()
    out.with_suffix(".ready").write_text(str(os.getpid()))
    while not late:  # idle: polling the shards
        await asyncio.sleep(0.01)
    cpu = time.process_time()
    while mover.released < n:
        await asyncio.sleep(0.05)
    await mover.stop()
    out.write_text(json.dumps({"late": late, "hwm": rss(os.getpid(), "VmHWM"),
                               "rss": rss(os.getpid()), "cpu_s": time.process_time() - cpu}))
    await bus.close()
    await redis.aclose()


# --- the run -------------------------------------------------------------------------------


async def schedule_all(redis_url: str, n: int, due_ms: int, spread: float = 0.0) -> float:
    """Make n jobs wait for ``due_ms`` as the pipeline does (with ``spread``, their due times
    evenly over that many seconds from it); seconds it took."""
    from sender.connect import redis_client
    from suppression.schedule import Schedule

    redis = redis_client(redis_url, socket_timeout=None, max_connections=WRITERS)
    schedule = Schedule(redis, idempotency_ttl=3 * 86400)
    window = asyncio.Semaphore(WRITERS)

    async def one(i: int) -> None:
        account, job_id, body = job_body(i)
        due = due_ms + int(spread * 1000 * i / n)
        at = datetime.fromtimestamp(due / 1000).astimezone().isoformat(timespec="milliseconds")
        body = body.replace(b'"set below"', json.dumps(at).encode())
        async with window:
            decision = await schedule.add(account, job_id, due_ms=due, routing_key="email",
                                          body=body)
        assert decision.verdict == "scheduled", decision

    started = time.monotonic()
    for start in range(0, n, 10_000):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 10_000))))
    took = time.monotonic() - started
    await redis.aclose()
    return took


async def arrivals(amqp: str, n: int, timeout: float) -> list[float]:
    """Consume the lane until n jobs arrived: each one's lateness (s)."""
    import aio_pika

    late: list[float] = []
    done = asyncio.Event()
    connection = await aio_pika.connect(amqp)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2000)
        queue = await channel.get_queue("outbox.email")

        async def on(message: Any) -> None:
            late.append(time.time() - int(message.headers["x-outbox-released"]) / 1000)
            if len(late) >= n:
                done.set()

        await queue.consume(on, no_ack=True)
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await connection.close()
    return late


async def run(n: int, lead: float, spread: float) -> dict[str, Any]:
    from sender.bus import Bus

    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    log_dir = LOGS / f"schedule-{stamp}"
    server = RedisServer(log_dir)
    client = server.start()
    client.config_set("appendonly", "yes")
    client.config_set("appendfsync", "everysec")
    vhost = f"bench-schedule-{uuid.uuid4().hex[:8]}"
    amqp = services.add_vhost(PROFILE, vhost)
    out = log_dir / "mover.json"
    child = None
    try:
        bus = Bus(amqp, retry_tiers=(10,))
        await bus.connect(declare=True)
        await bus.close()
        due_ms = int((time.time() + lead) * 1000)
        empty = memory_info(client)
        child = subprocess.Popen([sys.executable, "-m", "benchmarks.schedule", "--mover",
                                  amqp, server.url, str(out), str(n)],
                                 stdout=(log_dir / "mover.log").open("wb"),
                                 stderr=subprocess.STDOUT)
        while not out.with_suffix(".ready").exists():
            assert child.poll() is None, "the mover exited"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        idle_rss = rss(child.pid)
        log(f"scheduling {n:,} jobs due at {datetime.fromtimestamp(due_ms / 1000):%H:%M:%S.%f}")
        took = await schedule_all(server.url, n, due_ms, spread)
        waiting = memory_info(client)
        left = due_ms / 1000 - time.time()
        if left < 2:
            raise SystemExit(f"scheduling took {took:.0f} s, past the due time: raise --lead")
        waiting_rss = [rss(child.pid)]
        log(f"scheduled in {took:.1f} s ({n / took:,.0f} jobs/s); {left:.0f} s until due")
        consumer = asyncio.ensure_future(arrivals(amqp, n, timeout=left + spread + 600))
        while time.time() < due_ms / 1000 - 0.5:
            waiting_rss.append(rss(child.pid))
            await asyncio.sleep(min(1.0, max(0.0, due_ms / 1000 - 0.5 - time.time())))
        lane = await consumer
        child.wait(120)
        mover = json.loads(out.read_text())
        after = memory_info(client)
        version = client.info("server")["redis_version"]
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        client.close()
        stop(server)
        services.management(PROFILE, "DELETE", f"vhosts/{vhost}")
    return {
        "stamp": stamp, "jobs": n, "lead_s": lead, "spread_s": spread, "redis": version,
        "load_average": list(os.getloadavg()),
        "schedule_s": took, "schedule_rate": n / took,
        "used_memory": {"empty": empty["used_memory"], "waiting": waiting["used_memory"],
                        "after": after["used_memory"]},
        "bytes_per_job": (waiting["used_memory"] - empty["used_memory"]) / n,
        "mover_rss": {"idle": idle_rss, "waiting_max": max(waiting_rss),
                      "peak": mover["hwm"], "after": mover["rss"]},
        "lane_lateness": percentiles(lane), "mover_lateness": percentiles(mover["late"]),
        "release_s": max(lane) - min(lane),  # spread: the last lateness is what counts
        "mover_cpu_us_per_job": mover["cpu_s"] / n * 1e6,
    }


def table(r: dict[str, Any]) -> str:
    mib = 1024 * 1024
    um, rs, lane, mv = r["used_memory"], r["mover_rss"], r["lane_lateness"], r["mover_lateness"]
    return "\n".join([
        f"| jobs waiting | {r['jobs']:,} (made to wait in {r['schedule_s']:.1f} s, "
        f"{r['schedule_rate']:,.0f} jobs/s), due "
        + (f"evenly over {r['spread_s']:g} s ({r['jobs'] / r['spread_s']:,.0f} jobs/s)"
           if r.get("spread_s") else "at the same millisecond") + " |",
        f"| Redis used_memory | {um['empty'] / mib:.1f} MiB empty → {um['waiting'] / mib:.1f} "
        f"MiB waiting (+{r['bytes_per_job']:,.0f} B/job) → {um['after'] / mib:.1f} MiB after "
        f"release |",
        f"| mover RSS | {rs['idle'] / mib:.1f} MiB idle, {rs['waiting_max'] / mib:.1f} MiB "
        f"while they wait, peak {rs['peak'] / mib:.1f} MiB while releasing |",
        f"| lateness in the lane | p50 {lane['p50']:.2f} s, p99 {lane['p99']:.2f} s, "
        f"max {lane['max']:.2f} s (min {lane['min']:.3f} s) |",
        f"| lateness at the mover's confirm | p50 {mv['p50']:.2f} s, p99 {mv['p99']:.2f} s, "
        f"max {mv['max']:.2f} s |",
        f"| the mover's CPU | {r['mover_cpu_us_per_job']:,.0f} µs/job (one core: "
        f"{1e6 / r['mover_cpu_us_per_job']:,.0f} jobs/s); load average "
        f"{r['load_average'][0]:.1f} at the end |",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.schedule",
                                description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--lead", type=float, default=90.0,
                   help="seconds from the start to the jobs' due time (default 90)")
    p.add_argument("--spread", type=float, default=0.0, metavar="SECONDS",
                   help="due times evenly over this many seconds (default 0: all at once)")
    p.add_argument("--mover", nargs=4, metavar=("AMQP", "REDIS", "OUT", "N"),
                   help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.mover:
        amqp, redis_url, out, n = a.mover
        asyncio.run(mover_process(amqp, redis_url, Path(out), int(n)))
        return 0
    with Services():
        result = asyncio.run(run(a.jobs, a.lead, a.spread))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"schedule-{result['stamp']}.json"
    path.write_text(json.dumps(result, indent=1))
    print(table(result))
    log(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
