"""``outbox dead list|show|replay|purge``: the dead letters in ``outbox.dead``.

Thin: parse, hold the queue (:class:`sender.deadletters.DeadQueue`: every message taken
unsettled, then returned, replayed or removed), print. ``replay`` reopens a job's record first
when it ended ``failed`` or ``rejected`` (:meth:`suppression.gate.Gate.reopen`, with a
``replayed`` timeline entry naming the actor and reason). ``list`` and ``show`` change nothing;
``replay`` and ``purge`` settle exactly the selected messages (by id and the filters) and write
one audit record each (``dead.replay`` / ``dead.purge``: actor, reason, the dead letter's id,
job and lane) to the account's audit stream (the global one when no account can be read).

Exit status: 0 done, 1 nothing selected or an id not found (nothing settled), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from outbox.runtime import CliError, account_arg, run_once, settings, table

EXIT_NOTHING = 1
LIST_COLUMNS = ("dead_at", "id", "account_id", "job_id", "channel", "lane", "reason")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dead`` to the ``outbox`` parser."""
    dead = sub.add_parser("dead", help="dead letters (outbox.dead): list, show, replay, purge"
                          ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dead.add_parser("list", help="the dead letters, oldest first (nothing is removed)")
    _filters(p, reason_flag="--reason")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = dead.add_parser("show", help="one dead letter: headers and body (nothing is removed)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    for name, verb in (("replay", "republish to its lane"), ("purge", "remove")):
        p = dead.add_parser(name, help=f"{verb} the selected dead letters, audited")
        p.add_argument("ids", metavar="ID", nargs="*", help="these dead letters (see list)")
        _filters(p, reason_flag="--matching")
        p.add_argument("--reason", required=True, help="why (kept in the audit record)")
        p.add_argument("--actor", required=True, help="who (kept in the audit record)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_settle, settle=name)


def _filters(p: argparse.ArgumentParser, *, reason_flag: str) -> None:
    p.add_argument("--account", metavar="ID", type=account_arg, help="only this account's")
    p.add_argument(reason_flag, dest="matching", metavar="TEXT",
                   help="only those whose reason contains TEXT (any case)")
    p.add_argument("--since", type=since_arg, metavar="WHEN",
                   help="only those dead-lettered since WHEN (ISO 8601, or 30m, 2h, 7d ago)")


def since_arg(value: str) -> datetime:
    """``--since``: :func:`sender.deadletters.parse_since` as an argparse type."""
    from sender.deadletters import parse_since

    try:
        return parse_since(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selection(args: argparse.Namespace, ids: list[str] | None = None) -> Any:
    from sender.deadletters import Filters

    return Filters(ids=frozenset(ids or ()), account_id=args.account, reason=args.matching,
                   since=args.since)


async def _on_bus(work: Any) -> Any:
    """Run ``work(bus)`` on a connected bus (the topology declared first)."""
    from sender.bus import Bus

    bus = Bus.from_settings(settings())
    await bus.connect()
    try:
        return await work(bus)
    finally:
        await bus.close()


def _nothing(message: str) -> int:
    print(f"outbox: {message}", file=sys.stderr)
    return EXIT_NOTHING


def cmd_list(args: argparse.Namespace) -> int:
    from sender.deadletters import listing

    selected = _selection(args)
    rows = [d.row() for d in run_once(_on_bus(lambda bus: listing(bus, selected)))]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(table(rows, LIST_COLUMNS))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sender.deadletters import find

    found = run_once(_on_bus(lambda bus: find(bus, args.id)))
    if found is None:
        return _nothing(f"no dead letter {args.id!r} in outbox.dead")
    if args.json:
        print(json.dumps(found, ensure_ascii=False, default=str))
    else:
        print(_show_text(found))
    return 0


def _show_text(found: dict[str, Any]) -> str:
    lines = [f"{k}: {'-' if found[k] in (None, '') else found[k]}"
             for k in (*LIST_COLUMNS, "record", "routing_key", "bytes")]
    lines += [f"header {k}: {v}" for k, v in found["headers"].items()]
    lines += ["", found["body"] + (" [cut]" if found["body_cut"] else "")]
    return "\n".join(lines)


def cmd_settle(args: argparse.Namespace) -> int:
    from sender.deadletters import NotInQueue

    if not (args.ids or args.account or args.matching or args.since):
        raise CliError(f"dead {args.settle}: name the dead letters (IDs) or select them with "
                       f"--account, --matching or --since")
    if not args.reason.strip() or not args.actor.strip():
        raise CliError("--reason and --actor must not be empty")
    try:
        done = run_once(_settle(args, _selection(args, args.ids)))
    except NotInQueue as exc:
        return _nothing(str(exc))
    except ValueError as exc:  # a replay of what has no lane
        raise CliError(str(exc)) from None
    if not done:
        return _nothing("no dead letter selected (nothing settled)")
    if args.json:
        print(json.dumps(done, ensure_ascii=False))
    else:
        verb = "replayed" if args.settle == "replay" else "purged"
        print(f"{verb} {len(done)}")
        print(table(done, ("id", "account_id", "job_id", "lane", "audit_id")))
    return 0


async def _settle(args: argparse.Namespace, selected: Any) -> list[dict[str, Any]]:
    """:func:`sender.deadletters.settle` on this command's Redis and broker."""
    from sender.connect import REDIS_DOWN, ping_redis, redis_client, redis_error
    from sender.deadletters import settle

    cfg = settings()
    url = cfg.redis_url.get_secret_value()
    redis = redis_client(url, cluster=cfg.redis_cluster, socket_timeout=10,
                         socket_connect_timeout=5)
    try:
        await ping_redis(redis, url)
        return list(await _on_bus(lambda bus: settle(
            bus, redis, action=args.settle, selected=selected, actor=args.actor,
            reason=args.reason, idempotency_ttl=cfg.idempotency_ttl)))
    except REDIS_DOWN as exc:
        raise redis_error(url, exc) from None
    finally:
        await redis.aclose()
