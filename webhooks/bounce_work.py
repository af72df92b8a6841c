"""What reading a message may cost the bounce listener (:mod:`webhooks.bounces`), and where it
runs: never on the listener's event loop.

=======================  =====================================================================
:class:`ReaderPool`      ``OUTBOX_BOUNCES_READERS`` reader processes; each message is read in
                         one (:func:`webhooks.providers.dsn.parse` on at most its first
                         ``OUTBOX_BOUNCES_SCAN_BYTES``) within ``OUTBOX_BOUNCES_READ_TIMEOUT``
                         seconds, else the reader is killed and started again
                         (:class:`ReadTimeout`)
:class:`SourceBudget`    per peer IP: message bytes received and CPU seconds spent reading its
                         messages, each drained over ``OUTBOX_BOUNCES_SOURCE_WINDOW`` seconds;
                         a peer past either limit is refused (450) until it has drained
=======================  =====================================================================

Why processes: the reader is pure Python and its regular expressions run in C holding the GIL,
so a thread would still stop the event loop for as long as one pattern runs; a process is
stopped for sure when a message takes too long. Reading is linear in the bytes examined
(``scripts/bounce_scan_cost.py`` measures it), so the timeout is a backstop, not the budget.

Exceptions::

    ReadTimeout            the message took over the read timeout (its reader was restarted)
    ReaderUnavailable      no reader could be started or it died (the relay is asked to retry)
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

from sender.provider_events import ProviderEvent
from webhooks.providers import dsn
from webhooks.providers.base import PayloadError

log = logging.getLogger("outbox.bounces")


class ReadTimeout(Exception):
    """A message took longer than the read timeout to read; its reader was restarted."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"not read: reading took over {seconds:g} s (the reader was stopped)")
        self.seconds = seconds


class ReaderUnavailable(Exception):
    """No reader process could read the message (it could not start, or it died)."""


@dataclass(frozen=True, slots=True)
class WorkLimits:
    """What one message and one peer may cost (the ``OUTBOX_BOUNCES_*`` settings)."""

    scan_bytes: int = dsn.SCAN_BYTES
    readers: int = 1
    read_timeout: float = 5.0
    source_bytes: int = 10 * 1024 * 1024
    source_cpu: float = 2.0
    source_window: float = 60.0
    idle_timeout: float = 30.0
    data_timeout: float = 30.0
    connection_timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings: Any) -> WorkLimits:
        """The limits of :class:`config.Settings` (``bounces_*``)."""
        return cls(**{name: getattr(settings, f"bounces_{name}")
                      for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """A message read: its events, or (``events`` None) why it is not a report; the reader's
    CPU seconds."""

    events: list[ProviderEvent] | None
    problem: str
    cpu: float


def read_message(raw: bytes, rcpt_tos: Sequence[str], message_id_domain: str,
                 scan_bytes: int) -> ReadOutcome:
    """Read one message here (what a reader process does for each request)."""
    started = time.process_time()
    events: list[ProviderEvent] | None = None
    try:
        events, problem = dsn.parse(raw, rcpt_tos, message_id_domain,
                                    scan_bytes=scan_bytes), ""
    except PayloadError as exc:
        problem = str(exc)
    except Exception as exc:  # the reader choked on hostile input: kept, never retried forever
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    return ReadOutcome(events, problem, time.process_time() - started)


def _serve(conn: Connection) -> None:
    """A reader process: one request at a time until its pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the listener's to handle
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(read_message(*request))


class _Reader:
    """One reader process and its end of the pipe."""

    def __init__(self) -> None:
        spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
        parent, child = spawn.Pipe()
        self.process: SpawnProcess = spawn.Process(
            target=_serve, args=(child,), name="outbox-bounce-reader", daemon=True)
        self.process.start()
        child.close()
        self.conn = parent

    def roundtrip(self, request: tuple[Any, ...]) -> ReadOutcome:
        """Send one request and wait for its answer (in a thread: both may block)."""
        self.conn.send(request)
        outcome: ReadOutcome = self.conn.recv()
        return outcome

    def stop(self) -> None:
        """Kill the process (it may be in the middle of a message) and close the pipe."""
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class ReaderPool:
    """``limits.readers`` reader processes, each reading one message at a time."""

    def __init__(self, limits: WorkLimits) -> None:
        self._limits = limits
        self._idle: asyncio.Queue[_Reader] = asyncio.Queue()
        self._all: list[_Reader] = []
        self._background: set[asyncio.Future[ReadOutcome]] = set()
        self._threads = ThreadPoolExecutor(max_workers=2 * limits.readers,
                                           thread_name_prefix="bounce-reader")

    async def start(self) -> None:
        """Start the reader processes."""
        for _ in range(self._limits.readers):
            self._add(_Reader())

    async def read(self, raw: bytes, rcpt_tos: Sequence[str],
                   message_id_domain: str) -> ReadOutcome:
        """Read one message in a reader process; :class:`ReadTimeout` past the read timeout,
        :class:`ReaderUnavailable` when the reader died."""
        reader = await self._idle.get()
        request = (raw, list(rcpt_tos), message_id_domain, self._limits.scan_bytes)
        pending = asyncio.get_running_loop().run_in_executor(self._threads, reader.roundtrip,
                                                             request)
        try:
            return await self._settle(reader, pending)
        except asyncio.CancelledError:  # the connection went away: the reader finishes first
            task = asyncio.ensure_future(self._settle(reader, pending))
            self._background.add(task)
            task.add_done_callback(self._forget)
            raise

    async def _settle(self, reader: _Reader, pending: asyncio.Future[ReadOutcome]
                      ) -> ReadOutcome:
        """The outcome of one request; the reader back in the pool, or replaced."""
        try:
            outcome = await asyncio.wait_for(asyncio.shield(pending), self._limits.read_timeout)
        except TimeoutError:
            pending.add_done_callback(_consume)
            self._replace(reader, f"a message took over {self._limits.read_timeout:g} s")
            raise ReadTimeout(self._limits.read_timeout) from None
        except (EOFError, OSError) as exc:
            self._replace(reader, f"the reader died ({type(exc).__name__}: {exc})")
            raise ReaderUnavailable(str(exc)) from exc
        self._idle.put_nowait(reader)
        return outcome

    def _forget(self, task: asyncio.Future[ReadOutcome]) -> None:
        self._background.discard(task)
        _consume(task)

    async def close(self) -> None:
        """Stop every reader."""
        for task in list(self._background):
            task.cancel()
        for reader in self._all:
            reader.stop()
        self._all.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _add(self, reader: _Reader) -> None:
        self._all.append(reader)
        self._idle.put_nowait(reader)

    def _replace(self, reader: _Reader, why: str) -> None:
        log.warning("bounce reader %s restarted: %s", reader.process.pid, why)
        reader.stop()
        self._all.remove(reader)
        self._add(_Reader())


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a future's exception nobody else will (so none is logged as lost)."""
    if not future.cancelled():
        future.exception()


class SourceBudget:
    """Per peer IP, two leaky buckets: message bytes and CPU seconds, each drained at its
    limit per ``window`` seconds. A peer whose bucket is full waits until it has drained
    (the least recently seen peers are forgotten past ``max_peers``)."""

    def __init__(self, max_bytes: int, max_cpu: float, window: float, *,
                 max_peers: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = (float(max_bytes), max_cpu)
        self._window = window
        self._max = max_peers
        self._clock = clock
        self._peers: dict[str, tuple[float, float, float]] = {}  # ip -> (bytes, cpu, at)

    def allows(self, peer: str) -> bool:
        """True while ``peer`` is under both limits."""
        used_bytes, used_cpu = self._drained(peer)
        return used_bytes < self._limits[0] and used_cpu < self._limits[1]

    def charge(self, peer: str, *, nbytes: int = 0, cpu: float = 0.0) -> None:
        """Count ``nbytes`` received and ``cpu`` seconds spent for ``peer``."""
        used_bytes, used_cpu = self._drained(peer)
        self._peers.pop(peer, None)
        self._peers[peer] = (used_bytes + nbytes, used_cpu + cpu, self._clock())
        if len(self._peers) > self._max:
            del self._peers[next(iter(self._peers))]

    def _drained(self, peer: str) -> tuple[float, float]:
        used_bytes, used_cpu, at = self._peers.get(peer, (0.0, 0.0, self._clock()))
        share = (self._clock() - at) / self._window  # the part of a window gone since
        return (max(0.0, used_bytes - share * self._limits[0]),
                max(0.0, used_cpu - share * self._limits[1]))
