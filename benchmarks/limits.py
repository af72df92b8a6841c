"""python -m benchmarks.limits [--jobs 1000] [--rounds 15]

What the sending limits of issue 21 (quiet hours, frequency caps, the daily quota) cost per
job in the pre-send round trip, against a redis-server of its own (``benchmarks.memory``'s
:class:`~benchmarks.memory.RedisServer`: a free loopback port, no persistence, stopped by its
PID), so ``INFO commandstats`` is this run's alone.

The same job, a marketing SMS with consent to a new recipient each time, through
:meth:`suppression.gate.Gate.pre_send`, in two configurations of its account, alternated
``--rounds`` times (the machine is shared: alternating spreads its noise over both):

- ``off``: the defaults (no quiet hours, no cap, no quota);
- ``on``: quiet hours set to drop marketing SMS (a window that does not hold the present, so
  the job is checked and sent), a cap of 1,000,000 marketing SMS a week, a daily quota of
  1,000,000: every check runs and counts, none refuses.

Per configuration: the script's own time per call (``usec_per_call`` of ``evalsha`` and
``evalsha_ro`` in ``INFO commandstats``, the Redis commands the script runs included), the
client's wall time per pre-send (64 at once, as the worker's batches), the Redis commands per
pre-send (every command's ``calls`` in ``commandstats``: a count, unlike the times not
disturbed by a busy machine), and the Python cost of
the recipient's UTC offset (``suppression.gate.local_offset``: the only work added on the
worker's side); and the memory of a recipient's cap counter holding one job (``MEMORY
USAGE``: the cap's only per-recipient cost, kept ``cap_period``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

from benchmarks.memory import RedisServer
from sender.connect import redis_client
from suppression import keys
from suppression.gate import Gate, local_offset
from suppression.reputation import Policy
from suppression.store import AccountStore, ConsentStore

LOGS = Path(__file__).resolve().parent / "results" / "limits-logs"
ON = {"quiet_marketing_sms": "drop", "cap_marketing_sms": 1_000_000,
      "daily_quota": 1_000_000}


def _script_usec(info: dict[str, Any]) -> tuple[int, int, int]:
    """(script calls, their usec, every command's calls: those the scripts run included) so
    far."""
    calls = usec = commands = 0
    for name, stats in info.items():
        commands += int(stats["calls"])
        if name in ("cmdstat_evalsha", "cmdstat_eval"):
            calls += int(stats["calls"])
            usec += int(stats["usec"])
    return calls, usec, commands


async def _configure(redis: Any, account: str, on: bool, now_minute: int) -> None:
    store = AccountStore(redis, Policy())
    fields: dict[str, Any] = {"business_name": "Acme", "contact_phone": "+852 2123 4567"}
    if on:  # a window that does not hold the present: checked, not refused
        fields |= {**ON, "quiet_start": (now_minute + 120) % 1440,
                   "quiet_end": (now_minute + 180) % 1440}
    await store.configure(account, actor="bench", **fields)


async def _round(redis: Any, sync: Any, gate: Gate, account: str, jobs: int,
                 start: int) -> tuple[float, float, float]:
    """(script µs per call, wall µs per pre-send, Redis commands per pre-send) of ``jobs``
    pre-sends, 64 at once."""
    numbers = [f"+8529{(start + i) % 10**7:07d}" for i in range(jobs)]
    consent = ConsentStore(redis)
    for number in numbers:
        await consent.grant(account, number, channel="sms", source="bench")
    before = _script_usec(sync.info("commandstats"))
    began = time.perf_counter()
    for at in range(0, jobs, 64):
        decisions = await asyncio.gather(*(
            gate.pre_send(account, f"b{start + i}", owner="bench", redelivered=False,
                          expired=False, attempt=1, channel="sms", category="marketing",
                          address=numbers[i]) for i in range(at, min(jobs, at + 64))))
        if any(d.verdict != "send" for d in decisions):
            raise SystemExit(f"unexpected verdicts: {[d.verdict for d in decisions][:5]}")
    wall = time.perf_counter() - began
    after = _script_usec(sync.info("commandstats"))
    return ((after[1] - before[1]) / (after[0] - before[0]), wall / jobs * 1e6,
            (after[2] - before[2] - 1) / jobs)  # less the INFO itself


async def run(jobs: int, rounds: int) -> dict[str, Any]:
    server = RedisServer(LOGS)
    sync = server.start()
    try:
        redis = redis_client(server.url)
        gate = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1e9, burst=10**9))
        now_minute = (int(sync.time()[0]) + 8 * 3600) % 86400 // 60
        for mode in ("off", "on"):
            await _configure(redis, f"bench_{mode}", mode == "on", now_minute)
        figures: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
        start = 0
        for _ in range(rounds):
            for mode in ("off", "on"):
                figures[mode].append(await _round(redis, sync, gate, f"bench_{mode}", jobs,
                                                  start))
                start += jobs
        await redis.aclose()
        last = f"+8529{(start - 1) % 10**7:07d}"  # of the last round of "on"
        cap_key = keys.frequency("bench_on", "marketing", "sms", last)
        cap_bytes = sync.memory_usage(cap_key, samples=0) or 0
    finally:
        server.stop()
    offset_us = min(timeit.repeat(lambda: local_offset(None, "sms", "+85291234567"),
                                  number=20000, repeat=5)) / 20000 * 1e6
    return {mode: {"script_us": statistics.median(s for s, _, _ in f),
                   "wall_us": statistics.median(w for _, w, _ in f),
                   "commands": statistics.median(c for _, _, c in f)}
            for mode, f in figures.items()} | {"local_offset_us": offset_us,
                                               "cap_key_bytes": cap_bytes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.limits")
    p.add_argument("--jobs", type=int, default=1000, help="pre-sends per round and mode")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    result = asyncio.run(run(args.jobs, args.rounds))
    off, on = result["off"], result["on"]
    print(f"{'':<6}{'script µs/call':>16}{'pre-send wall µs/job':>24}{'commands/job':>14}")
    for name, r in (("off", off), ("on", on)):
        print(f"{name:<6}{r['script_us']:>16.1f}{r['wall_us']:>24.1f}{r['commands']:>14.2f}")
    print(f"added: script {on['script_us'] - off['script_us']:+.1f} µs, wall "
          f"{on['wall_us'] - off['wall_us']:+.1f} µs per job; local_offset "
          f"{result['local_offset_us']:.2f} µs per call (medians of {args.rounds} rounds of "
          f"{args.jobs}); a recipient's cap counter with one job: {result['cap_key_bytes']} "
          "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
