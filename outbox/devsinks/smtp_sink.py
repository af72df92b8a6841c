"""A capturing SMTP server for development and tests: every message lands in a directory
as an ``.eml`` file (written to a temporary name, then renamed, so a reader never sees half
a message). Runs in the caller's event loop (aiosmtpd's SMTP protocol on ``create_server``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("outbox.devsinks.smtp")


class MaildirHandler:
    """aiosmtpd handler writing each accepted message to ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count()
        self.received = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        name = f"{time.time_ns()}-{os.getpid()}-{next(self._counter)}.eml"
        tmp = self.directory / f".{name}.tmp"
        data = envelope.original_content or b""
        header = (f"X-Outbox-Envelope-From: {envelope.mail_from}\r\n"
                  f"X-Outbox-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        tmp.write_bytes(header + data)
        tmp.rename(self.directory / name)
        self.received += 1
        return f"250 2.0.0 Ok: queued as {name[:-4]}"


async def start_smtp_sink(directory: Path, host: str = "127.0.0.1",
                          port: int = 2525) -> tuple[asyncio.Server, MaildirHandler]:
    """Start the sink; returns the server (``.close()`` it) and the handler (counts)."""
    handler = MaildirHandler(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True, decode_data=False,
                     data_size_limit=50 * 1024 * 1024, hostname="outbox-dev-sink"),
        host=host, port=port)
    log.info("SMTP sink on %s:%d writing to %s", host, port, directory)
    return server, handler
