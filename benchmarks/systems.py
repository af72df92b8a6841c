"""Systems under test, each run as its own OS process(es): Outbox through its command
(``python -m outbox worker`` with ``OUTBOX_*`` settings: a black box; with N > 1 processes ONE
``python -m outbox worker --processes N``, the product's supervisor, which starts the N workers
as its children), and the two baselines of ``benchmarks.baselines``."""

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
    processes: int = 1    # worker processes (Outbox: under one supervisor when > 1)
    checks: bool = False  # suppression/consent applied: fewer messages reach the sink
    src: str | None = None  # run Outbox from another source tree (e.g. a `git archive` copy)
    cluster: bool = False  # Outbox on the bench profile's Redis Cluster (OUTBOX_REDIS_CLUSTER)
    settings: tuple[tuple[str, str], ...] = ()  # OUTBOX_* settings of its own (every run)

    @property
    def supervised(self) -> bool:
        """Started as one supervisor whose children do the work (Celery's prefork pool too)."""
        return (self.kind == "outbox" and self.processes > 1) or self.kind == "celery"

    def command(self, amqp: str, redis: str, smtp_port: int,
                latency_file: str | None = None) -> list[str]:
        if self.kind == "outbox":
            extra = ["--processes", str(self.processes)] if self.supervised else []
            return [PY, "-m", "outbox", "worker", *extra]
        if self.kind == "celery":
            return [PY, "-m", "celery", "-A", "benchmarks.celery_peer", "worker",
                    "--pool", "prefork", "--concurrency", str(self.processes),
                    "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                    "--without-heartbeat"]
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
            if self.cluster:
                env["OUTBOX_REDIS_CLUSTER"] = "true"
            env.update(self.settings)
            env.update(extra or {})
        if self.kind == "celery":
            env.update({"BENCH_AMQP_URL": amqp, "BENCH_REDIS_URL": redis,
                        "BENCH_SMTP_PORT": smtp_url.rsplit(":", 1)[1]})
        env["PYTHONPATH"] = self.src if self.kind == "outbox" and self.src else str(ROOT)
        return env


OUTBOX_SRC: str | None = None  # set by --outbox-src


def outbox(processes: int, cluster: bool = False, dkim: bool | None = None) -> System:
    """Outbox with ``processes`` worker processes; ``dkim``: ``OUTBOX_DKIM`` set (and the
    system named ``... dkim on|off``), None: the default (on)."""
    name = f"outbox x{processes}" + (" cluster" if cluster else "")
    settings: tuple[tuple[str, str], ...] = ()
    if dkim is not None:
        name += " dkim on" if dkim else " dkim off"
        settings = (("OUTBOX_DKIM", "true" if dkim else "false"),)
    return System(name, "outbox", processes, checks=True, src=OUTBOX_SRC, cluster=cluster,
                  settings=settings)


NAIVE = System("naive", "naive")
BARE = System("bare", "bare")
#: the peer a Python team would pick (benchmarks/celery_peer.py): prefork x8, late acks
CELERY = System("celery prefork x8", "celery", processes=8)


def celery_available() -> bool:
    """Celery is a benchmark dependency only (``pip install -e '.[bench]'``)."""
    import importlib.util

    return importlib.util.find_spec("celery") is not None


class Processes:
    """The started process of one system (one command: a worker, a baseline, or Outbox's
    supervisor), stopped by PID: SIGTERM to the worker or the supervisor only (a supervisor
    drains its children), then SIGKILL to what is left."""

    def __init__(self, system: System, log_dir: Path, label: str) -> None:
        self.system = system
        self.log_dir = log_dir
        self.label = label
        self.procs: list[subprocess.Popen[bytes]] = []
        self.wrapped = False  # started under py-spy: the consumer is py-spy's child
        self.seen: set[int] = set()  # every pid `pids` returned (a supervisor's children too)

    def start(self, cmd: list[str], env: dict[str, str], wrap: list[str] | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.wrapped = bool(wrap)
        log = open(self.log_dir / f"{self.label}-0.log", "wb")
        # run from the system's own tree: `python -m` puts the working directory first on
        # sys.path, before PYTHONPATH (from ROOT, --outbox-src would run ROOT's code)
        self.procs.append(subprocess.Popen([*(wrap or []), *cmd], env=env, stdout=log,
                                           stderr=log, stdin=subprocess.DEVNULL,
                                           cwd=self.system.src or str(ROOT),
                                           start_new_session=True))

    @property
    def main_pids(self) -> list[int]:
        """The process that gets SIGTERM: the worker (the child when wrapped by py-spy) or
        the supervisor."""
        if not self.wrapped:
            return [p.pid for p in self.procs]
        return [(children(p.pid) or [p.pid])[0] for p in self.procs]

    @property
    def pids(self) -> list[int]:
        """Every process doing the system's work now: the worker, or the supervisor and its
        children (read from /proc at each call: children start a moment after the
        supervisor, and a restarted one has a new pid)."""
        out: list[int] = []
        for pid in self.main_pids:
            out.append(pid)
            if self.system.supervised:
                out += children(pid)
        self.seen.update(out)
        return out

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def errors(self) -> int:
        """Error records in the processes' logs (a broken build shows here, not as a crash)."""
        n = 0
        for path in self.log_dir.glob(f"{self.label}-*.log"):
            n += sum(1 for line in path.open("rb")
                     if b'"level": "error"' in line or b"Traceback" in line[:10])
        return n

    def stop(self, timeout: float = 60) -> list[int | None]:
        """SIGTERM to the worker or supervisor (it drains and exits; a supervisor drains its
        children first, within OUTBOX_SHUTDOWN_GRACE + 10 s), wait, SIGKILL what is left."""
        self.seen.update(self.pids)  # remember the children before they go
        for pid in self.main_pids:
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
        for p in self.procs:  # a supervisor SIGKILLed: its children, checked by their command
            for pid in self.seen:
                if _is_child_of_supervisor(pid, p.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        return codes


def children(pid: int) -> list[int]:
    """The child pids of ``pid`` (every thread's, from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(set(out))


def _is_child_of_supervisor(pid: int, supervisor: int) -> bool:
    """True while ``pid`` is a worker started by ``supervisor`` (its command line says
    ``--supervised-by <supervisor>``): a pid reused by another process is never matched."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a == b"--supervised-by" and b == str(supervisor).encode()
               for a, b in zip(argv, argv[1:], strict=False))
