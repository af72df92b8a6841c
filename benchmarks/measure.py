"""Measurements taken from outside the processes under test: /proc CPU and memory, Redis
server statistics, percentiles."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of those of ``pids`` still running (a vanished one counts 0)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, every core (/proc/stat:
    busy = all but idle and iowait)."""
    fields = _stat_fields()
    total = sum(fields)  # guest time is already counted in user
    return (total - fields[3] - fields[4]) / _TICK, total / _TICK


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:``port`` (``ss -ltnpH``), or None."""
    import re
    import subprocess

    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set size) of one process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def redis_snapshot(*clients: Any) -> dict[str, Any]:
    """Per-command call counts and the read-event counter, summed over ``clients`` (one
    Redis, or every primary of a cluster); ``nodes``: each server's command total."""
    cmds: dict[str, int] = {}
    reads = commands = 0
    nodes: list[int] = []
    for client in clients:
        stats = client.info("stats")
        for k, v in client.info("commandstats").items():
            name = k.removeprefix("cmdstat_")
            cmds[name] = cmds.get(name, 0) + v["calls"]
        reads += stats["total_reads_processed"]
        commands += stats["total_commands_processed"]
        nodes.append(stats["total_commands_processed"])
    return {"cmds": cmds, "reads": reads, "commands": commands, "nodes": nodes}


def redis_delta(before: dict[str, Any], after: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Per job: commands by name (INFO commandstats; includes the commands Lua scripts run),
    EVALSHA calls, and read events (≈ client round trips: one pipeline arrives as one read)."""
    harness = {"info", "ping", "client|setname", "client", "select", "hello"}
    per = {}
    for name, calls in after["cmds"].items():
        d = calls - before["cmds"].get(name, 0)
        if d and name not in harness:
            per[name] = round(d / jobs, 3)
    return {
        "commands_per_job": round(sum(per.values()), 2),
        "evalsha_per_job": per.get("evalsha", 0.0),
        "round_trips_per_job": round((after["reads"] - before["reads"]) / jobs, 2),
        "total_commands_processed_per_job": round(
            (after["commands"] - before["commands"]) / jobs, 2),
        "by_command": dict(sorted(per.items(), key=lambda kv: -kv[1])),
        "commands_per_job_by_node": [round((a - b) / jobs, 2) for a, b in
                                     zip(after["nodes"], before["nodes"], strict=True)],
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[i]


def median(values: list[float]) -> float | None:
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


class MachineSampler:
    """Samples the whole machine every ``every`` seconds while a latency run goes on: the
    cores busy, in iowait and stolen by the hypervisor (/proc/stat), and how late this
    process's own event loop woke (a stall of the whole machine shows there too). Used to say
    where a latency tail came from: the jobs enqueued during a stall are its tail."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        #: (epoch seconds, busy cores, iowait cores, steal cores, loop lag seconds)
        self.samples: list[tuple[float, float, float, float, float]] = []

    async def run(self) -> None:
        prev_t, prev = time.time(), _stat_fields()
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.every)
            lag = time.monotonic() - asked - self.every
            t, now = time.time(), _stat_fields()
            span = max(1e-6, t - prev_t) * _TICK
            d = [b - a for a, b in zip(prev, now, strict=True)]
            busy = (sum(d) - d[3] - d[4]) / span
            self.samples.append((t, round(busy, 2), round(d[4] / span, 2),
                                 round(d[7] / span, 2), round(max(0.0, lag), 4)))
            prev_t, prev = t, now

    def during(self, start: float, end: float) -> dict[str, float]:
        """The worst sample between ``start`` and ``end`` (epoch seconds): the most cores
        busy, in iowait and stolen, and the longest loop lag."""
        if not self.samples:
            return {}
        inside = [s for s in self.samples if start <= s[0] <= end + self.every] or \
            [min(self.samples, key=lambda s: abs(s[0] - end))]
        return {"busy": max(s[1] for s in inside), "iowait": max(s[2] for s in inside),
                "steal": max(s[3] for s in inside),
                "loop_lag_ms": round(max(s[4] for s in inside) * 1000, 1)}


def _stat_fields() -> list[int]:
    """The machine's CPU times since boot in ticks (/proc/stat's first line): user, nice,
    system, idle, iowait, irq, softirq, steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def stalls(timed: list[tuple[float, float]], threshold: float, gap: float = 0.25
           ) -> list[tuple[float, float, int, float]]:
    """The tail as episodes: the jobs (``(enqueued epoch s, latency s)``) slower than
    ``threshold``, grouped while less than ``gap`` seconds apart. Each: (first enqueued,
    last accepted, jobs, worst latency)."""
    out: list[list[float]] = []
    for t0, lat in sorted(timed):
        if lat < threshold:
            continue
        if out and t0 - out[-1][0] <= gap + (out[-1][1] - out[-1][0]):
            ep = out[-1]
            ep[1] = max(ep[1], t0 + lat)
            ep[2] += 1
            ep[3] = max(ep[3], lat)
        else:
            out.append([t0, t0 + lat, 1, lat])
    return [(a, b, int(n), w) for a, b, n, w in out]
