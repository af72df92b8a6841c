"""Systems under test, each run as its own OS process(es): Outbox through its command
(``python -m outbox worker`` with ``OUTBOX_*`` settings: a black box), and the two baselines of
``benchmarks.baselines``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.env import ROOT

PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable


@dataclass(frozen=True)
class System:
    name: str
    kind: str            # outbox | naive | bare
    processes: int = 1
    checks: bool = False  # suppression/consent applied: fewer messages reach the sink
    src: str | None = None  # run Outbox from another source tree (e.g. a `git archive` copy)

    def command(self, amqp: str, redis: str, smtp_port: int,
                latency_file: str | None = None) -> list[str]:
        if self.kind == "outbox":
            return [PY, "-m", "outbox", "worker"]
        cmd = [PY, "-m", "benchmarks.baselines", self.kind, "--amqp", amqp,
               "--smtp-port", str(smtp_port)]
        if self.kind == "bare":
            cmd += ["--redis", redis]
        if latency_file:
            cmd += ["--latency-file", latency_file]
        return cmd

    def env(self, amqp: str, redis: str, smtp_url: str,
            extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        if self.kind == "outbox":
            env.update({"OUTBOX_AMQP_URL": amqp, "OUTBOX_REDIS_URL": redis,
                        "OUTBOX_SMTP_URL": smtp_url, "OUTBOX_METRICS_PORT": "0"})
            env.update(extra or {})
        env["PYTHONPATH"] = self.src if self.kind == "outbox" and self.src else str(ROOT)
        return env


OUTBOX_SRC: str | None = None  # set by --outbox-src


def outbox(processes: int) -> System:
    return System(f"outbox x{processes}", "outbox", processes, checks=True, src=OUTBOX_SRC)


NAIVE = System("naive", "naive")
BARE = System("bare", "bare")


class Processes:
    """Started processes of one system, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, system: System, log_dir: Path, label: str) -> None:
        self.system = system
        self.log_dir = log_dir
        self.label = label
        self.procs: list[subprocess.Popen[bytes]] = []
        self.wrapped = False  # started under py-spy: the consumer is py-spy's child

    def start(self, cmd: list[str], env: dict[str, str], wrap: list[str] | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.wrapped = bool(wrap)
        for i in range(self.system.processes):
            log = open(self.log_dir / f"{self.label}-{i}.log", "wb")
            full = [*(wrap or []), *cmd]
            self.procs.append(subprocess.Popen(full, env=env, stdout=log, stderr=log,
                                               stdin=subprocess.DEVNULL, cwd=str(ROOT),
                                               start_new_session=True))

    @property
    def pids(self) -> list[int]:
        """PIDs of the consumer processes themselves (the child when wrapped by py-spy)."""
        if not self.wrapped:
            return [p.pid for p in self.procs]
        return [_child(p.pid) or p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def errors(self) -> int:
        """Error records in the processes' logs (a broken build shows here, not as a crash)."""
        n = 0
        for i in range(len(self.procs)):
            path = self.log_dir / f"{self.label}-{i}.log"
            if path.exists():
                n += sum(1 for line in path.open("rb")
                         if b'"level": "error"' in line or b"Traceback" in line[:10])
        return n

    def stop(self, timeout: float = 40) -> list[int | None]:
        """SIGTERM each consumer (the worker drains and exits), wait, SIGKILL what is left."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                codes.append(p.wait())
        return codes


def _child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None
