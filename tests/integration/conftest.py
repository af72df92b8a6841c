"""Fixtures shared by the integration tests."""

from __future__ import annotations

import asyncio
import faulthandler
import io
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.helpers import cli_runner


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, amqp_url: str,
        backend_redis_url: tuple[str, bool]) -> Any:
    """``await cli("accounts", "show", ...)``: the CLI in process on this test's services
    (its Redis db, or the Redis Cluster for a test marked ``backends``)."""
    url, cluster = backend_redis_url
    return cli_runner(monkeypatch, amqp_url, url, cluster=cluster)


#: Seconds after which a test's asyncio tasks and threads are dumped to its stderr: before
#: pytest-timeout's 120 s, whose own report shows only the main thread at its selector.
HANG_DUMP_AFTER = 90.0


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks(loop)
    print(f"--- {len(tasks)} asyncio tasks after {HANG_DUMP_AFTER:.0f} s ---", file=out)
    for task in tasks:
        task.print_stack(limit=12, file=out)
    sys.stderr.write(out.getvalue())


@pytest.fixture(autouse=True)
async def _hang_watch() -> AsyncIterator[None]:
    """A test still running after ``HANG_DUMP_AFTER`` s prints every thread's stack and, if
    its event loop still turns, every asyncio task's: a hang is then found from one CI log."""
    loop = asyncio.get_running_loop()

    def dump() -> None:
        sys.stderr.write(f"--- test still running after {HANG_DUMP_AFTER:.0f} s ---\n")
        faulthandler.dump_traceback(all_threads=True)
        loop.call_soon_threadsafe(_dump_tasks, loop)

    timer = threading.Timer(HANG_DUMP_AFTER, dump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
