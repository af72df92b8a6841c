"""One Outbox worker in this process over a pre-filled queue, for profiling the worker's own
code: CPU µs per job (this process only) and, with ``--cprofile``, the top functions.

    .venv/bin/python -m benchmarks.inproc --jobs 5000 [--cprofile 25]

Uses the bench services (scripts/services.py start bench), a fresh vhost, a flushed Redis db
seeded like workload (a), and Postfix's smtp-sink. Not a throughput figure (the harness is),
a before/after gauge for changes to the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import subprocess
import time
from typing import Any

from benchmarks.env import Services, Vhost
from benchmarks.runner import declare, prefill
from benchmarks.sink import SMTP_SINK, free_port
from benchmarks.workloads import email_mix
from suppression.coalesce import Coalescer


async def _run(n: int, profiler: cProfile.Profile | None, gc_tuned: bool = True
               ) -> dict[str, Any]:
    from config import load_settings
    from sender.service import make_redis, started_worker, tune_gc

    stream = email_mix(n)
    port = free_port()
    sink = subprocess.Popen([SMTP_SINK, "-u", "root", "-m", "512", f"127.0.0.1:{port}", "1024"])
    with Vhost("inproc") as vhost:
        redis_url = Services.redis_url(2)
        extra = {k[7:].lower(): v for k, v in os.environ.items() if k.startswith("INPROC_")}
        settings = load_settings(amqp_url=vhost.url, redis_url=redis_url, **extra,
                                 smtp_url=f"smtp://127.0.0.1:{port}")
        redis = make_redis(settings)
        await redis.flushdb()
        await stream.seed(redis_url)
        await declare(vhost.url)
        await prefill(vhost.url, stream.jobs[:n], "email")
        def done(worker: Any) -> float:
            return float(sum(s.value for m in worker.metrics.jobs.collect() for s in m.samples
                             if s.name.endswith("_total")))

        await redis.aclose()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        times0 = os.times()
        if profiler:
            profiler.enable()
        rss: list[int] = []
        async with started_worker(settings) as worker:
            if gc_tuned:  # as the worker process does (sender.service.run_worker)
                tune_gc()
            while done(worker) < n:
                await asyncio.sleep(0.05)
                if done(worker) >= (len(rss) + 1) * n / 10:
                    rss.append(_rss_kib())
            if profiler:
                profiler.disable()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            times1 = os.times()
            kernel = times1.system - times0.system
            statuses = {s.labels["status"]: int(s.value)
                        for m in worker.metrics.jobs.collect()
                        for s in m.samples if s.name.endswith("_total")}
            send = worker.pipeline.gate.send
            batching = ({"redis_round_trips": send.round_trips,
                         "jobs_per_round_trip": round(send.calls / max(send.round_trips, 1), 1)}
                        if isinstance(send, Coalescer) else {})
            acks = worker.settle.acks
            batching["ack_frames_per_job"] = round(acks.frames / max(acks.acked, 1), 3)
            retries = {s.labels["tier"]: int(s.value) for m in worker.metrics.retries.collect()
                       for s in m.samples if s.name.endswith("_total")}
    sink.terminate()
    sink.wait()
    return {"jobs": n, "cpu_us_per_job": round(cpu / n * 1e6),
            "of_which_kernel_us": round(kernel / n * 1e6), "jobs_per_s": round(n / wall),
            "statuses": statuses, "retries": retries, **batching,
            "rss_mib_each_tenth": [round(r / 1024, 1) for r in rss]}


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--no-tune-gc", action="store_true",
                   help="keep Python's garbage-collector defaults (the worker tunes them)")
    p.add_argument("--cprofile", type=int, default=0, metavar="N",
                   help="print the N functions with the most own time")
    args = p.parse_args()
    import uvloop

    profiler = cProfile.Profile() if args.cprofile else None
    with Services():
        result = uvloop.run(_run(args.jobs, profiler, not args.no_tune_gc))
    print(result)
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.cprofile)
        print(out.getvalue())


if __name__ == "__main__":
    main()
