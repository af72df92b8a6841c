"""What every subcommand shares: settings, the event loop, input and output.

The bottom of the ``outbox`` package: :mod:`outbox.cli` (the entry point) imports
:mod:`outbox.commands`, which imports :mod:`outbox.support`; all of them import this module,
and it imports none of them (tests/unit/test_layout.py checks the package has no cycle).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config import Settings, load_settings

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A user-facing error: printed on one line without a traceback, exit status 2."""


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


def print_records(records: Any, as_json: bool, text: Callable[[Any], str] = str) -> None:
    """Print records as JSON (``--json``) or as readable text."""
    if as_json:
        print(json.dumps(records, ensure_ascii=False, default=str))
    else:
        print(text(records))


def read_lines(source: str) -> tuple[str, Any]:
    """Open ``source`` (a path or ``-`` for stdin) for reading lines; CliError if it cannot."""
    if source == "-":
        return "<stdin>", sys.stdin.buffer
    path = Path(source)
    try:
        return str(path), path.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror}") from None
