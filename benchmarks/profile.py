"""Summaries of a ``py-spy record -f raw`` profile (collapsed stacks: ``f1;f2;f3 count``).

    python -m benchmarks.profile benchmarks/results/profile-<ts>.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "?"
    return m.group("func"), m.group("file")


def package(file: str) -> str:
    """A readable owner for a source file: the project's module, a library, or the stdlib."""
    f = file.replace("\\", "/")
    if "site-packages/" in f:
        rest = f.split("site-packages/", 1)[1]
        return rest.split("/", 1)[0].removesuffix(".py")
    for top in ("sender/", "suppression/", "config/", "outbox/", "webhooks/"):
        i = f.find("/" + top) if not f.startswith(top) else 0
        if i >= 0 and (f.startswith(top) or "/site-packages/" not in f):
            start = 0 if f.startswith(top) else i + 1
            return f[start:].removesuffix(".py").replace("/", ".")
    m = re.search(r"python3\.\d+/(.*)$", f)
    if m:
        mod = m.group(1).removesuffix(".py")
        return "stdlib:" + mod.split("/", 1)[0]
    return f


# frames every sample of the main thread passes through (start-up and the event loop's entry)
_BOILERPLATE = ("<frozen runpy>:", "outbox.__main__:", "outbox.cli:", "outbox.commands:",
                "uvloop:", "asyncio:Runner.run", "<frozen importlib")


def top_package(module: str) -> str:
    """``sender.mime`` stays as is (the project's modules are the point); a library or stdlib
    file goes to its top-level package (``aiosmtplib``, ``asyncio``...)."""
    if module.split(".", 1)[0] in ("sender", "suppression", "config", "outbox", "webhooks"):
        return module
    return module.split("/", 1)[0].removesuffix(".py")


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    total = 0
    self_fn: Counter[str] = Counter()
    cum_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    self_mod: Counter[str] = Counter()
    cum_pkg: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_parse(f) for f in stack.split(";") if f]
        if not frames:
            continue
        names = [f"{top_package(package(file))}:{func}" for func, file in frames]
        self_fn[names[-1]] += n
        self_mod[package(frames[-1][1])] += n
        self_pkg[top_package(package(frames[-1][1]))] += n
        for name in set(names):
            if not name.startswith(_BOILERPLATE):
                cum_fn[name] += n
        for pkg in {top_package(package(file)) for _, file in frames}:
            cum_pkg[pkg] += n

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)]

    return {"samples": total, "self_by_package": pct(self_pkg),
            "self_by_module": pct(self_mod),
            "cumulative_by_package": pct(cum_pkg), "self_by_function": pct(self_fn),
            "cumulative_by_function": pct(cum_fn)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path", type=Path)
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    s = summarise(a.path, a.top)
    print(f"{s['samples']} samples")
    for key in ("self_by_package", "self_by_module", "cumulative_by_package", "self_by_function",
                "cumulative_by_function"):
        print(f"\n{key}:")
        for name, v in s[key]:
            print(f"  {v:5.1f} %  {name}")


if __name__ == "__main__":
    main()
