"""Print Outbox's status events, one line each, until none has come for a while.

A CRM-side consumer in a few lines (``sender.client``): it reads the events waiting in
Outbox's own queue, ``outbox.status`` (and acknowledges them, so each is printed once), then
those that follow, and stops after ``--idle`` seconds without one. The broker is
``OUTBOX_AMQP_URL``'s. Usage: ``.venv/bin/python examples/status_events.py [--idle 5] [--json]``.
A real CRM binds a queue of its own instead (README, "Status events").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from config import load_settings  # noqa: E402
from sender.client import Outbox  # noqa: E402
from sender.models import Event, RecipientEvent  # noqa: E402


async def print_events(idle: float, as_json: bool) -> int:
    """Print events until ``idle`` seconds pass without one; return how many were printed."""
    count = 0
    loop = asyncio.get_running_loop()
    async with Outbox.from_settings(load_settings()) as outbox:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(idle) as quiet:
                async for event in outbox.events(queue="outbox.status"):
                    count += 1
                    print(_line(event, as_json), flush=True)
                    quiet.reschedule(loop.time() + idle)
    return count


def _line(event: Event, as_json: bool) -> str:
    if as_json:
        return json.dumps({"routing_key": event.routing_key, **event.model_dump(mode="json")},
                          ensure_ascii=False)
    if isinstance(event, RecipientEvent):  # recipient.<channel>.<change>
        return (f"{event.at:%H:%M:%S}  {event.routing_key:<18} {event.address:<20} "
                f"{event.change:<10} {event.source}")
    return (f"{event.at:%H:%M:%S}  {event.routing_key:<18} {event.id:<20} "
            f"{event.status:<10} {event.reason or '-'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=5.0,
                        help="stop after this many seconds without an event (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON event a line")
    args = parser.parse_args()
    count = asyncio.run(print_events(args.idle, args.json))
    print(f"({count} event{'' if count == 1 else 's'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
