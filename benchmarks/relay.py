"""An aiosmtpd relay in the running event loop that can be stopped and started again on the
same port: what the relay-failover test and the node-loss benchmark (``benchmarks.faults``)
stop mid-run. ``stop()`` closes the port and every session's connection, either closed (the
pending replies flushed first, as a relay process that exits) or aborted (replies not yet sent
are lost, as a killed one)."""

from __future__ import annotations

import asyncio
from typing import Any, Self

from aiosmtpd.smtp import SMTP


class StoppableRelay:
    """Serves ``handler`` (an aiosmtpd handler: ``handle_DATA``…) on 127.0.0.1."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.sessions: list[SMTP] = []
        self.server: asyncio.Server | None = None
        self.port = 0  # a free port at the first start, the same one after

    async def start(self) -> Self:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._session, host="127.0.0.1", port=self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def _session(self) -> SMTP:
        session = SMTP(self.handler, hostname="relay", enable_SMTPUTF8=True)
        self.sessions.append(session)
        return session

    @property
    def serving(self) -> bool:
        return self.server is not None and self.server.is_serving()

    async def stop(self, *, abort: bool = False) -> None:
        """The port closed and every session's connection closed (``abort``: aborted)."""
        assert self.server is not None
        self.server.close()
        for session in self.sessions:
            if session.transport is not None:
                if abort:
                    session.transport.abort()
                else:
                    session.transport.close()
        self.sessions.clear()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        """How the worker's logs and ``outbox_relay_up`` name it."""
        return f"127.0.0.1:{self.port}"
