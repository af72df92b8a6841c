"""``outbox worker --processes N``: N one-process workers under one supervisor.

Each child is ``python -m outbox worker`` itself, a new interpreter with the supervisor's
environment: the same start-up, drain and exit statuses as a worker run alone, nothing pickled
or inherited but the environment. Its log lines go straight to the same stderr, each naming
its ``pid`` (:func:`outbox.logs.name_processes`). Each child is in its own session, so a
terminal's Ctrl-C reaches the supervisor alone, which forwards SIGTERM: one signal per child,
whatever sent it. A child whose supervisor is gone (SIGKILLed) drains and exits by itself
(:func:`watch_parent`).

The supervisor

- restarts a child that exits while it was not told to stop (a WARNING naming its pid and exit
  status or signal), after a backoff of its own: :data:`BACKOFF_FIRST` s, doubled at each quick
  death up to :data:`BACKOFF_MAX` s, back to the first after a child lived
  :data:`BACKOFF_RESET_AFTER` s, so a crash loop does not spin;
- stops every child and exits 2 when one exits 2 (a setting or a refused login: another
  start cannot help); the child has printed the reason, in one line;
- on SIGTERM/SIGINT sends SIGTERM to every child, waits ``OUTBOX_SHUTDOWN_GRACE`` plus
  :data:`DRAIN_MARGIN` for them to drain (each does within the grace), SIGKILLs what is left
  (logged) and returns 0;
- when metrics are on, gives every child the same fresh ``PROMETHEUS_MULTIPROC_DIR`` and
  serves them all on one ``/metrics`` (:func:`metrics_dir`, :mod:`sender.metrics`); a child's
  live gauges go when it exits (``mark_process_dead``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from outbox.runtime import EXIT_BAD_INPUT

log = logging.getLogger("outbox.supervisor")

BACKOFF_FIRST = 1.0  # seconds before restarting a child that died
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 60.0  # a child that lived this long restarts after BACKOFF_FIRST again
DRAIN_MARGIN = 10.0  # seconds past the grace for closing connections after the drain
PARENT_CHECK_PERIOD = 1.0  # how often a child checks its supervisor is still there
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def child_argv(supervisor_pid: int, log_level: str | None = None) -> list[str]:
    """The command of one child: a one-process worker that knows its supervisor."""
    level = ["--log-level", log_level] if log_level else []
    return [sys.executable, "-m", "outbox", *level, "worker", "--processes", "1",
            "--supervised-by", str(supervisor_pid)]


def exit_status(code: int) -> str:
    """``exit status 1`` or ``killed by SIGKILL`` for a child's return code."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass(frozen=True)
class Backoff:
    """Restart delays: ``first`` s, doubled at each quick death up to ``most`` s, back to
    ``first`` after a child lived ``reset_after`` s."""

    first: float = BACKOFF_FIRST
    most: float = BACKOFF_MAX
    reset_after: float = BACKOFF_RESET_AFTER


@dataclass
class Child:
    """One slot of the N: its current process, when that started, the next restart delay."""

    slot: int
    backoff: Backoff
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    delay: float | None = None

    def next_delay(self, now: float) -> float:
        """The wait before the next start; doubles for a quick death, resets after a long
        life."""
        if self.delay is None or now - self.started >= self.backoff.reset_after:
            self.delay = self.backoff.first
        delay, self.delay = self.delay, min(self.delay * 2, self.backoff.most)
        return delay


class Supervisor:
    """Runs ``count`` children of ``argv`` until stopped (see the module's docstring)."""

    def __init__(self, count: int, argv: Sequence[str], *, grace: float,
                 env: Mapping[str, str] | None = None, metrics_path: str | None = None,
                 drain_margin: float = DRAIN_MARGIN, backoff: Backoff = Backoff()) -> None:
        self.count = count
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        if metrics_path:
            self.env[MULTIPROC_ENV] = metrics_path
        self.metrics_path = metrics_path
        self.grace = grace + drain_margin
        self.children = [Child(i, backoff) for i in range(count)]

    @property
    def pids(self) -> list[int]:
        """The pids of the children running now."""
        return [c.process.pid for c in self.children
                if c.process is not None and c.process.returncode is None]

    async def run(self, stop: asyncio.Event) -> int:
        """Start the children, keep them running until ``stop``, then drain them: 0, or 2
        when a child refused to start."""
        for child in self.children:
            await self._start(child)
        log.info("supervising %d worker processes: %s", self.count,
                 " ".join(map(str, self.pids)), extra={"pids": self.pids})
        code = await self._watch(stop)
        await self._drain()
        log.info("all worker processes stopped")
        return code

    async def _start(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        child.started = time.monotonic()

    async def _watch(self, stop: asyncio.Event) -> int:
        """Restart what dies until ``stop`` is set (0) or a child exits 2 (2)."""
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        #: what each awaited future is: a child's exit, or the end of its restart delay
        waits: dict[asyncio.Future[Any], tuple[str, Child]] = {
            self._exit_of(c): ("exit", c) for c in self.children}
        try:
            while True:
                done, _ = await asyncio.wait({stopped, *waits},
                                             return_when=asyncio.FIRST_COMPLETED)
                if stopped in done:
                    return 0
                for future in done:
                    what, child = waits.pop(future)
                    if what == "restart":
                        await self._start(child)
                        waits[self._exit_of(child)] = ("exit", child)
                        continue
                    if self._reap(child) == EXIT_BAD_INPUT:
                        pid = child.process.pid if child.process else None
                        log.error("worker process %s refused to start (exit status 2, its "
                                  "reason above): stopping", pid, extra={"worker_pid": pid})
                        return EXIT_BAD_INPUT
                    waits[asyncio.ensure_future(self._backoff(child))] = ("restart", child)
        finally:
            stopped.cancel()
            for future, (what, _child) in waits.items():
                if what == "restart":
                    future.cancel()

    @staticmethod
    def _exit_of(child: Child) -> asyncio.Future[Any]:
        assert child.process is not None
        return asyncio.ensure_future(child.process.wait())

    async def _backoff(self, child: Child) -> None:
        """Log the unexpected exit and wait the child's backoff delay."""
        assert child.process is not None
        code = child.process.returncode or 0
        delay = child.next_delay(time.monotonic())
        log.warning("worker process %d exited unexpectedly (%s): restarting in %g s",
                    child.process.pid, exit_status(code), delay,
                    extra={"worker_pid": child.process.pid, "returncode": code,
                           "slot": child.slot, "restart_in": delay})
        await asyncio.sleep(delay)

    def _reap(self, child: Child) -> int:
        """A child's return code, its live gauges dropped from the metrics."""
        assert child.process is not None and child.process.returncode is not None
        if self.metrics_path:
            mark_dead(child.process.pid, self.metrics_path)
        return child.process.returncode

    async def _drain(self) -> None:
        """SIGTERM to every child; SIGKILL to those still running after the grace."""
        running = [c.process for c in self.children
                   if c.process is not None and c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            log.info("stopping %d worker processes (up to %g s)", len(running), self.grace)
            _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running],
                                         timeout=self.grace)
            for process in running:
                if process.returncode is None:
                    log.warning("worker process %d still running %g s after SIGTERM: killed",
                                process.pid, self.grace, extra={"worker_pid": process.pid})
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late)
        for child in self.children:
            if child.process is not None and child.process.returncode is not None:
                self._reap(child)


@contextlib.contextmanager
def metrics_dir() -> Iterator[str]:
    """A fresh directory for the children's metric files, removed afterwards."""
    path = tempfile.mkdtemp(prefix="outbox-metrics-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def collect_children(registry: Any, path: str) -> Any:
    """``registry`` with every child's metrics, read from the files in ``path``, added."""
    from prometheus_client import multiprocess

    collector: Any = multiprocess.MultiProcessCollector  # untyped in prometheus_client
    collector(registry, path=path)
    return registry


def mark_dead(pid: int, path: str) -> None:
    """Drop a child's live gauges (its counters stay: the sums must not go back)."""
    from prometheus_client import multiprocess

    mark: Any = multiprocess.mark_process_dead  # untyped in prometheus_client
    mark(pid, path)


async def watch_parent(parent: int, stop: asyncio.Event,
                       period: float = PARENT_CHECK_PERIOD) -> None:
    """Set ``stop`` once this process's parent is no longer ``parent`` (the supervisor died
    without draining us: we drain ourselves and exit)."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("supervisor %d is gone: stopping", parent, extra={"supervisor": parent})
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
