"""The results as a Markdown table, the README results block, and the load plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _f(v: Any, nd: int = 0) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def table(out: dict[str, Any]) -> str:
    s = out.get("summary", {})
    rows = ["| system | workload | jobs/run | jobs/s | sent/s | CPU µs/job | p50 ms @50 % | "
            "p99 ms @50 % | p99 min–max | Redis cmd/job | EVALSHA/job | Redis reads/job | "
            "peak RSS MiB | cores busy (its own) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in s.items():
        lat = v.get("latency_at_half") or {}
        rss = _f(v["peak_rss_mib"], 0)
        if v["peak_rss_mib_total"] != v["peak_rss_mib"]:
            rss += f" (total {_f(v['peak_rss_mib_total'], 0)})"
        spread = f"{_f(lat.get('p99_min_ms'), 1)}–{_f(lat.get('p99_max_ms'), 1)}" \
            if lat.get("runs", 0) > 1 else "–"
        rows.append(
            f"| {name} | {v['workload']} | {v['jobs']:,} | {_f(v['jobs_per_s'])} | "
            f"{_f(v['sent_per_s'])} | {_f(v['cpu_us_per_job'])} | {_f(lat.get('p50_ms'), 1)} | "
            f"{_f(lat.get('p99_ms'), 1)} | {spread} | {_f(v['redis_commands_per_job'], 2)} | "
            f"{_f(v['redis_evalsha_per_job'], 2)} | {_f(v['redis_round_trips_per_job'], 2)} | "
            f"{rss} | {_f(v.get('machine_cores'), 2)} ({_f(v.get('system_cores'), 2)}) |")
    lines = ["\n".join(rows)] if s else []
    ratios = []
    for name, v in s.items():
        if not name.startswith("outbox"):
            continue
        for base in ("bare", "naive", "celery prefork x8"):
            b = s.get(base)
            if b and b["jobs_per_s"] and b["cpu_us_per_job"] and v["cpu_us_per_job"]:
                each = ", ".join(f"{r:.2f}" for r in paired(out, name, base))
                # per CPU second: jobs one second of CPU does, Outbox's over the other's
                ratios.append(f"| {name} / {base} | {v['jobs_per_s'] / b['jobs_per_s']:.2f} | "
                              f"{v['cpu_us_per_job'] / b['cpu_us_per_job']:.2f} | "
                              f"{b['cpu_us_per_job'] / v['cpu_us_per_job']:.2f} | {each} |")
    if ratios:
        lines.append("| ratio | jobs/s | CPU/job | jobs per CPU second | jobs/s, each round |\n"
                     "|---|---:|---:|---:|---|\n" + "\n".join(ratios))
    if out.get("scaling"):
        lines.append(scaling_table(out["scaling"], out))
    if "outbox x1 dkim on" in s and "outbox x1 dkim off" in s:
        lines.append(dkim_table(out))
    halves = latency_table(s)
    if halves:
        lines.append(halves)
    load = curve(out, "outbox x1")
    if load:
        rows = ["| offered jobs/s | achieved jobs/s | p50 ms | p90 ms | p99 ms | max ms |",
                "|---:|---:|---:|---:|---:|---:|"]
        for r in load:
            rows.append(f"| {_f(r['offered_jobs_per_s'])} ({r['fraction']:.0%}) | "
                        f"{_f(r['achieved_jobs_per_s'])} | {_f(r['p50_ms'], 1)} | "
                        f"{_f(r['p90_ms'], 1)} | {_f(r['p99_ms'], 1)} | {_f(r['max_ms'], 1)} |")
        lines.append("Outbox x1 against offered load (open loop):\n\n" + "\n".join(rows))
    if out.get("blast"):
        lines.append(blast_table(out["blast"]))
    return "\n\n".join(lines)


def scaling_table(sc: dict[str, Any], out: dict[str, Any]) -> str:
    """Outbox x1, x2, x4 (one supervisor each) and x1 on the Redis Cluster, against x1 (the
    medians, and within each round of runs)."""
    rows = ["| Outbox | jobs/s | CPU µs/job | × outbox x1 | × x1, each round |",
            "|---|---:|---:|---:|---|"]
    names = {"x1": ("x1", "outbox x1"), "x2": ("x2 (`--processes 2`)", "outbox x2"),
             "x4": ("x4 (`--processes 4`)", "outbox x4"),
             "cluster": ("x1 on the Redis Cluster (3 masters)", "outbox x1 cluster")}
    for key, (label, system) in names.items():
        v = sc.get(key)
        if v:
            each = ", ".join(f"{r:.2f}" for r in paired(out, system, "outbox x1"))
            rows.append(f"| {label} | {_f(v['jobs_per_s'])} | {_f(v['cpu_us_per_job'])} | "
                        f"{v['vs_x1']:.2f} | {each} |")
    return ("Scale-out (target: x2 ≥ 1.3 × x1) and Redis Cluster, jobs/s against Outbox x1 of "
            "the same session:\n\n" + "\n".join(rows))


def dkim_table(out: dict[str, Any]) -> str:
    """``OUTBOX_DKIM`` on against off, same session (workloads ``dkim`` and ``nodkim``): the
    medians, every run in order, the CPU signing adds per job and what the check before the
    runs saw (``benchmarks.dkim_check``)."""
    s, checks = out["summary"], out.get("dkim_check") or {}
    on, off = s["outbox x1 dkim on"], s["outbox x1 dkim off"]
    rows = ["| OUTBOX_DKIM | jobs/s (median) | CPU µs/job (median) | each run, in order: "
            "jobs/s · CPU µs/job | checked before the runs |", "|---|---:|---:|---|---|"]
    for label, name, v in (("on (RSA-2048)", "outbox x1 dkim on", on),
                           ("off", "outbox x1 dkim off", off)):
        each = ", ".join(f"{_f(r['jobs_per_s'])} · {_f(r['cpu_us_per_job'])}"
                         for r in out.get("runs", []) if r.get("system") == name)
        c = checks.get(name) or {}
        check = (f"{c['messages']} messages: {c['signed']} signed, {c['verified']} verified "
                 "by dkimpy") if c else "–"
        rows.append(f"| {label} | {_f(v['jobs_per_s'])} | {_f(v['cpu_us_per_job'])} | {each} | "
                    f"{check} |")
    added = on["cpu_us_per_job"] - off["cpu_us_per_job"]
    ratio = on["jobs_per_s"] / off["jobs_per_s"] if off["jobs_per_s"] else 0.0
    each = ", ".join(f"{r:.2f}" for r in paired(out, "outbox x1 dkim on",
                                                 "outbox x1 dkim off"))
    return ("DKIM signing on and off, same session (one worker process):" + "\n\n"
            + "\n".join(rows) + "\n\n"
            + f"Signing on: {added:+,.0f} µs of CPU per job, jobs/s × {ratio:.2f} "
            f"(each round: {each}).")


def paired(out: dict[str, Any], name: str, base: str) -> list[float]:
    """jobs/s of ``name`` over ``base`` within each round of throughput runs (the k-th run of
    each; the systems of a round run one after the other): the machine drifts between rounds
    (+24 % CPU per job for the unchanged naive baseline within one session), less within one."""
    def rates(system: str) -> list[float]:
        return [r["jobs_per_s"] for r in out.get("runs", [])
                if r.get("system") == system and r.get("jobs_per_s")]
    return [a / b for a, b in zip(rates(name), rates(base), strict=False)]


def latency_table(summary: dict[str, Any]) -> str:
    """Every open-loop run at half load, per system: p50/p99/max and the p99 spread."""
    rows = ["| system | run | offered jobs/s | achieved jobs/s | p50 ms | p99 ms | max ms | "
            "p99 spread ms | other cores | tail episodes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, v in summary.items():
        lat = v.get("latency_at_half") or {}
        for i, r in enumerate(lat.get("each", [])):
            spread = f"{_f(lat['p99_min_ms'], 1)}–{_f(lat['p99_max_ms'], 1)}" if i == 0 else ""
            other = _f(r.get("other_cores"), 2)
            if (r.get("other_cores") or 0) > lat.get("disturbed_above_cores", 1e9):
                other += " (disturbed)"
            rows.append(f"| {name} | {r['run']} | {_f(r['offered_jobs_per_s'])} | "
                        f"{_f(r['achieved_jobs_per_s'])} | {_f(r['p50_ms'], 1)} | "
                        f"{_f(r['p99_ms'], 1)} | {_f(r['max_ms'], 1)} | {spread} | "
                        f"{other} | {_episodes(r.get('stalls') or [])} |")
    if len(rows) == 2:
        return ""
    return ("Latency at 50 % load, every run (each its own fresh vhost and Redis; the first "
            "second's jobs not counted; other cores: CPU used meanwhile by neither the system, "
            "the services nor the harness; disturbed: more than a quarter of a core; tail "
            "episodes: jobs slower than max(50 ms, 3 × p50) enqueued together, how many, the "
            "worst one's latency and the most cores in iowait and stolen by the hypervisor "
            "while it lasted):\n\n"
            + "\n".join(rows))


def _episodes(stalls: list[dict[str, Any]]) -> str:
    """``3 · worst 89 ms (iowait 0.5, steal 0.9)``, or ``none``."""
    if not stalls:
        return "none"
    worst = max(stalls, key=lambda s: s.get("worst_ms") or 0)
    return (f"{len(stalls)} · worst {_f(worst.get('worst_ms'), 0)} ms (iowait "
            f"{_f(max(s.get('iowait', 0) for s in stalls), 1)}, steal "
            f"{_f(max(s.get('steal', 0) for s in stalls), 1)})")


def curve(out: dict[str, Any], system: str) -> list[dict[str, Any]]:
    """The load curve of ``system``: one open-loop run per offered load, by load; where a
    load ran several times (the half-load runs) the run with the median p99."""
    by: dict[float, list[dict[str, Any]]] = {}
    for r in out.get("load", []):
        if r.get("fraction") is not None and r["system"] == system:
            by.setdefault(r["fraction"], []).append(r)
    pts = []
    for runs in by.values():
        runs = sorted(runs, key=lambda r: (r["p99_ms"] is None, r["p99_ms"] or 0))
        pts.append(runs[(len(runs) - 1) // 2])
    return sorted(pts, key=lambda r: r["offered_jobs_per_s"])


def blast_table(runs: list[dict[str, Any]]) -> str:
    """Workload ``blast``: transactional latency during a marketing blast, per mode and run."""
    rows = ["| mode (marketing key) | run | tx sent | p50 ms | p99 ms | max ms | within 3 s | "
            "blast sent | blast s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        rows.append(f"| {r['mode']} (`{r['marketing_routing_key']}`) | {r['run']} | "
                    f"{r['tx_sent']}/{r['tx_jobs']} | {_f(r['tx_p50_ms'], 1)} | "
                    f"{_f(r['tx_p99_ms'], 1)} | {_f(r['tx_max_ms'], 1)} | "
                    f"{r['tx_within_3s']}/{r['tx_jobs']} | {r['blast_sent']:,}/"
                    f"{r['blast_jobs']:,} | {_f(r['blast_s'], 1)} |")
    return "Transactional jobs during a marketing blast (workload blast):\n\n" + "\n".join(rows)


def profile_table(out: dict[str, Any], top: int = 15) -> str:
    p = out.get("profile") or {}
    if "samples" not in p:
        return ""
    rows = [f"py-spy, {p['samples']:,} samples ({p['file']}, a run artefact kept out of git); "
            "% of samples of the worker's threads, idle excluded.", "",
            "| self % by package | | cumulative % by function | |", "|---|---:|---|---:|"]
    a, b = p["self_by_package"][:top], p["cumulative_by_function"][:top]
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else ("", "")
        y = b[i] if i < len(b) else ("", "")
        rows.append(f"| {x[0]} | {x[1]} | `{y[0]}` | {y[1]} |")
    return "\n".join(rows)


def update_readme(out: dict[str, Any], path: Path) -> None:
    m, v = out["machine"], out.get("versions", {})
    block = [
        START,
        f"Run `{out['id']}`: `{out['command']}` ({out['elapsed_s']:.0f} s), "
        f"results in `benchmarks/results/{out['id']}.json`.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}; RabbitMQ, Redis, smtp-sink, the consumers and the harness all share "
        "these cores.",
        f"Code: commit {out.get('source', {}).get('head')} plus uncommitted changes in "
        f"{len(out.get('source', {}).get('modified', []))} files (listed in the JSON).",
        "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".",
        f"Sink: `{out.get('sink', '')}`.",
        "",
        table(out),
        "",
    ]
    prof = profile_table(out)
    if prof:
        block += [prof, ""]
    block.append(END)
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n## Results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    path.write_text(head + "\n".join(block) + tail)


def plot(out: dict[str, Any], path: Path) -> Path | None:
    """Achieved throughput and latency (p50, p99) against offered load, per system."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    systems = dict.fromkeys(r["system"] for r in out.get("load", []))
    load = [r for name in systems for r in curve(out, name) if r.get("achieved_jobs_per_s")]
    if not load:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in dict.fromkeys(r["system"] for r in load):
        pts = sorted((r for r in load if r["system"] == system),
                     key=lambda r: r["offered_jobs_per_s"])
        x = [r["offered_jobs_per_s"] for r in pts]
        style = "o-" if len(pts) > 1 else "o"
        ax1.plot(x, [r["achieved_jobs_per_s"] for r in pts], style, label=system)
        ax2.plot(x, [r["p50_ms"] for r in pts], style, label=f"{system} p50")
        if len(pts) > 1:
            ax2.plot(x, [r["p99_ms"] for r in pts], "s--", label=f"{system} p99")
        else:
            ax2.plot(x, [r["p99_ms"] for r in pts], "s", label=f"{system} p99")
    top = max(r["offered_jobs_per_s"] for r in load)
    ax1.plot([0, top], [0, top], ":", color="grey", label="offered")
    ax1.set_xlabel("offered load, jobs/s (open loop)")
    ax1.set_ylabel("achieved, jobs/s (sink)")
    ax1.set_title("Throughput")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("offered load, jobs/s (open loop)")
    ax2.set_ylabel("enqueue → accepted, ms")
    ax2.set_yscale("log")
    ax2.set_title("Latency")
    ax2.legend(fontsize=7)
    fig.suptitle(f"Outbox benchmarks {out['id']} ({out['machine']['nproc']} cores, shared)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
