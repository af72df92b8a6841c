"""Micro-batching of Redis round trips: the calls of concurrent jobs leave in one write.

A worker has up to ``OUTBOX_CONCURRENCY`` jobs in flight, each making its pre-send and its
post-send round trip (:mod:`suppression.gate`). Sent one by one, each is a socket write, a
read wakeup and a pooled connection checkout; Redis reads each as its own request. The
:class:`Coalescer` holds a call for at most ``wait`` seconds (or until ``max_calls`` are
waiting), then sends the commands of every waiting call in one write (on a Cluster, one write
per node: :func:`suppression.roundtrip.execute`) and hands each caller its own replies.

What stays per job:

* an error reply belongs to the command that caused it: it is returned to that caller only
  (NOSCRIPT, a script error), never to its batch-mates;
* a call whose caller was cancelled while it waited (a timeout, a shutdown) is not sent;
* a failure of the round trip itself (Redis unreachable, a timeout) is raised to every call
  of the batch, and each caller's own retry (:class:`sender.pipeline.RedisCalls`) sends it
  again: exactly what each would have seen alone.

The commands of one call are consecutive in the write, in their order, so a call's plain
commands and its script keep the order the gate relies on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("outbox.gate")

Command = tuple[Any, ...]
Send = Callable[[list[Command]], Awaitable[list[Any]]]


class Coalescer:
    """Joins the Redis round trips of concurrent callers: ``await coalescer(commands)``
    returns the replies of ``commands`` (error replies returned, not raised), like
    :func:`~suppression.roundtrip.execute` on its own, but shares the write.

    ``wait``: the longest a call waits for batch-mates (seconds; 0 = the calls made in the
    same turn of the event loop); ``max_calls``: a batch of that many leaves at once;
    ``timeout``: of the shared round trip (a hung Redis fails the batch, not the worker)."""

    def __init__(self, send: Send, *, wait: float = 0.002, max_calls: int = 128,
                 timeout: float = 5.0) -> None:
        if wait < 0 or max_calls < 1:
            raise ValueError(f"need wait >= 0 and max_calls >= 1, not {wait}, {max_calls}")
        self._send = send
        self._wait = wait
        self._max = max_calls
        #: seconds a round trip may take (public: the gate's callers arm no timer of their own)
        self.timeout = timeout
        #: seconds between calls, a moving average (0 at first: the first calls of a worker
        #: are a prefetch burst)
        self._gap = 0.0
        self._last: float | None = None
        self._calls: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._running: set[asyncio.Task[None]] = set()  # referenced until done
        #: round trips made and calls carried (``calls / round_trips`` = the batch size)
        self.round_trips = 0
        self.calls = 0

    async def __call__(self, commands: list[Command]) -> list[Any]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last is not None:
            self._gap += (now - self._last - self._gap) / 8
        self._last = now
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._calls.append((commands, future))
        if len(self._calls) >= self._max:
            self._flush()
        elif self._timer is None:
            # wait only when the recent rate promises a batch-mate within the wait: at low
            # load a call leaves at once (with those made in the same turn of the loop)
            self._timer = (loop.call_later(self._wait, self._flush) if self._wait >= self._gap
                           else loop.call_soon(self._flush))
        return await future


    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        calls = [(c, f) for c, f in self._calls if not f.done()]  # a cancelled caller: not sent
        self._calls = []
        if calls:
            task = asyncio.get_running_loop().create_task(self._round_trip(calls))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _round_trip(self, calls: list[tuple[list[Command], asyncio.Future[list[Any]]]]
                          ) -> None:
        commands = [command for batch, _ in calls for command in batch]
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._send(commands)
        except BaseException as exc:  # the round trip failed: every caller sees it
            for _, future in calls:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.round_trips += 1
        self.calls += len(calls)
        at = 0
        for batch, future in calls:
            if not future.done():
                future.set_result(replies[at:at + len(batch)])
            at += len(batch)

    async def close(self) -> None:
        """Send what waits and wait for the round trips under way (shutdown)."""
        if self._calls:
            self._flush()
        if self._running:
            await asyncio.wait(set(self._running))
