"""``outbox destinations``: the destinations slowed or paused by slow-down replies
(:mod:`suppression.destinations`), why (the reply) and until when; ``destinations clear
NAME`` puts one back to normal now.

Exit status: 0 listed (an empty list too) or cleared, 1 ``clear`` of a destination that has
no record, 2 bad input; Redis unreachable, 1 with one line naming ``OUTBOX_REDIS_URL``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from outbox.runtime import settings, table, with_redis

EXIT_NOTHING = 1
#: a destination's name as listed: ``<group>@<host>:<port>`` (printable, no space)
_NAME = re.compile(r"[!-~]{1,200}@[!-~]{1,300}")
COLUMNS = ("destination", "relay", "state", "rate", "until", "rule", "reply")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``destinations`` to the ``outbox`` parser."""
    p = sub.add_parser("destinations", help="destinations slowed or paused by slow-down "
                       "replies (Gmail 421 4.7.28...): why and until when")
    p.add_argument("--all", action="store_true",
                   help="also those back to normal whose record is still kept")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    actions = p.add_subparsers(dest="action", metavar="[clear]")
    c = actions.add_parser("clear", help="put a destination back to normal now")
    c.add_argument("name", metavar="DESTINATION@RELAY", type=destination_arg,
                   help="as listed: google@host:port")
    c.set_defaults(func=cmd_clear)


def destination_arg(text: str) -> str:
    """``type=`` of a destination's name: argparse's usage error (exit 2) for what cannot be
    one (no ``@``, white space or control characters, too long)."""
    if not _NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text[:60]!r} is not a destination: DESTINATION@RELAY as `outbox destinations` "
            "lists it (e.g. google@relay.example:587)")
    return text


def cmd_list(args: argparse.Namespace) -> int:
    from suppression.destinations import DestinationStore, Params, listing

    cfg = settings()

    async def work(redis: Any) -> dict[str, Any]:
        return await DestinationStore(redis, Params.from_settings(cfg)).all()

    records = with_redis(cfg, work)
    rows = listing(records, time.time(), Params.from_settings(cfg), everything=args.all)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(table(rows, COLUMNS))
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    from suppression.destinations import DestinationStore, Params

    cfg = settings()

    async def work(redis: Any) -> bool:
        return await DestinationStore(redis, Params.from_settings(cfg)).clear(args.name)

    if not with_redis(cfg, work):
        print(f"outbox: no slowed or paused destination {args.name!r}")
        return EXIT_NOTHING
    print(f"{args.name}: back to normal (each worker sees it within a second)")
    return 0
