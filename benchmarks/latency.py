"""python -m benchmarks.latency [--delays 0.05,0.2] [--pools 4,16,64] [--seconds 12]

Outbox x1 against a relay with real latency: Postfix's ``smtp-sink`` behind
``benchmarks.latency_proxy``, which delivers each of the relay's replies ``delay`` seconds
late (50 ms: a relay in the same region; 200 ms: across an ocean, or SES's SMTP endpoint from
Hong Kong to us-east-1). For each delay, with the relay offering PIPELINING and without
(``smtp-sink -p``), and for each ``OUTBOX_SMTP_POOL_SIZE`` (``OUTBOX_CONCURRENCY`` and
``OUTBOX_PREFETCH`` twice the pool, at least 64), one throughput run of the email mix
(``benchmarks.workloads``, as workload ``a``: checks, DKIM signing, 1,000 accounts).

Beside each rate, the bounds: ``pool / delay`` (one round trip per message: the issue's
figure) and ``pool / (delay × round trips)``, where a message costs 2 round trips with
PIPELINING (MAIL+RCPT+DATA together, then the content) and 4 without (MAIL, RCPT, DATA, the
content, each answered before the next). Sizing: the pool needed for a rate R is about
``R × delay × round trips``.

Writes benchmarks/results/latency-<timestamp>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.env import ROOT, Services, machine
from benchmarks.runner import Context, log, seed_template_async, throughput_run
from benchmarks.sink import SmtpSink, free_port, wait_listening
from benchmarks.systems import PY, outbox
from benchmarks.workloads import WORKLOADS, Job

RESULTS = Path(__file__).resolve().parent / "results"
ROUND_TRIPS = {True: 2, False: 4}  # per message, with and without PIPELINING


class DelayedSink(SmtpSink):
    """``smtp-sink`` (counted as usual) behind a latency proxy; ``url`` is the proxy's."""

    def __init__(self, log_dir: Path, delay: float, pipelining: bool) -> None:
        super().__init__(log_dir)
        self.delay = delay
        self.pipelining = pipelining
        self.proxy_port = free_port()
        self.proxy: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.proxy_port}"

    @property
    def command(self) -> list[str]:
        cmd = super().command
        return cmd if self.pipelining else [cmd[0], "-p", *cmd[1:]]

    def start(self) -> None:
        super().start()
        err = open(self.log_dir / "latency-proxy.log", "ab")
        self.proxy = subprocess.Popen(
            [PY, "-m", "benchmarks.latency_proxy", "--listen", str(self.proxy_port),
             "--to", str(self.port), "--delay", str(self.delay)],
            cwd=ROOT, stdout=err, stderr=err, stdin=subprocess.DEVNULL,
            start_new_session=True)
        wait_listening(self.proxy_port, self.proxy,
                       "latency proxy did not start (see latency-proxy.log)")

    def stop(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            os.kill(self.proxy.pid, signal.SIGTERM)
            self.proxy.wait(5)
        self.proxy = None
        super().stop()


def jobs_for(pool: int, delay: float, pipelining: bool, seconds: float, cap: int) -> int:
    """Enough jobs for about ``seconds`` at the bound (the valid share is ~0.9)."""
    bound = pool / (delay * ROUND_TRIPS[pipelining])
    return max(200, min(cap, int(bound * seconds / 0.9)))


async def sweep(args: argparse.Namespace, stream_jobs: int, log_dir: Path) -> list[dict[str, Any]]:
    stream = WORKLOADS["a"].stream(stream_jobs)
    seeded = await seed_template_async(stream)
    log(f"seeded {len(stream.consent)} consents, {len(stream.suppressed)} suppressions "
        f"in {seeded:.1f} s")
    rows: list[dict[str, Any]] = []
    system = outbox(1)
    for delay in args.delays:
        for pipelining in (True, False):
            sink = DelayedSink(log_dir, delay, pipelining)
            sink.start()
            try:
                ctx = Context(sink=sink, log_dir=log_dir, stream=stream)
                for pool in args.pools:
                    n = jobs_for(pool, delay, pipelining, args.seconds, stream_jobs)
                    log(f"delay {delay * 1000:.0f} ms, PIPELINING {'on' if pipelining else 'off'}"
                        f", pool {pool}: {n} jobs")
                    res = await throughput_run(ctx, system, n, extra_env={
                        "OUTBOX_SMTP_POOL_SIZE": str(pool),
                        # enough jobs in flight to fill the pool: a job holds its slot for
                        # the whole send, so concurrency below the pool leaves it idle
                        "OUTBOX_CONCURRENCY": str(max(64, 2 * pool)),
                        "OUTBOX_PREFETCH": str(max(64, 2 * pool)),
                        "OUTBOX_SMTP_DOMAIN_CONCURRENCY_DEFAULT": str(max(32, pool))})
                    rt = ROUND_TRIPS[pipelining]
                    row = {"delay_ms": round(delay * 1000), "pipelining": pipelining,
                           "pool": pool, "jobs": n, "complete": res["complete"],
                           "sent_per_s": res["sent_per_s"], "jobs_per_s": res["jobs_per_s"],
                           "bound_one_rtt": round(pool / delay, 1),
                           "bound_rtts": round(pool / (delay * rt), 1),
                           "of_bound": round(res["sent_per_s"] / (pool / (delay * rt)), 2),
                           "cpu_us_per_job": res["cpu_us_per_job"],
                           "machine_cores": res["cpu_cores"].get("busy"),
                           "other_cores": res["cpu_cores"].get("other"), "log": res["log"]}
                    log(f"  {row['sent_per_s']} sent/s (bound {row['bound_rtts']} at {rt} round "
                        f"trips, {row['of_bound']:.0%}; pool/delay {row['bound_one_rtt']})")
                    rows.append(row)
            finally:
                sink.stop()
    return rows


# --- SMS: the Twilio stand-in behind the same proxy -----------------------------------------

SMS_SID, SMS_TOKEN, SMS_FROM = "AC" + "0" * 32, "bench-token", "+15005550006"


def sms_jobs(n: int) -> list[Job]:
    """Transactional SMS to distinct Hong Kong mobile numbers, one account."""
    return [Job(json.dumps({"v": 1, "id": f"bench-sms-{i}", "account_id": "acct_sms",
                            "channel": "sms", "category": "transactional",
                            "to": f"+8529{1000000 + i:07d}",
                            "body": f"Shop: your pick-up code is {i % 10000:04d}."}).encode(),
                "sent") for i in range(n)]


async def sms_run(log_dir: Path, delay: float, rate: float, concurrency: int,
                  seconds: float, label: str) -> dict[str, Any]:
    """One run: ``n`` SMS jobs prefilled, Outbox x1 started against the stand-in (its replies
    ``delay`` late), the rate of Message creates from the first to the last."""
    from benchmarks.env import REDIS_DB, Vhost
    from benchmarks.runner import declare, prefill, prepare_redis
    from benchmarks.systems import Processes
    from outbox.devsinks.twilio_api import TwilioStandIn

    bound = min(rate, concurrency / delay)
    n = max(100, int(bound * seconds))
    stand_in = TwilioStandIn(account_sid=SMS_SID, auth_token=SMS_TOKEN, callback_delay=3600)
    base = await stand_in.start()
    api_port = int(base.rsplit(":", 1)[1])
    proxy_port = free_port()
    proxy = subprocess.Popen([PY, "-m", "benchmarks.latency_proxy", "--listen", str(proxy_port),
                              "--to", str(api_port), "--delay", str(delay)], cwd=ROOT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    system = outbox(1)
    try:
        with Vhost(label) as vh:
            prepare_redis(False).close()
            await declare(vh.url)
            await prefill(vh.url, sms_jobs(n), "sms", queue="outbox.sms")
            procs = Processes(system, log_dir, label)
            env = system.env(vh.url, Services.redis_url(REDIS_DB), "smtp://127.0.0.1:9", {
                "OUTBOX_TWILIO_ACCOUNT_SID": SMS_SID, "OUTBOX_TWILIO_AUTH_TOKEN": SMS_TOKEN,
                "OUTBOX_TWILIO_FROM": SMS_FROM, "OUTBOX_TWILIO_RATE_PER_SENDER": str(rate),
                "OUTBOX_TWILIO_API_BASE": f"http://127.0.0.1:{proxy_port}",
                "OUTBOX_CONCURRENCY": str(concurrency),
                "OUTBOX_PREFETCH": str(max(64, concurrency))})
            procs.start(system.command(vh.url, "", 0), env)
            first = last = None
            seen, changed = 0, time.monotonic()
            try:
                while seen < n and time.monotonic() - changed < 20:
                    await asyncio.sleep(0.01)
                    count = len(stand_in.messages)
                    if count != seen:
                        now = time.monotonic()
                        first = first or now
                        last, seen, changed = now, count, now
            finally:
                procs.stop()
    finally:
        os.kill(proxy.pid, signal.SIGTERM)
        proxy.wait(5)
        await stand_in.close()
    elapsed = (last or 0) - (first or 0)
    rate_seen = (seen - 1) / elapsed if elapsed > 0 else 0.0
    return {"delay_ms": round(delay * 1000), "rate_per_sender": rate,
            "concurrency": concurrency, "jobs": n, "created": seen, "complete": seen == n,
            "sent_per_s": round(rate_seen, 1), "bound": round(bound, 1),
            "of_bound": round(rate_seen / bound, 2) if bound else None, "log": label}


async def sms_sweep(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for k, (rate, concurrency) in enumerate(args.sms):
        label = f"sms-{k}"
        log(f"SMS: delay {args.sms_delay * 1000:.0f} ms, {rate:g}/s per sender, "
            f"OUTBOX_CONCURRENCY {concurrency}")
        row = await sms_run(log_dir, args.sms_delay, rate, concurrency, args.seconds, label)
        log(f"  {row['sent_per_s']} sent/s (bound {row['bound']}, {row['of_bound']})")
        rows.append(row)
    return rows


def sms_table(rows: list[dict[str, Any]]) -> str:
    out = ["| API delay | rate per sender | OUTBOX_CONCURRENCY | sent/s | bound min(rate, "
           "concurrency / delay) | of bound |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['delay_ms']} ms | {r['rate_per_sender']:g}/s | {r['concurrency']} | "
                   f"{r['sent_per_s']:,.1f} | {r['bound']:,.1f} | {r['of_bound']} |")
    return "\n".join(out)


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| delay | PIPELINING | pool | sent/s | bound pool/delay | bound at 2 or 4 round "
           "trips | of that bound | CPU µs/job | other cores |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['delay_ms']} ms | {'on' if r['pipelining'] else 'off'} | {r['pool']} | "
                   f"{r['sent_per_s']:,.1f} | {r['bound_one_rtt']:,.0f} | {r['bound_rtts']:,.1f} | "
                   f"{r['of_bound']:.2f} | {r['cpu_us_per_job']:,.0f} | {r['other_cores']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--delays", default="0.05,0.2", help="seconds, comma-separated")
    p.add_argument("--pools", default="4,16,64", help="OUTBOX_SMTP_POOL_SIZE values")
    p.add_argument("--seconds", type=float, default=12.0, help="target length of each run")
    p.add_argument("--max-jobs", type=int, default=8000, help="jobs per run at most")
    p.add_argument("--sms", default="10:64,100:64,400:64,400:128",
                   help="SMS runs, RATE:CONCURRENCY pairs (OUTBOX_TWILIO_RATE_PER_SENDER, "
                        "OUTBOX_CONCURRENCY); empty: none")
    p.add_argument("--sms-delay", type=float, default=0.3, help="the API's answer time")
    p.add_argument("--no-email", action="store_true", help="only the SMS runs")
    a = p.parse_args(argv)
    a.delays = [float(x) for x in a.delays.split(",")]
    a.pools = [int(x) for x in a.pools.split(",")]
    a.sms = [(float(r), int(c)) for r, c in (x.split(":") for x in a.sms.split(",") if x)]
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    log_dir = ROOT / "var" / "bench" / f"latency-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"id": stamp, "command": "python -m benchmarks.latency "
                           + " ".join(argv if argv is not None else sys.argv[1:]),
                           "machine": machine()}
    with Services(cluster=False):
        out["rows"] = [] if a.no_email else asyncio.run(sweep(a, a.max_jobs, log_dir))
        out["sms"] = asyncio.run(sms_sweep(a, log_dir)) if a.sms else []
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"latency-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    log(f"results: {path.relative_to(ROOT)}")
    print(table(out["rows"]))
    print(sms_table(out["sms"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
