"""python -m benchmarks.memory [--jobs 5000] [--before-src DIR] [--delivered] [--env NAME=VALUE]

Redis memory per job, by kind of record, measured on real jobs: the email mix
(``benchmarks.workloads.email_mix``) published to a vhost of its own, consumed by the real
worker (``python -m outbox worker``) sending to ``smtp-sink``, against a throwaway
``redis-server`` (no persistence, a free loopback port, started and stopped by PID) that holds
nothing else, so its ``INFO memory`` delta is the run's alone.

For each system (``before``: the worker of ``--before-src``, e.g. ``git archive main | tar -x -C
DIR``; ``after``: this tree, with ``--env`` settings), in the same session:

1. a fresh redis-server; the stream's seed (consents, suppressions, account settings) written
   with Outbox's store API; ``INFO memory`` and every key's ``MEMORY USAGE`` (``SAMPLES 0``:
   exact) read, grouped by :func:`suppression.keys.kind_of`;
2. the jobs prefilled, the worker started, waited for until the sink accepted every message
   that should be sent (with ``--delivered``, then a provider's ``delivered`` report for each
   sent job published to ``outbox.events`` and waited for until every job is ``delivered``),
   stopped with SIGTERM (it drains: every post-send write is done);
3. ``INFO memory`` and ``MEMORY USAGE`` again: the deltas divided by the number of jobs, per
   kind, with each kind's key count, encodings and TTL (of one key; the retention applied);
   and the sizing: bytes per job of each per-job kind with every overhead in
   (:func:`per_job_bytes`), and GB per million jobs a day at the TTLs measured.

``--show FILE...`` prints the table of saved results again.

Writes ``benchmarks/results/memory-<stamp>.json`` and prints the table recorded in
benchmarks/README.md ("Redis memory per job").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis as redis_sync

from benchmarks.env import ROOT, services
from benchmarks.runner import declare, log, prefill, queue_state, wait_done
from benchmarks.sink import SmtpSink, free_port
from benchmarks.systems import Processes, System
from benchmarks.workloads import Job, Stream, email_mix
from suppression import keys

RESULTS = Path(__file__).resolve().parent / "results"
#: the records a job leaves for its retention (the rest are per account or seeded)
PER_JOB = ("job", "timeline", "history", "global_history")
#: records a job leaves that are kept for a time of their own (a provider report's marker)
PER_REPORT = ("event",)


class RedisServer:
    """A redis-server of its own on a free loopback port: no RDB, no AOF, its directory a
    temporary one; stopped by its PID."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix="outbox-mem-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> redis_sync.Redis:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"redis-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [services.REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis_sync.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return client
            except redis_sync.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"redis-server on :{self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


@dataclass
class KindStats:
    """Keys of one kind: how many, their MEMORY USAGE, encodings, and one key's TTL."""

    keys: int = 0
    bytes: int = 0
    encodings: Counter[str] = field(default_factory=Counter)
    ttl: int | None = None
    sample: str = ""  # one key of the kind


def by_kind(client: redis_sync.Redis) -> dict[str, KindStats]:
    """Every key's exact MEMORY USAGE, encoding and (first seen) TTL, grouped by kind."""
    out: dict[str, KindStats] = {}
    names = [k.decode() for k in client.scan_iter(count=5000)]
    for i in range(0, len(names), 1000):
        chunk = names[i:i + 1000]
        pipe = client.pipeline(transaction=False)
        for name in chunk:
            pipe.memory_usage(name, samples=0)
            pipe.object("encoding", name)
            pipe.ttl(name)
        replies = pipe.execute()
        for j, name in enumerate(chunk):
            usage, encoding, ttl = replies[3 * j:3 * j + 3]
            stats = out.setdefault(keys.kind_of(name), KindStats())
            stats.keys += 1
            stats.bytes += int(usage or 0)
            stats.encodings[encoding.decode() if isinstance(encoding, bytes)
                            else str(encoding)] += 1
            if stats.ttl is None and ttl is not None and ttl >= 0:
                stats.ttl = int(ttl)
                stats.sample = name
    return out


def content(client: redis_sync.Redis, key: str) -> Any:
    """A key's content, readable (the report shows one record of each kind)."""
    kind = client.type(key).decode()
    value: Any = {"hash": lambda: client.hgetall(key), "list": lambda: client.lrange(key, 0, -1),
                  "zset": lambda: client.zrange(key, 0, -1, withscores=True),
                  "string": lambda: client.get(key)}.get(kind, lambda: kind)()
    if isinstance(value, dict):
        value = {k.decode(errors="replace"): v for k, v in value.items()}
    return json.loads(json.dumps(value, default=lambda b: b.decode(errors="replace")))


def memory_info(client: redis_sync.Redis) -> dict[str, int]:
    """INFO memory's totals, and MEMORY STATS' hash tables of db 0 (the keyspace's and the
    expiries': part of used_memory, in no key's MEMORY USAGE)."""
    info = client.info("memory")
    out = {k: int(info[k]) for k in ("used_memory", "used_memory_dataset",
                                     "used_memory_overhead", "used_memory_scripts")}
    tables = client.memory_stats().get("db.0") or {}
    for name in ("overhead.hashtable.main", "overhead.hashtable.expires"):
        out[name] = int(tables.get(name, 0))
    return out


def with_metadata(stream: Stream, size: int) -> Stream:
    """The stream with each job's ``metadata`` made about ``size`` bytes of JSON (a field
    ``ref`` added; a CRM's ids and tags), as the job hash keeps it."""
    if size <= 0:
        return stream
    for i, job in enumerate(stream.jobs):
        if job.valid:
            pad = '"ref": "' + "r" * max(0, size - 52) + '", '
            body = job.body.replace(b'"metadata": {', b'"metadata": {' + pad.encode(), 1)
            stream.jobs[i] = Job(body, job.expect)
    return stream


def statuses(client: redis_sync.Redis) -> Counter[str]:
    """The jobs' statuses (field ``st`` of every job hash)."""
    names = [k for k in client.scan_iter(match="outbox:{acct:*}:job:*", count=5000)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hget(name, "st")
    return Counter((v or b"").decode() for v in pipe.execute())


async def report_delivered(amqp: str, stream: Stream, n: int, client: redis_sync.Redis,
                           timeout: float) -> int:
    """What a provider's webhook makes of each sent job: a ``delivered`` event in
    ``outbox.events`` (as the webhook server publishes it), applied by the worker; waits
    until every sent job is ``delivered``."""
    import aio_pika

    from sender.provider_events import ProviderEvent
    from sender.topology import EVENTS_QUEUE

    sent = [json.loads(j.body) for j in stream.jobs[:n] if j.expect == "sent"]
    conn = await aio_pika.connect(amqp)
    channel = await conn.channel(publisher_confirms=True)
    for i in range(0, len(sent), 256):
        await asyncio.gather(*(channel.default_exchange.publish(aio_pika.Message(
            ProviderEvent(provider="ses", type="delivered", channel="email",
                          recipient=job["to"], provider_message_id=f"ses-{job['id']}",
                          message_id=None, job_id=job["id"], account_id=job["account_id"],
                          kind=None, reason="delivered", diagnostic="smtp; 250 2.0.0 OK",
                          at=datetime.now().astimezone().isoformat(),
                          event_id=uuid.uuid4().hex).to_json(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), EVENTS_QUEUE)
            for job in sent[i:i + 256]))
    await conn.close()
    deadline = time.monotonic() + timeout
    while statuses(client)["delivered"] < len(sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return statuses(client)["delivered"]


async def run_system(label: str, system: System, n: int, sink: SmtpSink, log_dir: Path,
                     broker: services.Profile, extra_env: dict[str, str],
                     metadata_bytes: int = 0, delivered: bool = False) -> dict[str, Any]:
    """One system on a fresh Redis: seed, measure, run n jobs, measure again."""
    stream = with_metadata(email_mix(n), metadata_bytes)
    expected = stream.expected(n, system.checks)
    server = RedisServer(log_dir)
    client = server.start()
    vhost = f"bench-memory-{label}-{uuid.uuid4().hex[:8]}"
    services.add_vhost(broker, vhost)
    amqp = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/{vhost}"
    try:
        config = {k: client.config_get(k)[k] for k in (
            "hash-max-listpack-entries", "hash-max-listpack-value",
            "zset-max-listpack-entries", "zset-max-listpack-value", "list-max-listpack-size")}
        empty = memory_info(client)
        await stream.seed(server.url)
        seeded, seeded_kinds = memory_info(client), by_kind(client)
        await declare(amqp)
        await prefill(amqp, stream.jobs, stream.routing_key)
        procs = Processes(system, log_dir, f"memory-{label}")
        window = sink.mark()
        started = time.monotonic()
        procs.start(system.command(amqp, server.url, sink.port),
                    system.env(amqp, server.url, sink.url, extra_env))
        reported = 0
        try:
            complete = await wait_done(amqp, window, expected, procs, timeout=max(120, n / 20))
            if delivered and complete:
                reported = await report_delivered(amqp, stream, n, client, max(120, n / 20))
                complete = reported == expected
        finally:
            codes = procs.stop()
        took = time.monotonic() - started
        left, _ = await queue_state(amqp)
        after, after_kinds = memory_info(client), by_kind(client)
        tally = statuses(client)
        samples = {kind: {"key": k.sample, "value": content(client, k.sample)}
                   for kind, k in after_kinds.items() if kind in PER_JOB and k.sample}
        version = client.info("server")["redis_version"]
    finally:
        client.close()
        server.stop()
        try:
            services.management(broker, "DELETE", f"vhosts/{vhost}")
        except OSError as e:
            log(f"  (could not delete vhost {vhost}: {e})")
    kinds = {}
    for kind in sorted(set(after_kinds) | set(seeded_kinds)):
        a, s = after_kinds.get(kind, KindStats()), seeded_kinds.get(kind, KindStats())
        if a.keys == s.keys and a.bytes == s.bytes:
            continue
        kinds[kind] = {"keys": a.keys - s.keys, "bytes": a.bytes - s.bytes,
                       "bytes_per_job": round((a.bytes - s.bytes) / n, 1),
                       "encodings": dict(a.encodings), "ttl_s": a.ttl}
    used = after["used_memory"] - seeded["used_memory"]
    return {
        "label": label, "system": system.name, "src": system.src or str(ROOT),
        "env": extra_env, "jobs": n, "expected_sent": expected, "accepted": window.count,
        "complete": complete and left == 0, "left_in_queue": left, "exit_codes": codes,
        "seconds": round(took, 1), "redis_version": version, "config": config,
        "memory": {"empty": empty, "seeded": seeded, "after": after},
        "used_memory_per_job": round(used / n, 1),
        "dataset_per_job": round((after["used_memory_dataset"]
                                  - seeded["used_memory_dataset"]) / n, 1),
        "memory_usage_per_job": round(sum(k["bytes"] for k in kinds.values()) / n, 1),
        "per_job_kinds_per_job": round(sum(kinds[k]["bytes"] for k in PER_JOB
                                           if k in kinds) / n, 1),
        "metadata_bytes": metadata_bytes, "delivered_reports": reported,
        "statuses": dict(tally),
        "keyspace_tables_per_job": round(sum(
            after[t] - seeded[t] for t in ("overhead.hashtable.main",
                                           "overhead.hashtable.expires")) / n, 1),
        "kinds": kinds, "samples": samples,
    }


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The sizing figures of one run (added to its result)."""
    return {"per_job_bytes": per_job_bytes(result),
            "gb_per_million_jobs_a_day": gb_per_million_a_day(result)}


def per_job_bytes(result: dict[str, Any]) -> dict[str, float]:
    """Redis memory per job by kind of per-job record, all overheads in: each kind's MEMORY
    USAGE plus its keys' share of the keyspace and expiry hash tables, scaled so that the
    kinds of the run add up to its INFO used_memory delta (what MEMORY USAGE does not see is
    spread in proportion)."""
    kinds = result["kinds"]
    n = result["jobs"]
    new_keys = sum(k["keys"] for k in kinds.values()) or 1
    tables = result["keyspace_tables_per_job"]
    raw = {name: k["bytes"] / n + tables * k["keys"] / new_keys for name, k in kinds.items()}
    scale = result["used_memory_per_job"] / (sum(raw.values()) or 1)
    return {name: round(v * scale, 1) for name, v in raw.items()
            if name in PER_JOB + PER_REPORT}


def gb_per_million_a_day(result: dict[str, Any]) -> float:
    """Steady-state Redis memory (GB, 10^9 bytes) for a million such jobs a day: each kind's
    bytes per job times the days it is kept (its keys' TTL as measured, rounded up to the
    hour). Per-account records (counters, buckets) are left out: they do not grow with jobs."""
    total = 0.0
    for name, size in per_job_bytes(result).items():
        ttl = result["kinds"][name]["ttl_s"] or 0
        days = -(-ttl // 3600) * 3600 / 86400
        total += size * days
    return round(total * 1e6 / 1e9, 2)


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: bytes per job by kind, one column per system."""
    kinds = sorted({k for r in results for k in r["kinds"]},
                   key=lambda k: (k not in PER_JOB, PER_JOB.index(k) if k in PER_JOB else 0, k))
    head = "| kind | " + " | ".join(f"{r['label']}: B/job (keys, TTL)" for r in results) + " |"
    lines = [head, "| --- |" + " ---: |" * len(results)]
    for kind in kinds:
        cells = []
        for r in results:
            k = r["kinds"].get(kind)
            cells.append(f"{k['bytes_per_job']} ({k['keys']}, {k['ttl_s']} s)" if k else "-")
        lines.append(f"| `{kind}` | " + " | ".join(cells) + " |")
    for name, key in (("sum of MEMORY USAGE", "memory_usage_per_job"),
                      ("keyspace and expiry hash tables", "keyspace_tables_per_job"),
                      ("INFO used_memory delta", "used_memory_per_job"),
                      ("INFO used_memory_dataset delta", "dataset_per_job")):
        lines.append(f"| **{name}** | " + " | ".join(f"**{r[key]}**" for r in results) + " |")
    lines.append("| **GB per million jobs a day** (per-job records, their TTLs) | " + " | ".join(
        f"**{gb_per_million_a_day(r)}**" for r in results) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory",
                                description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=5000, help="jobs per system (default 5000)")
    p.add_argument("--before-src", help="also run the worker of this source tree first, as "
                   "'before' (e.g. `git archive main | tar -x -C DIR`)")
    p.add_argument("--metadata-bytes", type=int, default=0, metavar="N",
                   help="make each job's metadata about N bytes of JSON (default: the mix's "
                   "own, ~50)")
    p.add_argument("--delivered", action="store_true",
                   help="then a provider's 'delivered' report for every sent job (as an SES "
                   "webhook would), applied by the worker, before the second measurement")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an OUTBOX_* setting for this tree's worker ('after'); repeatable")
    p.add_argument("--show", nargs="+", metavar="RESULTS.json",
                   help="print the table of saved results (benchmarks/results/memory-*.json, "
                   "their systems side by side) and run nothing")
    p.add_argument("--broker", default="bench", choices=sorted(services.PROFILES),
                   help="whose RabbitMQ (scripts/services.py profile; a vhost of its own, "
                   "deleted after; the bench one is started when down and stopped after)")
    a = p.parse_args(argv)
    for item in a.env:
        if "=" not in item or not item.startswith("OUTBOX_"):
            p.error(f"--env takes OUTBOX_NAME=VALUE, not {item!r}")
    return a


def show(paths: list[str]) -> int:
    """The table of saved results, each system labelled with its file's id."""
    results = []
    for path in paths:
        saved = json.loads(Path(path).read_text())
        for res in saved["results"]:
            env = ", ".join(f"{k.removeprefix('OUTBOX_')}={v}" for k, v in res["env"].items())
            extra = " +delivered" if res.get("delivered_reports") else ""
            extra += f" +md{res['metadata_bytes']}" if res.get("metadata_bytes") else ""
            res["label"] = f"{saved['id']} {res['label']}{extra}" + (f" ({env})" if env else "")
            results.append(res)
    print(table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        return show(args.show)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    log_dir = ROOT / "var" / "bench" / f"memory-{stamp}"
    broker = services.PROFILES[args.broker]
    started_broker = services.start_rabbitmq(broker)
    sink = SmtpSink(log_dir)
    sink.start()
    env = dict(item.split("=", 1) for item in args.env)
    systems: list[tuple[str, System, dict[str, str]]] = []
    if args.before_src:
        systems.append(("before", System("outbox x1 (before)", "outbox", checks=True,
                                         src=str(Path(args.before_src).resolve())), {}))
    systems.append(("after", System("outbox x1", "outbox", checks=True), env))
    results = []
    try:
        for label, system, extra in systems:
            log(f"{label}: {system.name}, {args.jobs} jobs, src {system.src or ROOT}")
            res = asyncio.run(run_system(label, system, args.jobs, sink, log_dir, broker,
                                         extra, args.metadata_bytes, args.delivered))
            log(f"  {res['used_memory_per_job']} B/job used_memory, "
                f"{res['memory_usage_per_job']} B/job MEMORY USAGE, "
                f"{res['accepted']}/{res['expected_sent']} sent, complete {res['complete']}")
            res["sizing"] = summarise(res)
            results.append(res)
    finally:
        sink.stop()
        if started_broker:
            services.stop_rabbitmq(broker)
    RESULTS.mkdir(exist_ok=True)
    out = {"id": stamp, "command": "python -m benchmarks.memory " + shlex.join(
        argv if argv is not None else sys.argv[1:]), "results": results}
    path = RESULTS / f"memory-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    log(f"results: {path.relative_to(ROOT)}")
    print(table(results))
    return 0 if all(r["complete"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
