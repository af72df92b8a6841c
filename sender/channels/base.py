"""The one small interface every delivery channel implements.

Exceptions::

    NotSent                the channel is stopping and the send did not start: nothing reached
                           the provider, the job may be delivered again untouched
    SendFailure            the provider did not take the message; ``outcome`` says how
                           (kind hard/soft/block/complaint/transient, reason) and whether
                           a retry may help (``outcome.retryable``)
    OutcomeUnknown         the whole message went to the provider but its answer never came
                           (the connection lost, or no answer in time): it may have been
                           taken. Retried only as after a crash (the pipeline's rule)
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from suppression.classify import Outcome


@dataclass(frozen=True, slots=True)
class SendResult:
    """The provider accepted the message."""

    provider: str
    provider_message_id: str | None = None
    detail: str | None = None
    extra: dict[str, Any] | None = None  # added to the status event (e.g. SMS segments)


class NotSent(Exception):
    """The channel stopped before this send started (``Channel.stop``)."""


class OutcomeUnknown(Exception):
    """The message was handed over whole (an SMTP message up to its final dot) and no answer
    came: the provider may have taken it. Not a :class:`SendFailure`: sending it again may
    deliver it twice, so the pipeline retries it only the way it retries a crash."""

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(f"{provider}: outcome unknown: {detail}")
        self.provider = provider
        self.detail = detail


class Slots:
    """A semaphore whose waiters give up when it is closed: after :meth:`close`, every
    ``acquire`` (waiting or new) raises :class:`NotSent`. Waiters are futures, not tasks:
    nothing is spent on the uncontended path. ``acquire(first=True)`` (a priority-lane job)
    waits ahead of every other waiter: a password reset does not queue behind a blast for an
    SMTP connection either."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._first: deque[asyncio.Future[None]] = deque()
        self.closed = False

    @property
    def free(self) -> int:
        """Slots not in use (tests, metrics)."""
        return self._free

    async def acquire(self, *, first: bool = False) -> None:
        if self.closed:
            raise NotSent("stopping")
        if self._free > 0 and not self._waiters and not self._first:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._first if first else self._waiters
        queue.append(waiter)
        try:
            await waiter  # release() hands the slot over by setting the result
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed over just as we were cancelled: pass it on
            elif waiter in queue:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in (self._first, self._waiters):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1

    def turn(self, *, first: bool = False) -> _Turn:
        """``async with slots.turn(first=...)``: a slot, ahead of the others when ``first``
        (a class, not ``asynccontextmanager``: its generator cost twice as much, twice a
        message)."""
        return _Turn(self, first)

    def close(self) -> None:
        """No slot is given out any more; the waiters raise :class:`NotSent` now."""
        self.closed = True
        for queue in (self._first, self._waiters):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_exception(NotSent("stopping"))

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class _Turn:
    """One ``async with`` of :meth:`Slots.turn`: a slot taken on entry (or NotSent), given
    back on exit whatever happened."""

    __slots__ = ("_slots", "_first")

    def __init__(self, slots: Slots, first: bool) -> None:
        self._slots = slots
        self._first = first

    async def __aenter__(self) -> None:
        await self._slots.acquire(first=self._first)

    async def __aexit__(self, *_: object) -> None:
        self._slots.release()


class SendFailure(Exception):
    """The provider refused or could not be reached; ``outcome`` classifies it.

    ``status`` names the job's final status when it is not the kind's default (a number that
    cannot take SMS is ``rejected``; Twilio's 21610 is ``unsubscribed``); ``suppress`` the
    suppression reason the refusal teaches about the recipient (``invalid`` globally,
    ``sms_stop`` for the job's account)."""

    def __init__(self, outcome: Outcome, detail: str, provider: str,
                 status: str | None = None, suppress: str | None = None) -> None:
        super().__init__(f"{provider}: {outcome.kind}/{outcome.reason}: {detail}")
        self.outcome = outcome
        self.detail = detail
        self.provider = provider
        self.status = status
        self.suppress = suppress


class Channel(Protocol):
    """Send one job; ``stop`` makes every send not yet started raise :class:`NotSent`
    (those in flight finish); ``close`` releases connections."""

    name: str
    provider: str

    async def send(self, job: Any, sender: tuple[str, ...] | None = None) -> SendResult:
        """``sender``: the account's sender information, given for marketing jobs."""
        ...

    def stop(self) -> None: ...

    async def close(self) -> None: ...
