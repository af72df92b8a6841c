"""One benchmark session: throughput runs, open-loop latency runs, the load curve, the profile."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import redis as redis_sync

from benchmarks import measure
from benchmarks.env import REDIS_DB, TEMPLATE_DB, Services, Vhost
from benchmarks.sink import SmtpSink, Window
from benchmarks.systems import Processes, System
from benchmarks.workloads import Job, Stream

JOBS_EXCHANGE = "outbox.jobs"     # README contracts
JOB_QUEUE = "outbox.email"
STATUS_QUEUE = "outbox.status"
STALL_SECONDS = 15.0
WARMUP_SECONDS = 1.0  # open loop: published at the rate first, not counted in the latency


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


@dataclass
class Context:
    sink: SmtpSink
    log_dir: Path
    stream: Stream
    seq: int = 0
    notes: list[str] = field(default_factory=list)
    services: dict[str, list[int]] = field(default_factory=dict)

    def service_pids(self, system: System) -> list[int]:
        """The pids of what serves the run: RabbitMQ, the Redis (or the cluster's nodes) and
        the sink (the listeners on their ports, looked up once)."""
        from benchmarks.env import PROFILE

        key = "cluster" if system.cluster else "redis"
        if key not in self.services:
            ports = [PROFILE.amqp_port, *(PROFILE.cluster_ports if system.cluster
                                          else (PROFILE.redis_port,))]
            pids = [measure.listener_pid(port) for port in ports]
            self.services[key] = [p for p in pids if p]
        sink = [self.sink.proc.pid] if self.sink.proc else []
        return self.services[key] + sink

    def label(self, system: System, what: str) -> str:
        self.seq += 1
        cluster = "-cluster" if system.cluster else ""
        return f"{self.seq:03d}-{system.kind}{system.processes}{cluster}-{what}"


# --- Redis and RabbitMQ preparation ---------------------------------------------------------


def seed_template(stream: Stream) -> float:
    """Seed consent and suppression into the template db once (Outbox's own store API)."""
    return asyncio.run(seed_template_async(stream))


async def seed_template_async(stream: Stream) -> float:
    """:func:`seed_template` from inside the session's event loop (the blast reseeds)."""
    r = redis_sync.Redis.from_url(Services.redis_url(TEMPLATE_DB))
    r.flushdb()
    r.close()
    t = time.perf_counter()
    await stream.seed(Services.redis_url(TEMPLATE_DB))
    return time.perf_counter() - t


@dataclass
class RedisSide:
    """The Redis a system is given (``url``) and the servers whose statistics count
    (``nodes``: the one Redis, or every primary of the cluster)."""

    url: str
    nodes: list[redis_sync.Redis]

    def snapshot(self) -> dict[str, Any]:
        return measure.redis_snapshot(*self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


async def prepare(ctx: Context, system: System) -> RedisSide:
    """The run's Redis: db 0 flushed (and the seed copied in when the system checks), or on
    the cluster the previous run's ``outbox:*`` keys unlinked and the stream seeded again."""
    if not system.cluster:
        return RedisSide(Services.redis_url(REDIS_DB), [prepare_redis(system.checks)])
    nodes = Services.cluster_primaries()
    removed = clear_cluster(nodes)
    t = time.perf_counter()
    await ctx.stream.seed(Services.cluster_url(), cluster=True)
    log(f"  cluster: {removed} keys unlinked, seeded in {time.perf_counter() - t:.1f} s")
    return RedisSide(Services.cluster_url(), nodes)


def clear_cluster(nodes: list[redis_sync.Redis]) -> int:
    """UNLINK every ``outbox:*`` key, node by node (SCAN on a node lists its own keys; one
    key per UNLINK: several keys of different slots are refused even on one node). Only the
    bench profile's cluster, which belongs to the benchmark session."""
    removed = 0
    for node in nodes:
        pipe = node.pipeline(transaction=False)
        for key in node.scan_iter(match="outbox:*", count=2000):
            pipe.unlink(key)
            removed += 1
            if len(pipe) >= 2000:
                pipe.execute()
        pipe.execute()
    return removed


def prepare_redis(with_seed: bool) -> redis_sync.Redis:
    """Flush the run's db; copy the seeded template into it when the system uses it."""
    r = redis_sync.Redis.from_url(Services.redis_url(REDIS_DB))
    r.flushdb()
    if with_seed:
        src = redis_sync.Redis.from_url(Services.redis_url(TEMPLATE_DB))
        pipe = src.pipeline(transaction=False)
        for i, key in enumerate(src.scan_iter(count=2000)):
            pipe.copy(key, key, destination_db=str(REDIS_DB))  # redis-py types it str
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        src.close()
    return r


async def declare(url: str) -> None:
    """Declare Outbox's topology with its own CRM-side client (a public contract)."""
    from sender.client import Outbox

    ob = Outbox(url)
    await ob.connect()
    await ob.close()


def _message(body: bytes) -> aio_pika.Message:
    return aio_pika.Message(body, content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def prefill(url: str, jobs: list[Job], routing_key: str, queue: str = JOB_QUEUE,
                  celery: bool = False) -> float:
    """Publish every job with publisher confirms (512 in flight) and check ``queue`` holds them
    all; returns seconds taken. ``celery``: each job as a Celery task message calling
    ``outbox.send(job)`` (``benchmarks.celery_peer``), on the same exchange and queue."""
    t = time.perf_counter()
    conn = await aio_pika.connect(url)
    ch = await conn.channel(publisher_confirms=True)
    ex = await ch.get_exchange(JOBS_EXCHANGE, ensure=False)
    wrap = _message
    if celery:
        from benchmarks.celery_peer import task_message as wrap
    now = time.time()
    for i in range(0, len(jobs), 512):
        await asyncio.gather(*(ex.publish(wrap(j.stamped(now)), routing_key)
                               for j in jobs[i:i + 512]))
    q = await ch.declare_queue(queue, passive=True)
    count = q.declaration_result.message_count
    await conn.close()
    if count != len(jobs):
        raise RuntimeError(f"prefill: {count} messages in {queue}, expected {len(jobs)}")
    return time.perf_counter() - t


async def queue_state(url: str, name: str = JOB_QUEUE) -> tuple[int, int]:
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    q = await ch.declare_queue(name, passive=True)
    res = q.declaration_result
    await conn.close()
    # a passive declare's Declare-Ok always carries both counts; aiormq types them Optional
    return res.message_count or 0, res.consumer_count or 0


# --- waiting -------------------------------------------------------------------------------


async def wait_done(url: str, window: Window, expected: int, procs: Processes,
                    timeout: float) -> bool:
    """Until the sink accepted ``expected`` messages; False on a stall or the timeout."""
    deadline = time.monotonic() + timeout
    last, changed = -1, time.monotonic()
    while window.count < expected:
        now = time.monotonic()
        if not procs.alive():
            raise RuntimeError(f"{procs.system.name} exited early (see {procs.log_dir})")
        if window.count != last:
            last, changed = window.count, now
        elif now - changed > STALL_SECONDS:
            ready, _ = await queue_state(url)
            log(f"  stalled at {window.count}/{expected} accepted ({ready} jobs still queued)")
            return False
        if now > deadline:
            log(f"  timeout at {window.count}/{expected} accepted")
            return False
        await asyncio.sleep(0.05)
    return True


async def wait_consumers(url: str, n: int, procs: Processes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _, consumers = await queue_state(url)
        if consumers >= n:
            return
        if not procs.alive():
            raise RuntimeError(f"{procs.system.name} exited early (see {procs.log_dir})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{procs.system.name}: no consumer after {timeout} s")
        await asyncio.sleep(0.2)


# --- one throughput run --------------------------------------------------------------------


async def throughput_run(ctx: Context, system: System, n: int,
                         wrap: list[str] | None = None,
                         extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Prefill n jobs, start the system, measure from the first to the last accepted message.
    CPU and peak RSS cover every process of the system: the worker, or Outbox's supervisor
    and its children (their pids read at the first accepted message and again at the end)."""
    jobs = ctx.stream.jobs[:n]
    expected = ctx.stream.expected(n, system.checks)
    label = ctx.label(system, "tput")
    with Vhost(label) as vh:
        rs = await prepare(ctx, system)
        await declare(vh.url)
        fill = await prefill(vh.url, jobs, ctx.stream.routing_key,
                             celery=system.kind == "celery")
        before = rs.snapshot()
        procs = Processes(system, ctx.log_dir, label)
        cpu0: dict[int, float] = {}
        split0: dict[str, float] = {}

        def at_first() -> None:
            for pid in procs.pids:
                try:
                    cpu0[pid] = measure.cpu_seconds(pid)
                except OSError:
                    pass
            split0.update(_cpu_split(ctx, system, procs))

        window = ctx.sink.mark(on_first=at_first)
        procs.start(system.command(vh.url, rs.url, ctx.sink.port),
                    system.env(vh.url, rs.url, ctx.sink.url, extra_env), wrap=wrap)
        try:
            complete = await wait_done(vh.url, window, expected, procs,
                                       timeout=max(120, n / 20))
            cpu1, rss = _cpu_and_rss(procs.pids)
            cores = _cpu_used(split0, _cpu_split(ctx, system, procs)) if split0 else {}
            after = rs.snapshot()
        finally:
            codes = procs.stop()
        errors = procs.errors()
        if errors:
            log(f"  {errors} error records in {label}-*.log")
        rs.close()
    elapsed = (window.last or 0) - (window.first or 0)
    accepted = window.count
    sent_rate = (accepted - 1) / elapsed if elapsed > 0 and accepted > 1 else 0.0
    # every job (refused and invalid ones too) is work: jobs/s scales the sink's rate
    jobs_rate = sent_rate * n / expected if expected else 0.0
    # a pid first seen at the end (a restarted child) counts whole; one gone by the end is lost
    cpu = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1)
    return {
        "system": system.name, "jobs": n, "expected_sent": expected, "accepted": accepted,
        "complete": complete, "prefill_s": round(fill, 2), "window_s": round(elapsed, 3),
        "sent_per_s": round(sent_rate, 1), "jobs_per_s": round(jobs_rate, 1),
        "cpu_us_per_job": round(cpu / n * 1e6, 1) if n else None,
        "cpu_s": round(cpu, 2), "processes": len(cpu1),
        "pids_at_first": sorted(cpu0), "pids_at_end": sorted(cpu1),
        "peak_rss_mib": round(max(rss), 1), "peak_rss_mib_total": round(sum(rss), 1),
        "redis": measure.redis_delta(before, after, n), "exit_codes": codes, "log": label,
        "log_errors": errors,
        # cores in use over the window, by whom: is the machine (2 cores) the limit?
        "cpu_cores": cores,
    }


def _cpu_and_rss(pids: list[int]) -> tuple[dict[int, float], list[float]]:
    """CPU seconds by pid and peak RSS (MiB) of each of ``pids`` still running."""
    cpu: dict[int, float] = {}
    rss: list[float] = []
    for pid in pids:
        try:
            cpu[pid] = measure.cpu_seconds(pid)
            rss.append(measure.peak_rss_mib(pid))
        except OSError:
            pass
    return cpu, rss or [0.0]


# --- one open-loop run ----------------------------------------------------------------------


async def open_loop_run(ctx: Context, system: System, rate: float,
                        duration: float, warmup: float = WARMUP_SECONDS) -> dict[str, Any]:
    """Publish at a fixed rate (open loop) while the system runs; latency of each accepted job
    from its enqueue time (``metadata.t0``), not counting the jobs of the first ``warmup``
    seconds (published at the same rate). Where the machine's CPU went meanwhile: the system,
    the services (RabbitMQ, Redis, the sink), the harness, and everything else."""
    n = min(len(ctx.stream.jobs), max(1, int(rate * (duration + warmup))))
    jobs = ctx.stream.jobs[:n]
    expected = ctx.stream.expected(n, system.checks)
    label = ctx.label(system, f"load{int(rate)}")
    lat_file = str(ctx.log_dir / f"{label}-latency.json") if system.kind != "outbox" else None
    pub: dict[str, Any] = {}
    with Vhost(label) as vh:
        rs = await prepare(ctx, system)
        await declare(vh.url)
        procs = Processes(system, ctx.log_dir, label)
        procs.start(system.command(vh.url, rs.url, ctx.sink.port, lat_file),
                    system.env(vh.url, rs.url, ctx.sink.url))
        try:
            await wait_consumers(vh.url, system.processes, procs)
            await asyncio.sleep(1.0)
            window = ctx.sink.mark()
            cpu0 = _cpu_split(ctx, system, procs)
            sampler = measure.MachineSampler()
            sampling = asyncio.create_task(sampler.run())
            try:
                published_s = await publish_at_rate(vh.url, jobs, rate,
                                                    ctx.stream.routing_key, pub)
                complete = await wait_done(vh.url, window, expected, procs,
                                           timeout=max(60, n / 50))
            finally:
                sampling.cancel()
            cpu = _cpu_used(cpu0, _cpu_split(ctx, system, procs))
            if system.kind == "outbox":
                timed = await sent_latencies(vh.url, expected)
        finally:
            procs.stop()
        rs.close()
    if system.kind != "outbox":
        timed = [(t0, lat) for t0, lat in json.loads(Path(lat_file).read_text())] \
            if lat_file and Path(lat_file).exists() else []
    measured_from = pub.get("t_start", 0.0) + warmup
    kept = [(t0, lat) for t0, lat in timed if t0 >= measured_from]
    latencies = [lat for _, lat in kept]
    everything = [lat for _, lat in timed]
    elapsed = (window.last or 0) - (window.first or 0)
    p50 = measure.percentile(latencies, 50) or 0.0
    episodes = [{"at_s": round(a - measured_from, 2), "jobs": k, "worst_ms": _ms(w),
                 **sampler.during(a, b)}
                for a, b, k, w in measure.stalls(kept, max(0.05, 3 * p50))]
    Path(ctx.log_dir / f"{label}-timed.json").write_text(json.dumps(
        {"measured_from": measured_from, "timed": timed, "machine": sampler.samples}))
    return {
        "system": system.name, "offered_jobs_per_s": round(rate, 1), "jobs": n,
        "warmup_s": warmup, "publish_s": round(published_s, 2), "expected_sent": expected,
        "accepted": window.count, "complete": complete,
        "achieved_jobs_per_s": round((window.count - 1) / elapsed * n / expected, 1)
        if elapsed > 0 and expected else None,
        "latency_samples": len(latencies),
        "p50_ms": _ms(measure.percentile(latencies, 50)),
        "p90_ms": _ms(measure.percentile(latencies, 90)),
        "p99_ms": _ms(measure.percentile(latencies, 99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "p99_with_warmup_ms": _ms(measure.percentile(everything, 99)),
        "publisher": pub, "cpu_cores": cpu, "log": label,
        # the tail as episodes (jobs slower than max(50 ms, 3 x p50), enqueued close
        # together) with the machine's worst sample while each lasted
        "stalls": episodes[:20],
    }


def _cpu_split(ctx: Context, system: System, procs: Processes) -> dict[str, float]:
    busy, _ = measure.machine_cpu()
    return {"wall": time.monotonic(), "busy": busy,
            "system": measure.cpu_of(procs.pids),
            "services": measure.cpu_of(ctx.service_pids(system)),
            "harness": measure.cpu_of([os.getpid()])}


def _cpu_used(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Cores used between two samples, by whom; ``other``: the rest of the machine (other
    people's work: it takes the cores the system under test would use)."""
    wall = max(1e-9, b["wall"] - a["wall"])
    used = {k: (b[k] - a[k]) / wall for k in ("busy", "system", "services", "harness")}
    used["other"] = used["busy"] - used["system"] - used["services"] - used["harness"]
    return {k: round(v, 2) for k, v in used.items()}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


async def publish_at_rate(url: str, jobs: list[Job], rate: float, routing_key: str,
                          stats: dict[str, Any] | None = None) -> float:
    """Open loop: job i is published at start + i/rate, stamped with the time it is sent,
    whatever the consumer does (no publisher confirms: the load generator must not slow down
    with the broker's confirm latency; the queue's count is checked by the sink total). A late
    loop catches up at once (the schedule is absolute); how late each job went out and the
    largest burst are put in ``stats``."""
    conn = await aio_pika.connect(url)
    ch = await conn.channel(publisher_confirms=False)
    ex = await ch.get_exchange(JOBS_EXCHANGE, ensure=False)
    late: list[float] = []
    burst = 0
    start, wall = time.monotonic(), time.time()
    i = 0
    while i < len(jobs):
        now = time.monotonic()
        due = min(len(jobs), int((now - start) * rate) + 1)
        burst = max(burst, due - i)
        while i < due:
            late.append(time.monotonic() - start - i / rate)
            await ex.publish(_message(jobs[i].stamped(time.time())), routing_key)
            i += 1
        if i < len(jobs):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
    took = time.monotonic() - start
    await conn.close()
    if stats is not None:
        stats.update(t_start=wall, late_p50_ms=_ms(measure.percentile(late, 50)),
                     late_p99_ms=_ms(measure.percentile(late, 99)),
                     late_max_ms=_ms(max(late) if late else None), max_burst=burst)
    return took


async def sent_events(url: str, expected: int) -> dict[str, dict[str, Any]]:
    """Every ``sent`` event in ``outbox.status`` by job id, with ``_at`` (its ``at`` as epoch
    seconds), read after the run (so the reading does not compete for CPU) until
    ``expected`` jobs are seen or 3 s pass without an event. Consumed (no_ack): unacked with a
    prefetch of 2,000, as it once was, the reading stopped at the first 2,000 events (the
    latency of a 10 s run at 500 jobs/s covered its first 4 s only)."""
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=2000)
    q = await ch.declare_queue(STATUS_QUEUE, passive=True)
    out: dict[str, dict[str, Any]] = {}
    idle_since = time.monotonic()
    async with q.iterator(no_ack=True) as it:
        while len(out) < expected and time.monotonic() - idle_since < 3:
            try:
                msg = await asyncio.wait_for(it.__anext__(), 1.0)
            except TimeoutError:
                continue
            except StopAsyncIteration:
                break
            idle_since = time.monotonic()
            ev = json.loads(msg.body)
            if ev.get("status") == "sent":
                ev["_at"] = datetime.fromisoformat(ev["at"].replace("Z", "+00:00")).timestamp()
                out[str(ev.get("id"))] = ev
    await conn.close()
    return out


async def sent_latencies(url: str, expected: int) -> list[tuple[float, float]]:
    """``(metadata.t0, at − metadata.t0)`` of each sent job of an open-loop run."""
    out = []
    for ev in (await sent_events(url, expected)).values():
        t0 = (ev.get("metadata") or {}).get("t0")
        if isinstance(t0, (int, float)):
            out.append((t0, ev["_at"] - t0))
    return out


# --- profile ---------------------------------------------------------------------------------


async def profile_run(ctx: Context, system: System, n: int, out: Path,
                      rate_hz: int = 250) -> dict[str, Any]:
    """The throughput run again, with the worker started under ``py-spy record``
    (raw collapsed stacks, idle frames excluded, GIL not required: ``--nonblocking``)."""
    spy = str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        spy = "py-spy"
    wrap = [spy, "record", "--nonblocking", "-r", str(rate_hz), "-f", "raw", "-o", str(out),
            "--"]
    result = await throughput_run(ctx, system, n, wrap=wrap)
    for _ in range(100):  # py-spy writes its file after the worker exits
        if out.exists():
            break
        await asyncio.sleep(0.1)
    return result


def env_note() -> str:
    return f"PID {os.getpid()}"
