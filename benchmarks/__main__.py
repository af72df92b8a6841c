"""python -m benchmarks [--jobs N] [--runs 3] [--workloads a,b,c,cluster] [--quick] [--no-profile]

Starts (or reuses) the bench profile's RabbitMQ and Redis (and its Redis Cluster for the
``cluster`` workload) and an ``smtp-sink``; for every selected workload runs Outbox
(``python -m outbox worker``, or ``--processes N``: one supervisor) and, for the workloads that
ask for them, the naive and bare baselines; then ``--latency-runs`` open-loop latency runs at
50 % of each system's measured maximum, a load curve for Outbox x1, and a py-spy profile of
Outbox x1.
Writes benchmarks/results/<timestamp>.json, benchmarks/results/load.png and the results
block of benchmarks/README.md. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import measure, report, systems
from benchmarks import systems as systems_mod
from benchmarks.blast import blast_session
from benchmarks.dkim_check import signing_check
from benchmarks.env import ROOT, Services, machine, versions
from benchmarks.profile import summarise
from benchmarks.runner import (
    Context,
    log,
    open_loop_run,
    profile_run,
    seed_template,
    throughput_run,
)
from benchmarks.sink import SmtpSink
from benchmarks.systems import BARE, CELERY, NAIVE, System, outbox
from benchmarks.workloads import WORKLOADS
from outbox.runtime import positive_int

BEFORE_SRC: list[str | None] = [None]  # --before-src, recorded with the source state
RESULTS = Path(__file__).resolve().parent / "results"
LOAD_POINTS = (0.25, 0.5, 0.75, 1.0, 1.25)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int,
                   help="jobs per throughput run (default 20000, a slice of the "
                   "50,000-job stream, to keep a full run under 15 min; --quick 5000)")
    p.add_argument("--naive-jobs", type=int,
                   help="jobs per run of the naive baseline (default min(jobs, 10000): it is "
                        "~10x slower and its rate does not depend on the count)")
    p.add_argument("--runs", type=int, help="runs per system; the median is reported (default 3)")
    p.add_argument("--workloads", default="a,b,c,cluster",
                   help=f"comma-separated: {', '.join(WORKLOADS)} (default a,b,c,cluster)")
    p.add_argument("--quick", action="store_true",
                   help="development: 1 run of 5000 jobs, 5 s load points, no profile")
    p.add_argument("--load-seconds", type=float, help="duration of each open-loop run "
                   "(default 10; --quick 5)")
    p.add_argument("--latency-runs", type=int, help="open-loop runs at 50 %% load per system, "
                   "each in a fresh vhost, for the spread of p99 (default 3; --quick 2)")
    p.add_argument("--no-load-curve", action="store_true", help="only the 50 %% latency runs")
    p.add_argument("--profile", dest="profile", action="store_true", default=None,
                   help="profile Outbox x1 with py-spy (default on, off with --quick)")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--outbox-src", help="run Outbox from this source tree instead of the "
                   "working tree (e.g. `git archive HEAD | tar -x -C DIR`)")
    p.add_argument("--before-src", help="also run each one-process Outbox system from this "
                   "source tree, as `<name> before`, beside it in the same rounds (e.g. "
                   "`git archive main | tar -x -C DIR`): before and after in one session")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    p.add_argument("--profile-hz", type=positive_int, default=250, metavar="HZ",
                   help="py-spy's samples a second for the profile (default 250)")
    p.add_argument("--no-celery", action="store_true",
                   help="leave out the Celery peer (it runs beside the baselines when installed)")
    a = p.parse_args(argv)
    a.jobs = a.jobs or (5000 if a.quick else 20_000)
    a.runs = a.runs or (1 if a.quick else 3)
    a.naive_jobs = min(a.jobs, a.naive_jobs or 5000)
    a.load_seconds = a.load_seconds or (5.0 if a.quick else 10.0)
    if a.latency_runs is None:  # 0: no open-loop runs
        a.latency_runs = 2 if a.quick else 3
    a.profile = (not a.quick) if a.profile is None else a.profile
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for w in a.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    return a


async def session(args: argparse.Namespace, ctx: Context, out: dict[str, Any]) -> None:
    tput: dict[str, list[dict[str, Any]]] = {}
    systems: list[tuple[str, System]] = []
    for wname in args.workloads:
        w = WORKLOADS[wname]
        if w.kind != "throughput":
            continue
        if w.baselines:
            systems += [(wname, NAIVE), (wname, BARE)]
            if systems_mod.celery_available() and not args.no_celery:
                systems.append((wname, CELERY))
        system = outbox(w.outbox_processes, cluster=w.cluster, dkim=w.dkim)
        if w.variant:
            system = replace(system, name=f"{system.name} {w.variant}")
        systems.append((wname, system))
        if args.before_src and w.outbox_processes == 1 and not w.cluster:
            twin = systems[-1][1]
            systems.append((wname, replace(twin, name=f"{twin.name} before",
                                           src=str(Path(args.before_src).resolve()))))
    # a system that signs (or must not) shows it first, on a few jobs to an aiosmtpd relay
    for wname, system in systems:
        if WORKLOADS[wname].dkim is not None:
            check = await signing_check(ctx, system, WORKLOADS[wname].dkim)
            out.setdefault("dkim_check", {})[system.name] = check
    # throughput: interleaved by run so that drift spreads over every system
    for run in range(args.runs):
        for wname, system in systems:
            n = args.naive_jobs if system is NAIVE else \
                min(args.jobs, WORKLOADS[wname].max_jobs or args.jobs)
            log(f"run {run + 1}/{args.runs}: {system.name} ({wname}), {n} jobs")
            extra = WORKLOADS[wname].extra_env if system.kind == "outbox" else None
            res = await throughput_run(ctx, system, n, extra_env=extra)
            res.update(workload=wname, run=run + 1)
            log(f"  {res['jobs_per_s']} jobs/s, {res['cpu_us_per_job']} µs CPU/job, "
                f"{res['accepted']}/{res['expected_sent']} accepted in {res['window_s']} s, "
                f"RSS {res['peak_rss_mib']} MiB, redis {res['redis']['commands_per_job']} "
                f"cmd/job, {res['redis']['round_trips_per_job']} reads/job")
            tput.setdefault(system.name, []).append(res)
            out["runs"].append(res)
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in tput.items():
        summary[name] = {
            "workload": runs[0]["workload"], "runs": len(runs), "jobs": runs[0]["jobs"],
            "jobs_per_s": measure.median([r["jobs_per_s"] for r in runs]),
            "sent_per_s": measure.median([r["sent_per_s"] for r in runs]),
            "cpu_us_per_job": measure.median([r["cpu_us_per_job"] for r in runs]),
            "peak_rss_mib": measure.median([r["peak_rss_mib"] for r in runs]),
            "peak_rss_mib_total": measure.median([r["peak_rss_mib_total"] for r in runs]),
            "redis_commands_per_job": measure.median(
                [r["redis"]["commands_per_job"] for r in runs]),
            "redis_evalsha_per_job": measure.median(
                [r["redis"]["evalsha_per_job"] for r in runs]),
            "redis_round_trips_per_job": measure.median(
                [r["redis"]["round_trips_per_job"] for r in runs]),
            "redis_by_command": runs[-1]["redis"]["by_command"],
            "redis_commands_per_job_by_node": runs[-1]["redis"]["commands_per_job_by_node"],
            "processes": runs[-1].get("processes"),
            "all_complete": all(r["complete"] for r in runs),
            # cores busy on the whole machine during the run, and the system's own share
            "machine_cores": measure.median([r["cpu_cores"].get("busy", 0.0) for r in runs
                                             if r.get("cpu_cores")] or [0.0]),
            "system_cores": measure.median([r["cpu_cores"].get("system", 0.0) for r in runs
                                            if r.get("cpu_cores")] or [0.0]),
        }
    out["summary"] = summary
    # latency at half the measured maximum, per system, --latency-runs times (interleaved)
    halves: dict[str, list[dict[str, Any]]] = {}
    for k in range(args.latency_runs):
        for wname, system in systems:
            if system.kind == "celery":  # throughput and CPU only: no latency recorder
                continue
            rate = 0.5 * summary[system.name]["jobs_per_s"]
            log(f"latency {k + 1}/{args.latency_runs}: {system.name} at {rate:.0f} jobs/s "
                f"(50 % of max) for {args.load_seconds} s")
            res = await open_loop_run(ctx, system, rate, args.load_seconds)
            res.update(workload=wname, fraction=0.5, run=k + 1)
            cores = res["cpu_cores"]
            log(f"  p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, max {res['max_ms']} ms, "
                f"achieved {res['achieved_jobs_per_s']} jobs/s ({res['latency_samples']} "
                f"samples; publisher late by up to {res['publisher']['late_max_ms']} ms; cores: "
                f"system {cores['system']}, services {cores['services']}, harness "
                f"{cores['harness']}, other {cores['other']})")
            halves.setdefault(system.name, []).append(res)
            out["load"].append(res)
    for name, runs in halves.items():
        summary[name]["latency_at_half"] = latency_summary(runs)
    out["scaling"] = scaling(summary)
    # load curve of the first outbox system
    curve_systems = [s for _, s in systems if s.kind == "outbox"][:1]
    if not args.no_load_curve:
        for system in curve_systems:
            top = summary[system.name]["jobs_per_s"]
            for f in LOAD_POINTS:
                if f == 0.5:
                    continue
                log(f"load curve: {system.name} at {f:.0%} = {f * top:.0f} jobs/s")
                res = await open_loop_run(ctx, system, f * top, args.load_seconds)
                res.update(workload=args.workloads[0], fraction=f)
                log(f"  achieved {res['achieved_jobs_per_s']} jobs/s, p50 {res['p50_ms']} ms, "
                    f"p99 {res['p99_ms']} ms")
                out["load"].append(res)
    if args.profile and systems:
        # the session's first Outbox system (with its settings: `--workloads nodkim` profiles
        # signing off), from the tree it runs from
        system = next((s for _, s in systems if s.kind == "outbox"), outbox(1))
        n = min(args.jobs, 20_000)
        path = RESULTS / f"profile-{out['id']}.txt"
        log(f"profile: {system.name} under py-spy, {n} jobs -> {path.name}")
        res = await profile_run(ctx, system, n, path, rate_hz=args.profile_hz)
        log(f"  (under py-spy) {res['jobs_per_s']} jobs/s")
        if path.exists():
            out["profile"] = {"file": str(path.relative_to(ROOT)), "run": res,
                              **summarise(path, top=30)}
        else:
            out["profile"] = {"error": "py-spy wrote no file", "run": res}
    if any(WORKLOADS[w].kind == "blast" for w in args.workloads):  # last: it may reseed
        await blast_session(ctx, args.runs, out)


#: a run during which the rest of the machine used more than this many cores is "disturbed"
#: (other people's work took the headroom the half load is meant to leave)
DISTURBED_CORES = 0.25


def latency_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The half-load runs of one system: medians of p50/p99/max, the p99 spread (min–max),
    the median p99 of the runs the rest of the machine left alone, and every run."""
    p99 = [r["p99_ms"] for r in runs if r["p99_ms"] is not None]
    quiet = [r["p99_ms"] for r in runs if r["p99_ms"] is not None
             and r["cpu_cores"]["other"] <= DISTURBED_CORES]
    return {
        "runs": len(runs), "quiet_runs": len(quiet), "p99_quiet_ms": measure.median(quiet),
        "disturbed_above_cores": DISTURBED_CORES,
        "p50_ms": measure.median([r["p50_ms"] for r in runs]),
        "p99_ms": measure.median(p99),
        "max_ms": measure.median([r["max_ms"] for r in runs]),
        "p99_min_ms": min(p99) if p99 else None, "p99_max_ms": max(p99) if p99 else None,
        "each": [{**{k: r.get(k) for k in ("run", "offered_jobs_per_s", "achieved_jobs_per_s",
                                           "p50_ms", "p90_ms", "p99_ms", "max_ms",
                                           "p99_with_warmup_ms", "complete")},
                  "other_cores": r["cpu_cores"]["other"],
                  "stalls": r.get("stalls", []),
                  "publisher_late_max_ms": r["publisher"].get("late_max_ms")} for r in runs],
    }


def scaling(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Outbox with 1, 2, 4 processes (x2/x1, x4/x1: the issue's target is x2 ≥ 1.3 × x1) and
    on the Redis Cluster against one Redis (both one process, same session)."""
    one = summary.get("outbox x1")
    out: dict[str, Any] = {}
    if not one or not one["jobs_per_s"]:
        return out
    for n in (1, 2, 4):
        s = summary.get(f"outbox x{n}")
        if s and s["jobs_per_s"]:
            out[f"x{n}"] = {"jobs_per_s": s["jobs_per_s"], "cpu_us_per_job": s["cpu_us_per_job"],
                            "vs_x1": round(s["jobs_per_s"] / one["jobs_per_s"], 2)}
    c = summary.get("outbox x1 cluster")
    if c and c["jobs_per_s"]:
        out["cluster"] = {"jobs_per_s": c["jobs_per_s"], "cpu_us_per_job": c["cpu_us_per_job"],
                          "vs_x1": round(c["jobs_per_s"] / one["jobs_per_s"], 2)}
    return out


def source_state() -> dict[str, Any]:
    """The commit and the files changed beside it (read-only git): other people edit the
    worker while benchmarks run, so a result says what code it measured."""
    import subprocess

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.rstrip()  # not strip(): " M path" keeps its column

    return {"head": git("rev-parse", "--short", "HEAD"),
            "modified": [ln[3:] for ln in git("status", "--porcelain").splitlines()
                         if not ln[3:].startswith("benchmarks/")],
            "outbox_src": systems.OUTBOX_SRC, "before_src": BEFORE_SRC[0]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.before_src:
        BEFORE_SRC[0] = str(Path(args.before_src).resolve())
    if args.outbox_src:
        systems.OUTBOX_SRC = str(Path(args.outbox_src).resolve())
    started = time.monotonic()
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    log_dir = ROOT / "var" / "bench" / stamp
    out: dict[str, Any] = {
        "id": stamp, "command": "python -m benchmarks " + shlex.join(argv or sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items()}, "machine": machine(),
        "runs": [], "load": [], "notes": [],
    }
    out["source"] = source_state()
    with Services(cluster=any(WORKLOADS[w].cluster for w in args.workloads)):
        out["versions"] = versions()
        sink = SmtpSink(log_dir)
        sink.start()
        out["sink"] = " ".join(sink.command)
        try:
            pool = args.jobs
            if not args.quick:
                pool = max(args.jobs, 50_000)
            first = next((w for w in args.workloads if WORKLOADS[w].kind == "throughput"),
                         args.workloads[0])
            log(f"generating {pool} jobs (workload {first}'s stream)")
            stream = WORKLOADS[first].stream(pool)
            seeded = seed_template(stream)
            log(f"seeded {len(stream.consent)} consents and {len(stream.suppressed)} "
                f"suppressions in {seeded:.1f} s (ConsentStore.grant / SuppressionStore.add)")
            ctx = Context(sink=sink, log_dir=log_dir, stream=stream)
            asyncio.run(session(args, ctx, out))
        finally:
            sink.stop()
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False))
    log(f"results: {path.relative_to(ROOT)} ({out['elapsed_s']} s)")
    plot = report.plot(out, RESULTS / "load.png")
    if plot:
        log(f"plot: {plot.relative_to(ROOT)}")
    print(report.table(out))
    if not args.no_readme and out.get("summary"):
        report.update_readme(out, Path(__file__).resolve().parent / "README.md")
        log("README: benchmarks/README.md results block rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
