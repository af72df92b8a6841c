"""The ``outbox`` command: argument parsing and start-up of the parts.

Every subcommand has ``--help`` and exits non-zero on failure: 2 for bad input or settings
(with a message naming what is wrong), 1 for a failure while running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from config import Settings, SettingsError, load_settings
from sender.topology import TopologyMismatch

log = logging.getLogger("outbox.cli")

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``outbox`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, CliError, TopologyMismatch) as exc:
        print(f"outbox: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outbox", description="Outbound email and SMS "
                                     "delivery worker: consent, suppression, reputation.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from outbox import commands

    commands.register(sub)
    return parser


def settings(**overrides: Any) -> Settings:
    """Build the settings once, at start; a bad value raises SettingsError (exit 2)."""
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


class _JsonFormatter(logging.Formatter):
    """Structured log lines with stable field names."""

    _SKIP = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._SKIP})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


#: (logger, text in the message) of library records that are no news: on a broker restart
#: aio-pika tries to reopen every robust channel on the dead connection and logs each failure
#: as an error; the robust connection reopens them itself once it is back (and logs the
#: outage and every reconnect attempt already).
_EXPECTED_NOISE = (("aio_pika.tools", "RobustChannel._on_close"),)


class _DropExpectedNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and text in record.getMessage()
                       for name, text in _EXPECTED_NOISE)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    handler.addFilter(_DropExpectedNoise())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("aiormq", "aio_pika", "mail.log"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def read_lines(source: str) -> tuple[str, Any]:
    """Open ``source`` (a path or ``-`` for stdin) for reading lines; CliError if it cannot."""
    if source == "-":
        return "<stdin>", sys.stdin.buffer
    path = Path(source)
    try:
        return str(path), path.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror}") from None
