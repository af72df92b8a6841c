"""python -m benchmarks.imports [--runs 15] [--before-src DIR] [--modules sender.client,...]

What importing one module costs a fresh interpreter: the CRM's client (``sender.client``), the
queue layout (``sender.topology``) and the webhook server (``webhooks.app``) by default.

For each source tree (``before``: ``--before-src``, e.g. ``git archive main | tar -x -C DIR``;
``after``: this tree) and each module, ``--runs`` times, interleaved (so drift spreads over
every tree and module), after one unrecorded run that writes the bytecode caches:

- ``python -X importtime -c 'import M'``: the module's cumulative import time (its own line of
  ``-X importtime``, in µs; the tracing itself adds some);
- ``python -c 'import M'`` timed from outside: the wall time of the whole process
  (interpreter start included), what a script that publishes one job waits, and its CPU time
  (user + system, from ``wait4``): on a machine other work shares, the CPU time moves least;
- once, the modules it loads (``sys.modules``) and which of the sending libraries among them
  (aiosmtplib, twilio, aiohttp, dns).

Prints medians (min–max) and writes ``benchmarks/results/imports-<stamp>.json``; the figures
are recorded in benchmarks/README.md ("Import time").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODULES = ("sender.client", "sender.topology", "webhooks.app")
#: the libraries only the senders need (tests/unit/test_import_layers.py keeps them out)
SENDING = ("aiosmtplib", "twilio", "aiohttp", "dns")
_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (.*)$")


def cumulative_us(stderr: str, module: str) -> int:
    """The cumulative µs of ``module``'s own top-level line in ``-X importtime`` output."""
    for line in stderr.splitlines():
        m = _LINE.match(line)
        if m and m.group(2) == module:  # nested imports are indented
            return int(m.group(1))
    raise ValueError(f"no -X importtime line for {module}")


def _run(src: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run([sys.executable, *args], cwd=src, env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} in {src}: {done.stderr.strip()[-500:]}")
    return done


def _timed(src: str, args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one process, its output discarded (run again when it fails, for
    the message)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], cwd=src, env={**os.environ,
                             "PYTHONPATH": src}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        _run(src, args)  # raises with its stderr
    return wall, usage.ru_utime + usage.ru_stime


def one_run(src: str, module: str) -> tuple[int, float, float]:
    """(cumulative import µs, process wall seconds, process CPU seconds) of one import of
    ``module``."""
    traced = _run(src, ["-X", "importtime", "-c", f"import {module}"])
    wall, cpu = _timed(src, ["-c", f"import {module}"])
    return cumulative_us(traced.stderr, module), wall, cpu


def footprint(src: str, module: str) -> dict[str, Any]:
    """How many modules ``import module`` loads, and which sending libraries among them."""
    code = f"import sys, {module}\nprint('\\n'.join(sys.modules))"
    loaded = _run(src, ["-c", code]).stdout.split()
    return {"modules": len(loaded),
            "sending_libraries": sorted({m.split(".")[0] for m in loaded} & set(SENDING))}


def spread(values: list[float], scale: float, digits: int) -> dict[str, float]:
    """Median, min and max of ``values`` times ``scale``."""
    return {k: round(f(values) * scale, digits) for k, f in
            (("median", statistics.median), ("min", min), ("max", max))}


def measure(trees: dict[str, str], modules: tuple[str, ...], runs: int) -> dict[str, Any]:
    """Every tree and module ``runs`` times, interleaved, after a warm-up run of each."""
    samples: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for src in trees.values():
        for module in modules:
            one_run(src, module)  # bytecode caches written, files in the page cache
    for _ in range(runs):
        for name, src in trees.items():
            for module in modules:
                samples.setdefault((name, module), []).append(one_run(src, module))
    out: dict[str, Any] = {}
    for (name, module), got in samples.items():
        out.setdefault(name, {})[module] = {
            "import_ms": spread([us for us, _, _ in got], 1e-3, 1),
            "process_ms": spread([s for _, s, _ in got], 1e3, 1),
            "process_cpu_ms": spread([c for _, _, c in got], 1e3, 1),
            **footprint(trees[name], module)}
    return out


def table(result: dict[str, Any]) -> str:
    """The figures as a Markdown table (the one benchmarks/README.md records)."""
    rows = ["| tree | module | import, -X importtime (ms) | process CPU (ms) | "
            "process wall (ms) | modules | sending libraries |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, modules in result.items():
        for module, r in modules.items():
            cells = [f"{x['median']} ({x['min']}–{x['max']})"
                     for x in (r["import_ms"], r["process_cpu_ms"], r["process_ms"])]
            rows.append(f"| {name} | `{module}` | {' | '.join(cells)} | {r['modules']} | "
                        f"{', '.join(r['sending_libraries']) or 'none'} |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.imports",
                                description=(__doc__ or "").splitlines()[2])
    p.add_argument("--runs", type=int, default=15, help="runs per tree and module (median)")
    p.add_argument("--before-src", help="also measure this source tree, first, as 'before'")
    p.add_argument("--modules", default=",".join(MODULES), help="comma-separated modules")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = {"before": str(Path(args.before_src).resolve())} if args.before_src else {}
    trees["after"] = str(ROOT)
    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip())
    result = measure(trees, modules, args.runs)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"imports-{stamp}.json"
    load = os.getloadavg()
    path.write_text(json.dumps({"id": stamp, "python": sys.version.split()[0],
                                "runs": args.runs, "trees": trees, "load_average": load,
                                "result": result},
                               indent=2) + "\n")
    print(table(result))
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} cores)")
    print(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
