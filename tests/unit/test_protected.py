"""A settling step outlives the cancellation of its delivery (a broker restart cancels the
consumers' tasks) and what it raises afterwards is logged once, never left to asyncio's
"Task exception was never retrieved"."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from sender.bus import PublishFailed
from sender.pipeline import protected


async def test_an_orphaned_step_runs_to_its_end_and_its_error_is_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger="outbox.pipeline")
    unretrieved: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unretrieved.append(ctx))
    finished = asyncio.Event()

    async def settle() -> None:
        await asyncio.sleep(0.05)
        finished.set()
        raise PublishFailed("outbox.status email.sent: channel closed")

    delivery = asyncio.create_task(protected(settle()))
    await asyncio.sleep(0.01)
    delivery.cancel()  # what aiormq does to its consumers' tasks when the channel closes
    with pytest.raises(asyncio.CancelledError):
        await delivery
    await asyncio.wait_for(finished.wait(), 1)
    await asyncio.sleep(0.01)
    gc.collect()
    assert unretrieved == []
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["after the delivery was cancelled: outbox.status email.sent: channel "
                      "closed; RabbitMQ redelivers the job"]
