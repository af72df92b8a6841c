"""``outbox bounces``: an SMTP listener for the bounces of a self-run relay.

Point the relay's bounce address (the VERP domain, or the envelope sender) here. Each message
is parsed as an RFC 3464 delivery report or an RFC 5965 feedback report; its events are
published to ``outbox.events`` and only then is the message accepted (250). A message that is
not a report (an auto-reply, say) is accepted and kept on ``outbox.dead`` with the reason, so
nothing vanishes; when the broker cannot take it, the answer is 451 and the relay retries.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP, Envelope, Session

from sender.bus import Bus, PublishFailed
from webhooks.events import publish_events
from webhooks.providers import dsn
from webhooks.providers.base import PayloadError

log = logging.getLogger("outbox.bounces")
MAX_REPORT_BYTES = 10 * 1024 * 1024


class BounceHandler:
    """aiosmtpd handler: parse, publish, then accept."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.accepted = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            events = dsn.parse(raw, envelope.rcpt_tos)
        except PayloadError as exc:
            return await self._not_a_report(raw, str(exc))
        try:
            count = await publish_events(self._bus, events)
        except PublishFailed as exc:
            log.warning("report not published, asking the relay to retry: %s", exc)
            return "451 4.3.0 Temporary failure, try again later"
        self.accepted += 1
        log.info("report accepted", extra={"events": count})
        return "250 2.0.0 Report accepted"

    async def _not_a_report(self, raw: bytes, reason: str) -> str:
        try:
            await self._bus.publish_dead(raw, f"bounces listener: {reason}", "bounces")
        except PublishFailed:
            return "451 4.3.0 Temporary failure, try again later"
        return "250 2.0.0 Accepted (not a report; kept for inspection)"


async def start_bounce_listener(bus: Bus, host: str, port: int) -> asyncio.Server:
    """Start the listener in the running loop."""
    handler = BounceHandler(bus)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=MAX_REPORT_BYTES, enable_SMTPUTF8=True,
                     hostname="outbox-bounces"),
        host=host, port=port)
    log.info("bounce listener on %s:%d", host, port)
    return server
