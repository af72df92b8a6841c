"""Settling deliveries: acks sent together, ``multiple`` where the tags are contiguous.

A job is acked only after its status event is confirmed (the pipeline awaits the event, then
:meth:`Acks.ack`). The acks asked for in one turn of the event loop leave together: per AMQP
channel, the run of delivery tags right above the last one settled that are all done is acked
with ONE ``basic.ack(multiple=True)`` of the highest; a done tag above a gap (a delivery still
being processed) is acked on its own at once, so a slow send never holds its successors'
prefetch slots. The frames of one flush on one channel leave in ONE socket write.

Why it is safe: RabbitMQ numbers the deliveries of a channel 1, 2, 3... with no gap, and
``multiple`` settles every outstanding tag up to the one named. The prefix is advanced only
over tags this process has settled itself (acked, or nacked through :meth:`Acks.nack`), so a
``multiple`` can never settle a delivery still in work or waiting for a slot. The state is kept
per aiormq channel object: after a reconnect the new channel starts again at tag 1 with a fresh
state, and the acks of deliveries of a closed channel fail like any ack on it (the broker has
requeued them already).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic

from sender.delivery import Delivery

log = logging.getLogger("outbox.worker")


@dataclass(slots=True)
class _Channel:
    """The tags of one AMQP channel: everything up to ``low`` is settled."""

    low: int = 0
    done: dict[int, asyncio.Future[None]] = field(default_factory=dict)  # to ack
    settled: set[int] = field(default_factory=set)  # above ``low``, settled on their own
    #: the frames of the previous flush still being written: the next flush writes after
    #: them (a ``multiple`` overtaking a single ack of a tag it covers would make that tag
    #: unknown to the broker, which closes the channel)
    writing: asyncio.Task[None] | None = None


class Acks:
    """Acks and nacks of the worker's deliveries; acks coalesced per loop turn."""

    def __init__(self) -> None:
        self._channels: dict[Any, _Channel] = {}
        self._scheduled = False
        self._writing: set[asyncio.Task[None]] = set()  # referenced until done
        #: ack frames written, the writes that carried them (one per channel and flush) and
        #: the deliveries they settled (tests, benchmarks)
        self.frames = 0
        self.writes = 0
        self.acked = 0

    async def ack(self, message: Delivery) -> None:
        """Ack ``message`` (with others of the same loop turn); returns once written, raises
        what the write raised (the channel is gone: the broker redelivers it)."""
        tag = message.delivery_tag
        if tag is None:  # not from a consumer with acks: nothing to settle
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        channel = message.channel
        state = self._channels.get(channel)
        if state is None:  # not setdefault: no _Channel built on every ack
            state = self._channels[channel] = _Channel()
        state.done[tag] = future
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await future

    async def nack(self, message: Delivery) -> None:
        """Return a delivery to its queue (marked redelivered, counted by a quorum queue)."""
        try:
            if message.delivery_tag is not None:
                state = self._channels.setdefault(message.channel, _Channel())
                if message.delivery_tag > state.low:
                    state.settled.add(message.delivery_tag)
            await message.nack(requeue=True)
        except Exception as exc:  # the channel died: the broker requeues it anyway
            log.debug("nack failed: %s", exc)

    def _flush(self) -> None:
        self._scheduled = False
        for channel, state in list(self._channels.items()):
            if not state.done:
                if getattr(channel, "is_closed", False):
                    del self._channels[channel]  # its deliveries are the broker's again
                continue
            done, state.done = state.done, {}
            top, frames = self._frames(state, done)
            task = asyncio.get_running_loop().create_task(
                self._write(channel, top, frames, done, after=state.writing))
            state.writing = task
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    @staticmethod
    def _frames(state: _Channel, done: dict[int, asyncio.Future[None]]
                ) -> tuple[int | None, list[int]]:
        """The tag to ack with ``multiple`` (None: none) and the tags to ack alone."""
        low, top = state.low, None
        while True:
            following = low + 1
            if following in done:
                top = following
            elif following not in state.settled:
                break
            state.settled.discard(following)
            low = following
        state.low = low
        alone = sorted(t for t in done if t > low)
        state.settled.update(alone)
        return top, alone

    async def _write(self, channel: Any, top: int | None, alone: list[int],
                     done: dict[int, asyncio.Future[None]],
                     after: asyncio.Task[None] | None) -> None:
        if after is not None and not after.done():
            await asyncio.wait([after])
        try:
            if getattr(channel, "is_closed", False):
                raise ChannelInvalidStateError(f"{channel!r} closed")
            frames = ([Basic.Ack(delivery_tag=top, multiple=True)] if top is not None else [])
            frames += [Basic.Ack(delivery_tag=tag) for tag in alone]
            await _send(channel, frames)
            self.frames += len(frames)
            self.writes += 1
        except Exception as exc:
            for future in done.values():
                if not future.done():
                    future.set_exception(exc)
            return
        self.acked += len(done)
        for future in done.values():
            if not future.done():
                future.set_result(None)


async def _send(channel: Any, frames: list[Basic.Ack]) -> None:
    """The ack frames of one flush in ONE write on ``channel`` (aiormq's ``basic_ack`` makes a
    write per frame: a socket send each), returning once written."""
    if not isinstance(channel, aiormq.Channel):  # not aiormq's: frame by frame
        for frame in frames:
            await channel.basic_ack(frame.delivery_tag, multiple=frame.multiple)
        return
    drain = channel.create_future()
    try:
        await channel.write_queue.put(ChannelFrame.marshall(
            frames=frames, channel_number=channel.number, drain_future=drain))
    except BaseException:
        drain.cancel()
        raise
    await drain


class DirectAcks(Acks):
    """One ack per delivery, written at once (tools and tests that settle by hand)."""

    async def ack(self, message: Delivery) -> None:
        await message.ack()
