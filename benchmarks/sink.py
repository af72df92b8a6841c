"""Sinks: where the systems under test deliver, and the honest count of what was accepted.

``SmtpSink`` runs Postfix's ``smtp-sink`` (C, event-driven, throws messages away) as its own
process on a free loopback port. With ``-c`` it writes ``sess=N quit=N mesg=N\\r`` to stdout
each time a message's final "." is accepted; a reader thread reads that pipe in large chunks
and keeps only the last ``mesg=`` value of each chunk with the time the chunk was read, so
counting costs the sink one small write per message and the harness almost nothing (no dump
files: ``-d``/``-D`` would put disk writes on the sink's path).

A later SMS workload adds a sink of its own (an HTTP stand-in) with the same interface:
``start()``, ``mark()`` → a ``Window``, ``stop()``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SMTP_SINK = "/usr/sbin/smtp-sink"
_MESG = re.compile(rb"mesg=(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], failure: str,
                   timeout: float = 10) -> None:
    """Until ``proc`` accepts connections on 127.0.0.1:``port``; exits with ``failure`` when
    it exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(failure)
        time.sleep(0.05)


@dataclass
class Window:
    """Messages accepted since ``mark()``: count, and monotonic times of the first and last."""

    base: int
    first: float | None = None
    last: float | None = None
    count: int = 0
    on_first: list[Callable[[], None]] = field(default_factory=list)


class SmtpSink:
    """``smtp-sink -c`` on 127.0.0.1:<free port>, counted through its stdout pipe."""

    def __init__(self, log_dir: Path, backlog: int = 1024) -> None:
        self.port = free_port()
        self.backlog = backlog
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.total = 0
        self._lock = threading.Lock()
        self._window: Window | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        # -u root: required when started as root; -m: enough simultaneous sessions.
        user = ["-u", "root"] if os.geteuid() == 0 else []
        return [SMTP_SINK, "-c", *user, "-m", "512", f"127.0.0.1:{self.port}",
                str(self.backlog)]

    def start(self) -> None:
        if not Path(SMTP_SINK).exists():
            raise SystemExit(f"{SMTP_SINK} not found: apt-get install postfix")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        err = open(self.log_dir / "smtp-sink.log", "ab")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=err,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._thread = threading.Thread(target=self._read, name="smtp-sink-reader",
                                        daemon=True)
        self._thread.start()
        wait_listening(self.port, self.proc, "smtp-sink did not start (see smtp-sink.log)")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            now = time.monotonic()
            i = chunk.rfind(b"mesg=")
            if i < 0:
                continue
            m = _MESG.match(chunk, i)
            if not m:  # cut in the middle of the number: the next chunk finishes it
                continue
            n = int(m.group(1))
            callbacks: list[Callable[[], None]] = []
            with self._lock:
                if n <= self.total:
                    continue
                self.total = n
                w = self._window
                if w is not None and n > w.base:
                    if w.first is None:
                        w.first = now
                        callbacks = w.on_first
                    w.last = now
                    w.count = n - w.base
            for cb in callbacks:
                cb()

    def mark(self, on_first: Callable[[], None] | None = None) -> Window:
        """Start a new counting window (messages accepted from now on)."""
        with self._lock:
            self._window = Window(self.total, on_first=[on_first] if on_first else [])
            return self._window

    def stop(self) -> None:
        """Stop the sink by its PID."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
