"""What happened to a message: ``outbox jobs show``, ``outbox jobs history``, ``outbox events``.

Thin: parse, read (:mod:`suppression.history` for Redis, :meth:`sender.client.Outbox.events`
for the broker), print a table with headers (``--json``: the records). Times are ISO 8601
UTC. Exit status: 0 found, 1 nothing found or an unknown account (one line on stderr), 2 bad
input (a malformed account or job id, a bad address or status).

``outbox events`` reads ``outbox.status`` through a queue of its own (exclusive, auto-delete,
at most :data:`sender.client.EVENTS_MAX_LENGTH` waiting): it sees what is published while it
runs and takes nothing from ``outbox.status`` or the CRM's queues. Without ``--follow`` it
listens ``--wait`` seconds (default 10) and exits (1 if nothing came); with ``--follow`` it runs
until interrupted (Ctrl-C, SIGTERM: exit 0). ``--count N`` stops after N events either way.
It prints job and account status events and recipient events (``recipient.<channel>.<change>``);
``--type status`` or ``--type recipient`` keeps one kind, ``--status`` the named statuses and
recipient changes (``--status unsubscribed``: job events of that status and recipient events
of that change), both by the routing keys its queue is bound with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from outbox.runtime import (
    CliError,
    NotFound,
    account_arg,
    job_arg,
    positive_int,
    run_once,
    settings,
    with_redis,
)

EXIT_NOTHING = 1
EVENTS_WAIT = 10.0  # seconds ``outbox events`` listens without --follow
CELL_CHARS = 60  # of a table cell (``--json`` has everything)
#: ``outbox events --type``: job and account status events, or recipient events
EVENT_TYPES = ("status", "recipient")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``jobs`` and ``events`` to the ``outbox`` parser."""
    jobs = sub.add_parser("jobs", help="what happened to a job; a recipient's recent jobs"
                          ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = jobs.add_parser("show", help="a job's current status and timeline")
    p.add_argument("account_id", metavar="ACCOUNT", type=account_arg)
    p.add_argument("job_id", metavar="ID", type=job_arg)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs_show)
    p = jobs.add_parser("cancel", help="cancel a job waiting for its send_at (exit 0 when "
                        "cancelled, 1 when already sent or unknown)")
    p.add_argument("account_id", metavar="ACCOUNT", type=account_arg)
    p.add_argument("job_id", metavar="ID", type=job_arg)
    p.add_argument("--reason", default="", help="kept in the job's timeline")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs_cancel)
    p = jobs.add_parser("history", help="a recipient's recent jobs, newest first")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--account", metavar="ID", type=account_arg,
                   help="one account's jobs (default: every account)")
    p.add_argument("--channel", help="the address's channel (default: guessed from it)")
    p.add_argument("--limit", type=positive_int, default=20, metavar="N",
                   help="at most N jobs (default 20, at most 100)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs_history)

    p = sub.add_parser("events", help="status events as they are published (own queue)")
    p.add_argument("--follow", action="store_true", help="run until interrupted")
    p.add_argument("--account", metavar="ID", type=account_arg, help="only this account's events")
    p.add_argument("--status", metavar="S,...",
                   help="only these statuses or recipient changes (e.g. bounced,failed)")
    p.add_argument("--type", choices=EVENT_TYPES, dest="event_type",
                   help="only status events (jobs, accounts) or only recipient events")
    p.add_argument("--wait", type=float, default=EVENTS_WAIT, metavar="SECONDS",
                   help=f"without --follow, listen this long (default {EVENTS_WAIT:g})")
    p.add_argument("--count", type=positive_int, metavar="N", help="stop after N events")
    p.add_argument("--json", action="store_true", help="one JSON event a line")
    p.set_defaults(func=cmd_events)


# --- plumbing ----------------------------------------------------------------------------


def _redis(work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(redis)``; Redis unreachable → one line naming OUTBOX_REDIS_URL (exit 1)."""
    return with_redis(settings(), work)


async def _require_account(redis: Any, account_id: str) -> None:
    from suppression.reputation import Policy
    from suppression.store import AccountStore

    if not await AccountStore(redis, Policy()).exists(account_id):
        raise NotFound(f"unknown account {account_id!r}")


def _nothing(message: str) -> int:
    print(f"outbox: {message}", file=sys.stderr)
    return EXIT_NOTHING


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    flat = " ".join(str(value).split())
    return flat if len(flat) <= CELL_CHARS else flat[:CELL_CHARS - 1] + "…"


def table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> str:
    """Rows under a header line, columns padded (``(title, field)`` each)."""
    cells = [[title for title, _ in columns]]
    cells += [[_cell(r.get(field)) for _, field in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _print(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, ensure_ascii=False) if as_json else text(data))


# --- jobs --------------------------------------------------------------------------------

TIMELINE_COLUMNS = (("AT", "at"), ("STATUS", "status"), ("ATTEMPT", "attempt"),
                    ("PROVIDER", "provider"), ("PROVIDER MESSAGE ID", "provider_message_id"),
                    ("REASON", "reason"), ("DETAIL", "detail"))
HISTORY_COLUMNS = (("FIRST SEEN", "first_seen"), ("ACCOUNT", "account_id"), ("JOB", "id"),
                   ("CHANNEL", "channel"), ("STATUS", "status"), ("REASON", "reason"),
                   ("UPDATED", "updated"))


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from suppression.history import job_story

    async def work(redis: Any) -> dict[str, Any] | None:
        story = await job_story(redis, args.account_id, args.job_id)
        if story is None:
            await _require_account(redis, args.account_id)
        return story

    story = _redis(work)
    if story is None:
        return _nothing(f"no record of job {args.job_id!r} of account {args.account_id!r} "
                        f"(unknown, or older than OUTBOX_IDEMPOTENCY_TTL)")
    _print(_with_segments(story), args.json, _story_text)
    return 0


def _with_segments(story: dict[str, Any]) -> dict[str, Any]:
    """An SMS's ``segments`` and ``encoding``, as its ``sent`` entry's detail says them (the
    Twilio channel writes them there: :func:`sender.channels.sms_segments.describe`)."""
    from sender.channels.sms_segments import described

    for entry in story["timeline"]:
        found = described(entry.get("detail")) if entry.get("status") == "sent" else None
        if found:
            return {**story, "encoding": found[0], "segments": found[1]}
    return story


def _story_text(story: dict[str, Any]) -> str:
    head = (f"job {story['id']} of account {story['account_id']}: {story['status']}"
            + (f", due {story['due']}" if story.get("due") and story["status"] == "scheduled"
               else "")
            + (f" ({story['reason']})" if story["reason"] not in (None, story["status"])
               else "")
            + (f", updated {story['updated']}" if story["updated"] else ""))
    if "segments" in story:
        head += (f"\nSMS: {story['segments']} segment{'' if story['segments'] == 1 else 's'}, "
                 f"{story['encoding']}")
    return f"{head}\n{table(story['timeline'], TIMELINE_COLUMNS)}"


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    from suppression.schedule import Schedule

    cfg = settings()
    detail = f"cli: {args.reason}" if args.reason else "cli"

    async def work(redis: Any) -> Any:
        result = await Schedule(redis, idempotency_ttl=cfg.idempotency_ttl,
                                timeline_ttl=cfg.timeline_ttl).cancel(
            args.account_id, args.job_id, detail=detail[:500])
        if not result.ok and not result.status:
            await _require_account(redis, args.account_id)
        return result

    result = _redis(work)
    said = result.message(args.account_id, args.job_id)
    if args.json:
        print(json.dumps({"account_id": args.account_id, "id": args.job_id,
                          "cancelled": result.ok, "outcome": result.outcome,
                          "due": result.due, "message": said}))
    elif result.ok:
        print(said)
    if not result.ok:
        return _nothing(said) if not args.json else EXIT_NOTHING
    return 0


def cmd_jobs_history(args: argparse.Namespace) -> int:
    from suppression import channels
    from suppression.address import BadAddress
    from suppression.history import MAX_HISTORY, recipient_history

    if args.channel is not None and args.channel not in channels.names():
        raise CliError(f"--channel must be {channels.choices()}, not {args.channel!r}")

    async def work(redis: Any) -> list[dict[str, Any]]:
        try:
            rows = await recipient_history(redis, args.address, account_id=args.account,
                                           channel=args.channel,
                                           limit=min(args.limit, MAX_HISTORY))
        except BadAddress as exc:
            raise CliError(f"{args.address!r}: {exc}") from None
        if not rows and args.account:
            await _require_account(redis, args.account)
        return rows

    rows = _redis(work)
    if not rows:
        scope = f" of account {args.account!r}" if args.account else ""
        return _nothing(f"no recent jobs{scope} for {args.address}")
    _print(rows, args.json, lambda rs: table(rs, HISTORY_COLUMNS))
    return 0


# --- events ------------------------------------------------------------------------------


def _statuses(value: str | None) -> list[str]:
    """``--status bounced,failed`` checked against the job statuses, account states and
    recipient changes."""
    wanted = [s.strip() for s in (value or "").split(",") if s.strip()]
    known = _known_statuses()
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise CliError(f"unknown status {', '.join(map(repr, unknown))}: one of "
                       f"{', '.join(dict.fromkeys(known))}")
    return wanted


def _known_statuses() -> tuple[str, ...]:
    from sender.models import RECIPIENT_CHANGES, STATUSES
    from suppression.reputation import STATES

    return (*STATUSES, *STATES, *RECIPIENT_CHANGES)


def event_bindings(statuses: list[str], event_type: str | None) -> list[str]:
    """The routing keys ``outbox events`` binds: status events are ``<channel>.<status>`` and
    ``account.<state>`` (two words), recipient events ``recipient.<channel>.<change>``
    (three); :class:`CliError` when ``--status`` names nothing of ``--type``."""
    from sender.models import RECIPIENT_CHANGES, STATUSES
    from suppression.reputation import STATES

    kinds = [event_type] if event_type else list(EVENT_TYPES)
    wanted = list(dict.fromkeys(statuses))
    bindings: list[str] = []
    if "status" in kinds:
        named = [s for s in wanted if s in (*STATUSES, *STATES)]
        bindings += [f"*.{s}" for s in named] if wanted else ["*.*"]
    if "recipient" in kinds:
        named = [s for s in wanted if s in RECIPIENT_CHANGES]
        bindings += [f"recipient.*.{s}" for s in named] if wanted else ["recipient.#"]
    if not bindings:
        raise CliError(f"--status {','.join(wanted)} names no {event_type} event")
    return ["#"] if bindings == ["*.*", "recipient.#"] else bindings


def event_line(event: Any) -> str:
    """One readable line of a status or recipient event."""
    if getattr(event, "type", None) == "recipient":
        return "  ".join([_utc(event.at), event.routing_key or
                          f"recipient.{event.channel}.{event.change}",
                          event.account_id or "-", event.address, f"source={event.source}"])
    parts = [_utc(event.at), event.routing_key or f"{event.channel}.{event.status}",
             event.account_id or "-", event.id]
    parts += [f"{name}={_cell(getattr(event, name))}"
              for name in ("attempt", "reason", "provider", "detail")
              if getattr(event, name) not in (None, "")]
    return "  ".join(parts)


def _utc(at: Any) -> str:
    """An event's time as the events write it: ISO 8601 UTC, milliseconds, ``Z``."""
    from datetime import UTC

    return str(at.astimezone(UTC).isoformat(timespec="milliseconds")).replace("+00:00", "Z")


def event_json(event: Any) -> str:
    """One event as JSON, as it was published (``at`` as the events write it)."""
    data = event.model_dump(mode="json", by_alias=True)
    data["at"] = _utc(event.at)
    return json.dumps(data, ensure_ascii=False)


def cmd_events(args: argparse.Namespace) -> int:
    statuses = _statuses(args.status)
    if not args.follow and args.wait <= 0:
        raise CliError("--wait must be more than 0 seconds")
    if args.account:
        _redis(lambda redis: _require_account(redis, args.account))
    cfg = settings()
    bindings = event_bindings(statuses, args.event_type)
    seen = run_once(_tail(cfg, bindings, args))
    if seen == 0 and not args.follow:
        return _nothing(f"no status events in {args.wait:g} s")
    return 0


async def _tail(cfg: Any, bindings: list[str], args: argparse.Namespace) -> int:
    """Print events until --count, the --wait deadline (without --follow) or a signal;
    returns how many were printed."""
    from sender.client import Outbox

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, stop.set)  # not in a thread (tests run it in one)
    printed = 0

    def ready() -> None:
        how = "until interrupted" if args.follow else f"for {args.wait:g} s"
        print(f"listening to outbox.status ({', '.join(bindings)}) {how}", file=sys.stderr,
              flush=True)

    async def consume(outbox: Outbox) -> None:
        nonlocal printed
        async for event in outbox.events(*bindings, ready=ready):
            if args.account and event.account_id != args.account:
                continue
            print(event_json(event) if args.json else event_line(event), flush=True)
            printed += 1
            if args.count and printed >= args.count:
                return

    async with Outbox.from_settings(cfg) as outbox:
        reader = asyncio.ensure_future(consume(outbox))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED,
                               timeout=None if args.follow else args.wait)
        finally:
            for task in (reader, stopper):
                task.cancel()
            await asyncio.gather(reader, stopper, return_exceptions=True)
        failure = reader.exception() if reader.done() and not reader.cancelled() else None
        if failure is not None:
            raise failure
    return printed
