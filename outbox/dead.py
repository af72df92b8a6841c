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
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from outbox.runtime import CliError, account_arg, run_once, settings, table

EXIT_NOTHING = 1
LIST_COLUMNS = ("dead_at", "id", "account_id", "job_id", "channel", "lane", "reason")
_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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
    """``--since``: an ISO 8601 time (UTC when it names no zone) or an age (``90s``, ``30m``,
    ``2h``, ``7d``)."""
    ago = _AGO.match(value.strip())
    if ago:
        return datetime.now(UTC) - timedelta(seconds=int(ago[1]) * _UNITS[ago[2]])
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {value!r} (ISO 8601, or an age such as 30m, 2h, 7d)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _selection(args: argparse.Namespace, ids: list[str] | None = None) -> Any:
    from sender.deadletters import Filters

    return Filters(ids=frozenset(ids or ()), account_id=args.account, reason=args.matching,
                   since=args.since)


async def _held(work: Any) -> Any:
    """Run ``work(queue)`` on ``outbox.dead`` held for this command; whatever is still held
    afterwards (an error included) goes back."""
    from sender.bus import Bus
    from sender.deadletters import DeadQueue

    bus = Bus.from_settings(settings())
    await bus.connect()
    try:
        queue = DeadQueue(bus)
        try:
            await queue.scan()
            return await work(queue)
        finally:
            await queue.return_all()
    finally:
        await bus.close()


def _nothing(message: str) -> int:
    print(f"outbox: {message}", file=sys.stderr)
    return EXIT_NOTHING


def cmd_list(args: argparse.Namespace) -> int:
    selected = _selection(args)

    async def work(queue: Any) -> list[dict[str, Any]]:
        chosen = [dead for _, dead in queue.held if selected.match(dead)]
        chosen.sort(key=lambda d: d.dead_at or datetime.min.replace(tzinfo=UTC))  # stable
        return [dead.row() for dead in chosen]

    rows = run_once(_held(work))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(table(rows, LIST_COLUMNS))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sender.deadletters import BODY_SHOWN

    async def work(queue: Any) -> dict[str, Any] | None:
        for message, dead in queue.held:
            if dead.id == args.id:
                body = message.body[:BODY_SHOWN].decode("utf-8", "replace")
                return {**dead.row(), "routing_key": dead.routing_key,
                        "headers": _plain(dead.headers), "body": body,
                        "body_cut": len(message.body) > BODY_SHOWN}
        return None

    found = run_once(_held(work))
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
    if not (args.ids or args.account or args.matching or args.since):
        raise CliError(f"dead {args.settle}: name the dead letters (IDs) or select them with "
                       f"--account, --matching or --since")
    if not args.reason.strip() or not args.actor.strip():
        raise CliError("--reason and --actor must not be empty")
    selected = _selection(args, args.ids)
    done, missing = run_once(_settle(args, selected))
    if missing:
        return _nothing(f"not in outbox.dead: {', '.join(sorted(missing))} (nothing settled)")
    if not done:
        return _nothing("no dead letter selected (nothing settled)")
    if args.json:
        print(json.dumps(done, ensure_ascii=False))
    else:
        verb = "replayed" if args.settle == "replay" else "purged"
        print(f"{verb} {len(done)}")
        print(table(done, ("id", "account_id", "job_id", "lane", "audit_id")))
    return 0


async def _settle(args: argparse.Namespace, selected: Any
                  ) -> tuple[list[dict[str, Any]], set[str]]:
    """Settle the selection, then audit each; ``(rows, ids not found)``. Redis is checked
    before anything is settled, so an audit record is not missed for want of it."""
    from sender.connect import ping_redis, redis_client
    from sender.topology import JOBS_EXCHANGE
    from suppression.gate import Gate
    from suppression.store import Audit

    cfg = settings()
    url = cfg.redis_url.get_secret_value()
    redis = redis_client(url, cluster=cfg.redis_cluster, socket_timeout=10,
                         socket_connect_timeout=5)
    try:
        await ping_redis(redis, url)

        gate = Gate(redis, idempotency_ttl=cfg.idempotency_ttl)

        async def reopen(dead: Any) -> None:
            """A job's record reopened (when it ended failed or rejected) before its copy
            goes back to its lane; provider events and unreadable jobs have none."""
            if dead.account_id and dead.job_id and dead.lane[0] == JOBS_EXCHANGE:
                await gate.reopen(dead.account_id, dead.job_id, actor=args.actor,
                                  reason=args.reason)

        async def work(queue: Any) -> tuple[list[Any], set[str]]:
            missing = set(args.ids) - {dead.id for _, dead in queue.held}
            if missing:
                return [], missing
            try:
                if args.settle == "replay":
                    return await queue.replay(selected, time.time(), reopen), set()
                return await queue.purge(selected), set()
            except ValueError as exc:
                raise CliError(str(exc)) from None

        done, missing = await _held(work)
        audit = Audit(redis)
        rows = []
        for dead in done:
            row = dead.row()
            row["audit_id"] = await audit.record(
                dead.account_id, actor=args.actor, action=f"dead.{args.settle}",
                reason=args.reason, message=dead.id, job=dead.job_id or "",
                lane=row["lane"] or "", dead_reason=dead.reason[:500])
            rows.append(row)
        return rows, missing
    finally:
        await redis.aclose()


def _plain(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers as JSON can hold them (bytes as text, times as ISO 8601)."""
    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value
    return {k: plain(v) for k, v in headers.items()}
