"""What every subcommand shares: settings, the event loop, input and output.

The bottom of the ``outbox`` package: :mod:`outbox.cli` (the entry point) imports
:mod:`outbox.commands`, which imports :mod:`outbox.support`; all of them import this module,
and it imports none of them (tests/unit/test_layout.py checks the package has no cycle).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import Settings, load_settings
from suppression.ids import InvalidId, parse_account_id, parse_job_id

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

#: Fields that hold a time. The stores keep Unix seconds; every command prints them as ISO 8601
#: UTC (``2026-01-02T03:04:05Z``), in readable and ``--json`` output alike.
TIME_FIELDS = frozenset({"at", "since", "probation_until", "expires_at", "granted_at",
                         "revoked_at", "created_at", "verified_at"})
#: Fields whose contents are someone else's (a job's metadata, a provider's payload): never
#: rewritten, whatever keys they hold.
OPAQUE_FIELDS = frozenset({"metadata", "raw", "headers"})
_EPOCH = re.compile(r"^\d{1,12}(\.\d+)?$")


class CliError(Exception):
    """A user-facing error: printed on one line without a traceback, exit status 2."""


class NotFound(Exception):
    """What the command names does not exist (an unknown account: the admin API's 404):
    printed on one line, exit status 1."""


def account_arg(text: str) -> str:
    """``type=`` of every argument that names an account (:mod:`suppression.ids`): a malformed
    id is argparse's usage error (exit 2) naming the argument and the rule."""
    try:
        return parse_account_id(text)
    except InvalidId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def job_arg(text: str) -> str:
    """``type=`` of every argument that names a job (:mod:`suppression.ids`)."""
    try:
        return parse_job_id(text)
    except InvalidId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def settings(**overrides: Any) -> Settings:
    """Build the settings once, at start; a bad value raises SettingsError (one line, exit 2).
    ``None`` overrides (options not given) are left out."""
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def run_async(factory: Callable[[asyncio.Event], Any]) -> int:
    """Run a long-lived coroutine on uvloop until SIGTERM/SIGINT sets its stop event."""
    import uvloop

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        result = await factory(stop)
        return int(result or 0)

    return uvloop.run(_main())


def run_once(coro: Any) -> Any:
    """Run a short command's coroutine on uvloop."""
    import uvloop

    return uvloop.run(coro)


def with_redis(cfg: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(redis)`` on a client of the settings' Redis (or Cluster), checked first;
    Redis unreachable, at start or midway → one line naming OUTBOX_REDIS_URL (exit 1)."""
    from sender.connect import REDIS_DOWN, ping_redis, redis_client, redis_error

    url = cfg.redis_url.get_secret_value()

    async def main() -> Any:
        redis = redis_client(url, cluster=cfg.redis_cluster, socket_timeout=10,
                             socket_connect_timeout=5)
        try:
            await ping_redis(redis, url)
            return await work(redis)
        except REDIS_DOWN as exc:
            raise redis_error(url, exc) from None
        finally:
            await redis.aclose()

    return run_once(main())


def iso_time(value: Any) -> Any:
    """Unix seconds (a number, or digits as Redis returns them) as ISO 8601 UTC; anything else
    (an ISO string already, ``None``, ``""``) unchanged."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value
    if isinstance(value, str):
        if not _EPOCH.match(value):
            return value
        value = float(value)
    moment = datetime.fromtimestamp(value, UTC)
    spec = "seconds" if float(value).is_integer() else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def iso_times(records: Any) -> Any:
    """``records`` with every :data:`TIME_FIELDS` value made ISO 8601 UTC, in nested objects
    and lists too (not inside :data:`OPAQUE_FIELDS`)."""
    if isinstance(records, dict):
        return {k: v if k in OPAQUE_FIELDS else iso_time(v) if k in TIME_FIELDS
                else iso_times(v) for k, v in records.items()}
    if isinstance(records, list | tuple):
        return [iso_times(r) for r in records]
    return records


def print_records(records: Any, as_json: bool, text: Callable[[Any], str] = str) -> None:
    """Print records as JSON (``--json``) or as readable text; times as ISO 8601 UTC."""
    records = iso_times(records)
    if as_json:
        print(json.dumps(records, ensure_ascii=False, default=str))
    else:
        print(text(records))


def table(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Records as a table: a header line of ``columns``, one aligned line per record (``-`` for
    an empty value); ``(none)`` when there is no record."""
    if not records:
        return "(none)"
    rows = [list(columns)] + [["-" if r.get(c) in (None, "") else str(r.get(c)).replace("\n", " ")
                               for c in columns] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def read_lines(source: str) -> tuple[str, Any]:
    """Open ``source`` (a path or ``-`` for stdin) for reading lines; CliError if it cannot."""
    if source == "-":
        return "<stdin>", sys.stdin.buffer
    path = Path(source)
    try:
        return str(path), path.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror}") from None
